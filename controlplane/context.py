"""The plain data a request carries through the layers: which tenant, who acts, what goes into audit rows.

- ``TenantContext``: the tenant a request was resolved to (a projection of its registry row, kept by
  the registry cache).
- ``AuditContext``: who did an action and from where, for ``audit_log`` and ``platform_audit`` rows.
- ``TenantRequest``: an authenticated, authorised request inside one tenant: its connection (the
  request's transaction), the tenant, the principal and its audit context.

No HTTP types: the HTTP layer (``controlplane.http``) builds these from the request; services, the
command line and tests build them directly.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable

import msgspec

from controlplane.auth.models import Principal
from controlplane.db import AsyncConn
from controlplane.registry.models import Tenant, TenantStatus, Tier


class TenantContext(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant a request was resolved to (from the in-process registry cache)."""

    id: uuid.UUID
    slug: str
    status: TenantStatus
    tier: Tier
    server_id: uuid.UUID
    database_name: str
    role_name: str

    @classmethod
    def of(cls, tenant: Tenant) -> TenantContext:
        # Every field here must come from a column that the 0002 update trigger watches.
        return cls(
            id=tenant.id,
            slug=tenant.slug,
            status=tenant.status,
            tier=tenant.subscription_tier,
            server_id=tenant.server_id,
            database_name=tenant.database_name,
            role_name=tenant.role_name,
        )


def client_address(host: str | None) -> str | None:
    """``host`` if it is an IP address (what an ``inet`` column can hold), else None."""
    if not host:
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class AuditContext(msgspec.Struct, frozen=True, kw_only=True):
    """The request an audited action belongs to."""

    #: Stable actor id (``user:12``, ``api_key:3``, ``admin:<uuid>``, ``automation``, ``cli:<os user>``).
    actor: str
    #: Human label (email, key name) kept in the row's details.
    actor_label: str = ""
    #: For impersonation: ``admin:<uuid>`` of the super_admin behind the actor.
    impersonator: str | None = None
    source_address: str | None = None
    request_id: str | None = None


class TenantRequest:
    """An authenticated, authorised request inside one tenant: its connection (the request's
    transaction), the tenant, who is acting and what goes into audit rows.

    ``audit`` is an ``AuditContext``, or a function that makes one: the HTTP layer passes a function of
    the request (request id, client address), called on first use only, because reads (the hot path)
    never write audit rows.
    """

    __slots__ = ("_audit", "conn", "principal", "tenant")

    def __init__(
        self,
        *,
        conn: AsyncConn,
        tenant: TenantContext,
        principal: Principal,
        audit: AuditContext | Callable[[], AuditContext],
    ) -> None:
        self.conn = conn
        self.tenant = tenant
        self.principal = principal
        self._audit = audit

    @property
    def audit(self) -> AuditContext:
        audit = self._audit
        if not isinstance(audit, AuditContext):
            audit = self._audit = audit()
        return audit
