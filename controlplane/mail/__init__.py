"""Outgoing mail: an outbox table written with what causes a mail, delivered over SMTP by a job."""
