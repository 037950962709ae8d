"""Domain errors. Each carries a stable error code and the HTTP status it maps to.

Services raise these; one HTTP handler (``controlplane.http.errors``) and the CLI turn them into
``{"error": code, "detail": ...}``. Nothing expected should ever surface as anything else.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CardVaultError(Exception):
    """Base of every expected error."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}


class ConfigError(CardVaultError):
    """The configuration (environment) is invalid."""

    status = 500
    code = "config_error"


class ValidationFailed(CardVaultError):
    status = 400
    code = "validation_failed"


class ConfirmationRequired(ValidationFailed):
    code = "confirmation_required"


class InvalidSlug(ValidationFailed):
    code = "invalid_slug"


class InvalidTier(ValidationFailed):
    code = "invalid_tier"


class Unauthorized(CardVaultError):
    status = 401
    code = "unauthorized"


class InvalidToken(Unauthorized):
    """Expired, malformed, wrongly signed or revoked credentials."""

    code = "invalid_token"


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"


class Forbidden(CardVaultError):
    """Authenticated, but not allowed: wrong tenant, missing permission, feature not in the tier."""

    status = 403
    code = "forbidden"


class WrongTenant(Forbidden):
    code = "wrong_tenant"


class PermissionDenied(Forbidden):
    code = "permission_denied"


class FeatureNotInTier(Forbidden):
    code = "feature_not_in_tier"


class TooManyRequests(CardVaultError):
    """A rate limit or the login throttle; ``headers`` go on the 429 response (Retry-After, RateLimit-*)."""

    status = 429
    code = "rate_limited"

    def __init__(self, detail: str, *, headers: dict[str, str], **extra: object) -> None:
        super().__init__(detail, **extra)
        self.headers = headers


class NotFound(CardVaultError):
    status = 404
    code = "not_found"


class TenantNotFound(NotFound):
    code = "tenant_not_found"


class ServerNotFound(NotFound):
    code = "server_not_found"


class Conflict(CardVaultError):
    status = 409
    code = "conflict"


class SlugTaken(Conflict):
    code = "slug_taken"


class ServerExists(Conflict):
    code = "server_exists"


class ServerMismatch(Conflict):
    """A server's new DSN reaches a different PostgreSQL server than the one registered."""

    code = "server_mismatch"


class InvalidState(Conflict):
    """The operation is not valid for the tenant's current status."""

    code = "invalid_state"


class OperationInProgress(Conflict):
    """Another operation holds the tenant; retry later."""

    code = "operation_in_progress"


class NoServerAvailable(CardVaultError):
    status = 503
    code = "no_server_available"


class ServerUnavailable(CardVaultError):
    """A PostgreSQL server the operation needs cannot be reached."""

    status = 503
    code = "server_unavailable"


class OperationFailed(CardVaultError):
    """A step failed; the operation was undone and nothing is left behind."""

    status = 500
    code = "operation_failed"


class TenantUnavailable(CardVaultError):
    """The tenant's database server cannot be reached right now; retry after ``retry_after`` seconds."""

    status = 503
    code = "tenant_unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5, **extra: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.retry_after = retry_after


class ProviderUnavailable(CardVaultError):
    """The billing provider (Stripe) cannot be reached or failed; nothing was changed on our side."""

    status = 503
    code = "provider_unavailable"


class InvalidSignature(CardVaultError):
    """A webhook whose signature is missing, wrong or too old (or whose body is no event)."""

    status = 400
    code = "invalid_signature"
