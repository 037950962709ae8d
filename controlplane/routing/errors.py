"""Errors of tenant resolution: which tenant a request is for, and whether it may be served now.

Each is a ``CardVaultError`` (status + stable code) answered by the one HTTP handler. ``TenantNotFound``
and ``TenantUnavailable`` are the platform-wide ones from ``controlplane.errors``, re-exported here so
that routing code imports all of its errors from one place.
"""

from __future__ import annotations

from controlplane.errors import CardVaultError, TenantNotFound, TenantUnavailable

__all__ = [
    "TenantConflict",
    "TenantDeleted",
    "TenantNotFound",
    "TenantRequired",
    "TenantSuspended",
    "TenantUnavailable",
]


class TenantConflict(CardVaultError):
    """The path, subdomain and ``X-Tenant`` header name different tenants."""

    status = 400
    code = "tenant_conflict"


class TenantRequired(CardVaultError):
    """A tenant API request that names no tenant at all (no path slug, subdomain or header)."""

    status = 400
    code = "tenant_required"


class TenantSuspended(CardVaultError):
    """The tenant exists but is suspended: its data is kept, its API is locked."""

    status = 423
    code = "tenant_suspended"


class TenantDeleted(CardVaultError):
    """The tenant is soft-deleted and waits for its purge (it can still be resumed by an admin)."""

    status = 410
    code = "tenant_deleted"
