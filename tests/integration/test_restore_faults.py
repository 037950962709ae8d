"""Restores that fail or die part-way: the live database is never touched before the switch, and the
restore is finished (its switch happened) or undone (it did not), in process or by the restore upkeep.

``raise`` failpoints run in process (the restore settles itself at once). ``kill`` failpoints run the real
``cardvault backups restore`` and SIGKILL it at a step; the reconciler leaves the interrupted restore to
the restore upkeep, which settles it; a second upkeep and the reconciler then find nothing.
"""

from __future__ import annotations

import dataclasses
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from controlplane.backups.restore_models import SwitchPlan
from controlplane.errors import OperationFailed
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import Tenant
from controlplane.settings import Settings
from tests.conftest import SECRET_KEY
from tests.integration.backup_support import add_cards, table_counts
from tests.integration.cli_support import cli_env, run_cli
from tests.integration.restore_support import Restores, restores_of, tenant_databases
from tests.integration.tenant_support import (
    Snapshot,
    assert_tenant_works,
    execute,
    operations,
    reconcile,
    snapshot,
    wait_until_unlocked,
)

#: Failpoints before the switch: the restore is undone. After it: finished.
UNDONE = ("after:create_database", "after:pg_restore", "after:upgrade", "after:quiesce")
FINISHED = ("after:switch",)


@asynccontextmanager
async def failing(settings: Settings, spec: str) -> AsyncIterator[Restores]:
    """Another control plane on the same control database, with failpoints set."""
    failing_settings = dataclasses.replace(settings, failpoints=spec)
    async with (
        Platform.open(failing_settings, migrate=False) as opened,
        restores_of(opened, TenantService(opened)) as r,
    ):
        yield r


def registry_and_server(snap: Snapshot) -> tuple[object, ...]:
    """A snapshot without the ledger (a failed restore adds its operation to it)."""
    return snap.registry["tenants"], snap.registry["tenant_quotas"], snap.databases, snap.roles


async def backed_up_tenant(platform: Platform, service: TenantService, admin_dsn: str) -> tuple[Tenant, uuid.UUID]:
    """A tenant with two cards in its backup and a third written after it."""
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    await add_cards(admin_dsn, tenant, ["one", "two"])
    async with restores_of(platform, service) as r:
        backup = await r.backup("acme")
    await execute(f"{admin_dsn} dbname={tenant.database_name}", "INSERT INTO cards (cardnumber) VALUES ('late')")
    return tenant, backup.id


async def assert_restored(platform: Platform, admin_dsn: str, service: TenantService, tenant: Tenant) -> None:
    counts = await table_counts(admin_dsn, tenant)
    assert counts["public.cards"] == 2, counts
    await assert_tenant_works(platform, admin_dsn, await service.get("acme"))


@pytest.mark.parametrize("point", UNDONE + FINISHED)
async def test_a_failed_restore_is_undone_before_the_switch_and_finished_after_it(
    point: str, settings: Settings, platform: Platform, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant, backup_id = await backed_up_tenant(platform, service, pg_admin_dsn)
    live = await table_counts(pg_admin_dsn, tenant)
    before = await snapshot(control_dsn, pg_admin_dsn)

    async with failing(settings, f"{point}=raise") as broken:
        if point in UNDONE:
            with pytest.raises(OperationFailed) as failed:
                await broken.restores.restore("acme", backup_id=backup_id, pre_backup=False)
            assert failed.value.extra["step"] == point[6:] and "nothing was changed" in failed.value.detail
        else:
            await broken.restores.restore("acme", backup_id=backup_id, pre_backup=False)

    restore = (await operations(control_dsn, tenant.id))[-1]
    if point in UNDONE:
        assert (restore["kind"], restore["state"], restore["step"]) == ("restore", "rolled_back", point[6:])
        assert f"failpoint {point}" in restore["error"]
        # Registry and server exactly as before: no restored database left, the live one open and untouched.
        assert registry_and_server(await snapshot(control_dsn, pg_admin_dsn)) == registry_and_server(before)
        assert await tenant_databases(pg_admin_dsn, tenant.id) == {tenant.database_name: True}
        assert await table_counts(pg_admin_dsn, tenant) == live
        await assert_tenant_works(platform, pg_admin_dsn, await service.get("acme"))
    else:
        assert (restore["kind"], restore["state"]) == ("restore", "succeeded")
        await assert_restored(platform, pg_admin_dsn, service, tenant)
        plan = SwitchPlan.from_params(restore["params"])
        assert await tenant_databases(pg_admin_dsn, tenant.id) == {tenant.database_name: True, plan.retired: False}
    report = await reconcile(platform, fix=False)
    assert report.clean, report.findings


@pytest.mark.parametrize("point", ["after:pg_restore", "after:quiesce", "after:switch"])
async def test_a_restore_killed_part_way_is_settled_by_the_upkeep(
    point: str, settings: Settings, platform: Platform, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant, backup_id = await backed_up_tenant(platform, service, pg_admin_dsn)
    live = await table_counts(pg_admin_dsn, tenant)
    before = await snapshot(control_dsn, pg_admin_dsn)
    env = cli_env(
        control_dsn,
        settings.provisioning.template_database,
        Path(settings.data_dir),
        CARDVAULT_FAILPOINTS=f"{point}=kill",
        CARDVAULT_SECRET_KEY=SECRET_KEY,
    )
    result = run_cli(env, "backups", "restore", "acme", "--backup", str(backup_id), "--no-pre-backup", "--yes")
    assert result.code == -signal.SIGKILL, result
    await wait_until_unlocked(control_dsn)

    # The reconciler reports the interrupted restore and leaves it to the upkeep.
    report = await reconcile(platform, fix=True)
    kinds = [(f.kind, f.action) for f in report.findings]
    assert ("interrupted_operation", "left to the restore upkeep (cardvault backups upkeep)") in kinds

    async with restores_of(platform, service) as r:
        outcome = await r.upkeep.run()
        restore = (await operations(control_dsn, tenant.id))[-1]
        if point == "after:switch":
            assert "finished" in outcome and restore["state"] == "succeeded"
            await assert_restored(platform, pg_admin_dsn, service, tenant)
        else:
            assert "rolled back" in outcome and restore["state"] == "rolled_back"
            assert registry_and_server(await snapshot(control_dsn, pg_admin_dsn)) == registry_and_server(before)
            assert await table_counts(pg_admin_dsn, tenant) == live
        assert "restore #" not in await r.upkeep.run()  # nothing left to settle
    report = await reconcile(platform, fix=False)
    assert report.clean, report.findings
