"""Errors of enterprise SSO (codes in the README's list)."""

from __future__ import annotations

from controlplane.errors import CardVaultError, Conflict, FeatureNotInTier, InvalidCredentials, NotFound


class SsoNotInTier(FeatureNotInTier):
    """SSO is part of the enterprise tier only (403)."""

    code = "sso_not_in_tier"


class SsoNotConfigured(NotFound):
    code = "sso_not_configured"


class SsoStateInvalid(InvalidCredentials):
    """Unknown, spent, expired or foreign ``state``, or a browser that did not start this sign-in (401)."""

    code = "sso_state_invalid"


class SsoRejected(InvalidCredentials):
    """The provider's answer is not acceptable: bad ID token, unverified or foreign email, disabled user (401)."""

    code = "sso_rejected"


class SsoProviderError(CardVaultError):
    """The provider could not be reached or answered nonsense (502)."""

    status = 502
    code = "sso_provider_error"


class PasswordLoginDisabled(Conflict):
    """The tenant signs in through its identity provider only (409)."""

    code = "password_login_disabled"
