"""What the routing layer hands to tenant API handlers."""

from __future__ import annotations

import uuid

import msgspec
from litestar.types import Scope

from controlplane.audit.models import AuditContext
from controlplane.auth.models import Principal
from controlplane.db import AsyncConn
from controlplane.http.context import request_id, source_address
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


class TenantRequest:
    """An authenticated, authorised request inside one tenant: its connection (the request's
    transaction), the tenant, who is acting and what goes into audit rows.

    The audit context is built on first use from the ASGI scope (request id, client address): reads,
    the hot path, never need it.
    """

    __slots__ = ("_audit", "_scope", "conn", "principal", "tenant")

    def __init__(
        self,
        *,
        conn: AsyncConn,
        tenant: TenantContext,
        principal: Principal,
        audit: AuditContext | None = None,
        scope: Scope | None = None,
    ) -> None:
        assert audit is not None or scope is not None, "an audit context or the request's scope"
        self.conn = conn
        self.tenant = tenant
        self.principal = principal
        self._audit = audit
        self._scope = scope

    @property
    def audit(self) -> AuditContext:
        if self._audit is None:
            assert self._scope is not None
            principal = self.principal
            self._audit = AuditContext(
                actor=principal.subject,
                actor_label=principal.label,
                impersonator=f"admin:{principal.impersonator}" if principal.impersonator else None,
                source_address=source_address(self._scope),
                request_id=request_id(self._scope),
            )
        return self._audit
