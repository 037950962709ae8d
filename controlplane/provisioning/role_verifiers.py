"""Re-storing tenant roles' SCRAM verifiers at the current iteration count (``cardvault tenants rekey-roles``).

Tenants provisioned before ``TENANT_ROLE_SCRAM_ITERATIONS`` have verifiers with PostgreSQL's 4096
rounds, which makes every new connection to them cost the control plane ~2 ms of CPU. Their
passwords do not need to change: the verifier is recomputed from the stored password and set with
``ALTER ROLE ... PASSWORD``. Nothing else changes (LOGIN, grants, open sessions, pools), so this is
safe to run at any time and as often as wanted; each tenant is done under its operation lock, so a
concurrent suspend, move or purge is not raced (that tenant is reported as skipped).
"""

from __future__ import annotations

import msgspec

from controlplane.crypto import tenant_role_verifier
from controlplane.errors import CardVaultError
from controlplane.platform import Platform
from controlplane.provisioning import catalog
from controlplane.provisioning.service import TenantService
from controlplane.registry import repository as registry
from controlplane.registry.models import Tenant, TenantStatus

#: Tenants whose role may be missing or about to go: nothing to re-key.
_SKIPPED_STATUSES = frozenset({TenantStatus.PROVISIONING, TenantStatus.DELETING})


class Rekeyed(msgspec.Struct, frozen=True):
    """What happened to one tenant's role."""

    slug: str
    #: ``rekeyed``, ``no role``, ``skipped: <why>``.
    outcome: str


async def rekey_roles(platform: Platform, slugs: list[str] | None = None) -> list[Rekeyed]:
    """Re-store the verifier of every tenant's role (or of the tenants ``slugs`` names)."""
    service = TenantService(platform)
    if slugs:
        tenants = [await service.get(slug) for slug in slugs]
    else:
        tenants = await service.list()
    return [await _rekey(platform, service, tenant) for tenant in tenants]


async def _rekey(platform: Platform, service: TenantService, tenant: Tenant) -> Rekeyed:
    if tenant.status in _SKIPPED_STATUSES:
        return Rekeyed(tenant.slug, f"skipped: {tenant.status.value}")
    try:
        async with service.locked(tenant.id) as conn:
            current = await registry.get_by_id(conn, tenant.id)
            encrypted = await registry.role_password_encrypted(conn, tenant.id)
            if current is None or encrypted is None or current.status in _SKIPPED_STATUSES:
                return Rekeyed(tenant.slug, "skipped: changed meanwhile")
            verifier = tenant_role_verifier(platform.box.decrypt(encrypted))
            async with platform.fleet.admin(conn, current.server_id) as admin:
                done = await catalog.set_role_verifier(admin, current.role_name, verifier)
    except CardVaultError as exc:  # operation in progress, server unavailable
        return Rekeyed(tenant.slug, f"skipped: {exc.detail}")
    return Rekeyed(tenant.slug, "rekeyed" if done else "no role")
