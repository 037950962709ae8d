"""Single-tenant mode (``CARDVAULT_MULTI_TENANT=0``): the one tenant a self-hosted installation serves.

At start-up the tenant named ``CARDVAULT_DEFAULT_TENANT`` is created if it does not exist, through
``TenantService.create`` like any tenant (on the server placement chooses: the default server of a
fresh installation), on the enterprise tier with no limits on storage, cards, users or API calls (a
self-hosted installation has no plan to enforce). It is created **without** an administrator, so no
password ever passes through the environment or the log: the log says how to make one
(``cardvault users create --tenant <slug> --email ... --role tenant_admin``), and an installation
moving from the legacy single-tenant CardVault brings its own (``cardvault import-sqlite <slug> ...``:
its admins become tenant_admins and sign in with their old passwords).

Replicas starting together race for the creation; the loser finds the tenant there and goes on.
"""

from __future__ import annotations

import logging

from controlplane.errors import SlugTaken, TenantNotFound
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import QuotaType, Tenant, TenantStatus, Tier
from controlplane.usage.quotas import set_limits

log = logging.getLogger(__name__)

#: The quotas the default tenant is created without.
UNLIMITED = {quota: None for quota in QuotaType}


async def ensure_default_tenant(tenants: TenantService, slug: str) -> Tenant:
    """The default tenant, created (and logged with how to give it an administrator) if missing."""
    try:
        tenant = await tenants.get(slug)
    except TenantNotFound:
        try:
            tenant = await tenants.create(name="CardVault", slug=slug, tier=Tier.ENTERPRISE.value)
        except SlugTaken:  # another replica created it meanwhile
            return await tenants.get(slug)
        async with tenants.locked(tenant.id) as conn, conn.transaction():
            await set_limits(conn, tenant.id, UNLIMITED)
        log.warning(
            "single-tenant mode: created the tenant %r, served at /api. It has no administrator yet: run "
            "`cardvault users create --tenant %s --email you@example.com --role tenant_admin` (or import a "
            "legacy installation with `cardvault import-sqlite %s FILE --uploads DIR`)",
            slug,
            slug,
            slug,
        )
        return tenant
    if tenant.status is not TenantStatus.ACTIVE:
        log.warning("single-tenant mode: the tenant %r is %s; /api answers accordingly", slug, tenant.status.value)
    return tenant
