"""Periodic jobs: the leader-locked APScheduler runner (``service``) and the job table (``jobs``)."""
