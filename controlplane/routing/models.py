"""What the routing layer hands to tenant API handlers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import msgspec

from controlplane.audit.models import AuditContext
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


@dataclass(frozen=True)
class TenantRequest:
    """An authenticated, authorised request inside one tenant: its connection (the request's
    transaction), the tenant, who is acting and what goes into audit rows."""

    conn: AsyncConn
    tenant: TenantContext
    principal: Principal
    audit: AuditContext
