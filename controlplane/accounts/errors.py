"""Errors of the accounts API (codes in the README's list)."""

from __future__ import annotations

from controlplane.errors import Conflict, PermissionDenied


class EmailTaken(Conflict):
    """Another user of the tenant has this email (compared case-insensitively)."""

    code = "email_taken"


class LastAdmin(Conflict):
    """The change would leave the tenant without a tenant_admin who can act."""

    code = "last_admin"


class InvitationAccepted(Conflict):
    """The user has no pending invitation to re-issue (it was accepted, or they were made with a password)."""

    code = "invitation_accepted"


class WrongPassword(PermissionDenied):
    """The current password given to change it is wrong."""

    code = "wrong_password"
