"""Audit trails: every write inside a tenant (its own ``audit_log``) and every platform action (``platform_audit``)."""
