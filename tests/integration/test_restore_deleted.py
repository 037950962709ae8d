"""Deleted tenants come back from their retained backups: a soft-deleted one is active again, a purged one is
registered again with its old id and slug around the restored database. A failed re-creation leaves it
purged, and a slug given to another tenant since is never restored into."""

from __future__ import annotations

import dataclasses

import pytest

from controlplane.backups.restore_models import BackupMismatch
from controlplane.errors import OperationFailed
from controlplane.platform import Platform
from controlplane.provisioning.models import OperationState
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import TenantStatus
from controlplane.settings import Settings
from tests.integration.backup_support import add_cards, table_counts
from tests.integration.restore_support import restores_of, tenant_databases
from tests.integration.tenant_support import (
    assert_tenant_gone,
    assert_tenant_works,
    reconcile,
    registry_row,
    snapshot,
)


async def test_a_soft_deleted_tenant_is_restored_and_active_again(
    platform: Platform, service: TenantService, pg_admin_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    await add_cards(pg_admin_dsn, tenant, ["kept"])
    async with restores_of(platform, service) as r:
        await r.backup("acme")
        deleted = await service.delete("acme")
        assert deleted is not None and deleted.status is TenantStatus.DELETING

        op = await r.restores.restore("acme", latest=True)

    assert op.state is OperationState.SUCCEEDED
    restored = await service.get("acme")
    assert (restored.id, restored.status, restored.delete_after) == (tenant.id, TenantStatus.ACTIVE, None)
    assert (await table_counts(pg_admin_dsn, restored))["public.cards"] == 1
    await assert_tenant_works(platform, pg_admin_dsn, restored)
    assert len(await tenant_databases(pg_admin_dsn, tenant.id)) == 2  # its own, and the retired one
    report = await reconcile(platform, fix=False)
    assert report.clean, report.findings


async def test_a_purged_tenant_is_registered_again_from_its_backup(
    platform: Platform, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="professional")
    await add_cards(pg_admin_dsn, tenant, ["one", "two"])
    async with restores_of(platform, service) as r:
        backup = await r.backup("acme")
        await service.delete("acme", now=True)
        await assert_tenant_gone(control_dsn, pg_admin_dsn, tenant.id)

        op = await r.restores.restore("acme", latest=True, name="Acme again")

    assert op.state is OperationState.SUCCEEDED and op.tenant_id == tenant.id
    restored = await service.get("acme")
    assert (restored.id, restored.name, restored.subscription_tier.value) == (tenant.id, "Acme again", "professional")
    assert (restored.database_name, restored.role_name) == (tenant.database_name, tenant.role_name)
    assert (await table_counts(pg_admin_dsn, restored))["public.cards"] == 2
    await assert_tenant_works(platform, pg_admin_dsn, restored)  # status, head revision, tier quotas, own role
    assert await tenant_databases(pg_admin_dsn, tenant.id) == {tenant.database_name: True}
    report = await reconcile(platform, fix=False)
    assert report.clean, report.findings

    # Purged again, and its slug taken by a new tenant: the old backup is never restored into the newcomer.
    await service.delete("acme", now=True)
    newcomer = await service.create(name="Other", slug="acme", tier="starter")
    async with restores_of(platform, service) as r:
        with pytest.raises(BackupMismatch):
            await r.restores.restore("acme", backup_id=backup.id)
    assert (await table_counts(pg_admin_dsn, newcomer))["public.cards"] == 0


async def test_a_failed_re_creation_leaves_the_tenant_purged(
    settings: Settings, platform: Platform, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    await add_cards(pg_admin_dsn, tenant, ["one"])
    async with restores_of(platform, service) as r:
        await r.backup("acme")
    await service.delete("acme", now=True)
    before = await snapshot(control_dsn, pg_admin_dsn)

    failing = dataclasses.replace(settings, failpoints="after:create_role=raise")
    async with Platform.open(failing, migrate=False) as p, restores_of(p, TenantService(p)) as broken:
        with pytest.raises(OperationFailed):
            await broken.restores.restore("acme", latest=True)

    after = await snapshot(control_dsn, pg_admin_dsn)
    assert (after.registry["tenants"], after.databases, after.roles) == (
        before.registry["tenants"],
        before.databases,
        before.roles,
    )
    assert await registry_row(control_dsn, tenant.id) is None
    assert await tenant_databases(pg_admin_dsn, tenant.id) == {}
    restore = after.registry["tenant_operations"][-1]
    assert (restore["kind"], restore["state"], restore["step"]) == ("restore", "rolled_back", "create_role")
    report = await reconcile(platform, fix=False)
    assert report.clean, report.findings
