"""What the routing layer hands to tenant API handlers."""

from __future__ import annotations

import uuid

import msgspec

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
