"""Changing a tenant in place: slug, display name, tier (the database and role keep their names).

``TenantUpdates`` is a base of ``TenantService``, above ``TenantLocks``.
"""

from __future__ import annotations

from controlplane.errors import InvalidState
from controlplane.provisioning import repository as ledger
from controlplane.provisioning.inputs import validate_name
from controlplane.provisioning.locking import TenantLocks
from controlplane.provisioning.models import OperationKind, OperationState
from controlplane.registry import repository as registry
from controlplane.registry.models import TIER_QUOTAS, QuotaType, Tenant, TenantStatus, parse_tier, validate_slug


class TenantUpdates(TenantLocks):
    """Renames and tier changes, recorded in the ledger (the base of ``TenantService``)."""

    async def update(
        self, slug: str, *, name: str | None = None, new_slug: str | None = None, tier: str | None = None
    ) -> Tenant:
        """Rename (slug and/or display name) or change tier; the database keeps its name."""
        if name is not None:
            name = validate_name(name)
        if new_slug is not None:
            validate_slug(new_slug)
        tier_ = parse_tier(tier) if tier is not None else None
        async with self.locked_slug(slug) as (conn, tenant):
            if tenant.status in (TenantStatus.PROVISIONING, TenantStatus.DELETING):
                raise InvalidState(f"cannot change a tenant that is {tenant.status.value}", status=tenant.status.value)
            changes = {"slug": new_slug, "name": name, "tier": tier_.value if tier_ else None}
            async with conn.transaction():
                await registry.update_fields(
                    conn,
                    tenant.id,
                    slug=new_slug,
                    name=name,
                    tier=tier_,
                    max_users=TIER_QUOTAS[tier_][QuotaType.USERS] if tier_ else None,
                )
                if tier_ is not None:
                    await registry.set_quotas(conn, tenant.id, TIER_QUOTAS[tier_])
                op_id = await ledger.start(
                    conn, tenant.id, new_slug or slug, OperationKind.UPDATE, {k: v for k, v in changes.items() if v}
                )
                await ledger.finish(conn, op_id, OperationState.SUCCEEDED, steps=[])
            updated = await registry.get_by_id(conn, tenant.id)
        assert updated is not None
        return updated
