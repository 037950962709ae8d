"""Errors of signup and email verification (codes in the README's list)."""

from __future__ import annotations

from controlplane.errors import CardVaultError, Forbidden, NotFound


class SignupClosed(Forbidden):
    """Self-serve signup is turned off (``CARDVAULT_SIGNUP=0``); super-admins still create tenants."""

    code = "signup_closed"


class VerificationNotFound(NotFound):
    """No signup has this verification token."""

    code = "verification_not_found"


class VerificationExpired(CardVaultError):
    """The verification link is past its expiry (``CARDVAULT_VERIFY_TTL``)."""

    status = 400
    code = "verification_expired"


class VerificationUsed(CardVaultError):
    """The verification link was used already: the address is verified."""

    status = 400
    code = "verification_used"
