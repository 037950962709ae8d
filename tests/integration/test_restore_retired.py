"""The database a restore replaced: kept (closed) for the rollback window, switched back to by a rollback,
dropped by the restore upkeep once the window has passed."""

from __future__ import annotations

import dataclasses

import pytest

from controlplane.backups.restore_models import NothingToRollBack, RestoreMode, SwitchPlan
from controlplane.platform import Platform
from controlplane.provisioning.models import OperationState
from controlplane.provisioning.service import TenantService
from controlplane.settings import Settings
from tests.integration.backup_support import add_cards, table_counts
from tests.integration.restore_support import restores_of, tenant_databases
from tests.integration.tenant_support import assert_tenant_works, execute, fetch, reconcile


async def test_a_rollback_switches_back_to_the_replaced_database_and_back_again(
    platform: Platform, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    await add_cards(pg_admin_dsn, tenant, ["one"])
    async with restores_of(platform, service) as r:
        with pytest.raises(NothingToRollBack):
            await r.restores.retired.rollback("acme")
        await r.backup("acme")
        await execute(f"{pg_admin_dsn} dbname={tenant.database_name}", "INSERT INTO cards (cardnumber) VALUES ('late')")
        restore = await r.restores.restore("acme", latest=True, pre_backup=False)
        assert (await table_counts(pg_admin_dsn, tenant))["public.cards"] == 1

        back = await r.restores.retired.rollback("acme", requested_by="test")
        plan = SwitchPlan.from_params(back.params)
        assert (back.state, plan.mode) == (OperationState.SUCCEEDED, RestoreMode.ROLLBACK)
        assert plan.source == SwitchPlan.from_params(restore.params).retired
        assert (await table_counts(pg_admin_dsn, tenant))["public.cards"] == 2  # the late card is back
        await assert_tenant_works(platform, pg_admin_dsn, await service.get("acme"))
        # The restored database is the retired one now; the one brought back is no longer retired.
        retired = await fetch(
            control_dsn, "SELECT database_name FROM retired_databases WHERE tenant_id = %s", (tenant.id,)
        )
        assert [r["database_name"] for r in retired] == [plan.retired]
        assert await tenant_databases(pg_admin_dsn, tenant.id) == {tenant.database_name: True, plan.retired: False}

        await r.restores.retired.rollback("acme")  # and forth again
        assert (await table_counts(pg_admin_dsn, tenant))["public.cards"] == 1
    report = await reconcile(platform, fix=False)
    assert report.clean, report.findings


async def test_retired_databases_are_dropped_once_the_window_has_passed(
    settings: Settings, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    closing = dataclasses.replace(settings, backups=dataclasses.replace(settings.backups, rollback_window=0))
    async with Platform.open(closing, migrate=False) as platform:
        tenants = TenantService(platform)
        tenant = await tenants.create(name="Acme", slug="acme", tier="starter")
        await add_cards(pg_admin_dsn, tenant, ["one"])
        async with restores_of(platform, tenants) as r:
            await r.backup("acme")
            op = await r.restores.restore("acme", latest=True, pre_backup=False)
            retired = SwitchPlan.from_params(op.params).retired
            assert await tenant_databases(pg_admin_dsn, tenant.id) == {tenant.database_name: True, retired: False}

            outcome = await r.upkeep.run()
            assert "1 retired database(s) dropped" in outcome, outcome
            assert await tenant_databases(pg_admin_dsn, tenant.id) == {tenant.database_name: True}
            assert await fetch(control_dsn, "SELECT * FROM retired_databases") == []
            with pytest.raises(NothingToRollBack):
                await r.restores.retired.rollback("acme")
            await assert_tenant_works(platform, pg_admin_dsn, await tenants.get("acme"))


async def test_retired_databases_inside_the_window_are_kept(
    platform: Platform, service: TenantService, pg_admin_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    async with restores_of(platform, service) as r:
        await r.backup("acme")
        await r.restores.restore("acme", latest=True, pre_backup=False)
        assert "0 retired database(s) dropped" in await r.upkeep.run()
        assert len(await tenant_databases(pg_admin_dsn, tenant.id)) == 2


async def test_the_retired_databases_of_a_purged_tenant_are_dropped_at_once(
    platform: Platform, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    async with restores_of(platform, service) as r:
        await r.backup("acme")
        await r.restores.restore("acme", latest=True, pre_backup=False)
        await service.delete("acme", now=True)
        assert len(await tenant_databases(pg_admin_dsn, tenant.id)) == 1  # the retired one is left

        assert "1 retired database(s) dropped" in await r.upkeep.run()
        assert await tenant_databases(pg_admin_dsn, tenant.id) == {}
        assert await fetch(control_dsn, "SELECT * FROM retired_databases") == []
