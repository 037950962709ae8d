"""Restores: a tenant comes back from its backup in a new database, switched to through the ledger.

The round trip goes through the real API (cards, users, files rows, ids, sequences); a corrupted or
truncated stored object and another tenant's backup are refused before anything is created or changed.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from litestar.testing import AsyncTestClient

from controlplane.backups.models import BackupNotFound, BackupTrigger
from controlplane.backups.restore_models import BackupCorrupted, BackupMismatch, BackupUnusable, SwitchPlan
from controlplane.platform import Platform
from controlplane.provisioning.models import OperationKind, OperationState
from controlplane.provisioning.service import TenantService
from tests.conftest import eventually
from tests.integration.backup_support import add_cards, backup_rows, table_counts
from tests.integration.restore_support import (
    add_card,
    cards_via_api,
    flip_byte,
    object_path,
    restores_of,
    tenant_databases,
    truncate,
    verifications,
)
from tests.integration.tenant_support import (
    assert_tenant_works,
    execute,
    fetch,
    login_tenant_admin,
    provision_with_admin,
    reconcile,
    snapshot,
)

FILE_SHA = "a" * 64


async def test_a_restore_brings_the_backup_back_in_a_new_database(
    client: AsyncTestClient[object], platform: Platform, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    body, auth = await provision_with_admin(client, "acme")
    kept = [await add_card(client, "acme", auth, f"C-{i}", f"note {i}") for i in range(3)]
    database = body["database_name"]
    tenant_dsn = f"{pg_admin_dsn} dbname={database}"
    await execute(
        tenant_dsn,
        "INSERT INTO files (key, content_type, bytes, sha256, card_id) VALUES ('k1', 'image/png', 10, %s, %s)",
        (FILE_SHA, kept[0]["id"]),
    )
    async with restores_of(platform, service) as r:
        backup = await r.backup("acme")
        # Changes after the backup, which the restore takes back.
        assert (await client.delete(f"/t/acme/api/cards/{kept[0]['id']}", headers=auth)).status_code == 204
        await add_card(client, "acme", auth, "LATE")
        await execute(tenant_dsn, "DELETE FROM users")

        op = await r.restores.restore("acme", backup_id=backup.id, requested_by="test")

    assert (op.kind, op.state) == (OperationKind.RESTORE, OperationState.SUCCEEDED)
    steps = [s["step"] for s in op.steps]
    assert steps == ["create_database", "pg_restore", "check", "upgrade", "create_role", "files", "quiesce", "switch"]
    plan = SwitchPlan.from_params(op.params)
    assert plan.backup_id == backup.id and plan.retired is not None

    # The app (another "replica": it heard of the switch by NOTIFY) serves the restored data, ids and all;
    # the users came back (the admin logs in again), and sequences continue after the restored rows.
    async def restored() -> bool:
        response = await client.get("/t/acme/api/cards", headers=auth)
        return response.status_code == 200 and [c["id"] for c in response.json()["items"]] != []

    await eventually(restored, "the API serves the restored database")
    auth = await login_tenant_admin(client, "acme")
    assert await cards_via_api(client, "acme", auth) == kept
    files = await fetch(tenant_dsn, "SELECT key, sha256, card_id FROM files")
    assert files == [{"key": "k1", "sha256": FILE_SHA, "card_id": kept[0]["id"]}]
    after = await add_card(client, "acme", auth, "AFTER")
    assert after["id"] > max(c["id"] for c in kept)

    # The tenant's database keeps its name; the one it replaced is retired, closed, until drop_after.
    databases = await tenant_databases(pg_admin_dsn, op.tenant_id)
    assert databases == {database: True, plan.retired: False}
    (retired,) = await fetch(control_dsn, "SELECT * FROM retired_databases WHERE tenant_id = %s", (op.tenant_id,))
    assert retired["database_name"] == plan.retired
    window = platform.settings.backups.rollback_window
    assert abs((retired["drop_after"] - datetime.now(UTC)).total_seconds() - window) < 60

    # A backup of the live database was taken first.
    pre = [b for b in await backup_rows(platform, op.tenant_id) if b["id"] == plan.pre_backup_id]
    assert [(b["trigger"], b["status"]) for b in pre] == [(BackupTrigger.PRE_RESTORE.value, "succeeded")]

    tenant = await service.get("acme")
    await assert_tenant_works(platform, pg_admin_dsn, tenant)
    report = await reconcile(platform, fix=False)
    assert report.clean, report.findings


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
async def test_a_damaged_backup_is_refused_before_anything_is_created(
    damage: str, platform: Platform, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    await add_cards(pg_admin_dsn, tenant, ["one", "two"])
    async with restores_of(platform, service) as r:
        backup = await r.backup("acme")
        path = object_path(platform, backup)
        if damage == "truncated":
            truncate(path, path.stat().st_size // 2)
        else:
            flip_byte(path, path.stat().st_size // 2)
        await execute(f"{pg_admin_dsn} dbname={tenant.database_name}", "INSERT INTO cards (cardnumber) VALUES ('late')")
        live = await table_counts(pg_admin_dsn, tenant)
        before = await snapshot(control_dsn, pg_admin_dsn)

        with pytest.raises(BackupCorrupted) as refused:
            await r.restores.restore("acme", backup_id=backup.id)
        assert refused.value.status == 422
        assert ("bytes" if damage == "truncated" else "checksum") in refused.value.detail

        # Nothing happened: no operation, no database, no pre-restore backup; the live data is as it was.
        assert await snapshot(control_dsn, pg_admin_dsn) == before
        assert await tenant_databases(pg_admin_dsn, tenant.id) == {tenant.database_name: True}
        assert len(await backup_rows(platform, tenant.id)) == 1
        assert await table_counts(pg_admin_dsn, tenant) == live
        # It is recorded as corrupted, and never offered again.
        (found,) = await verifications(control_dsn, backup.id)
        assert found["ok"] is False and "refused at restore" in found["detail"]
        with pytest.raises(BackupUnusable):
            await r.restores.restore("acme", backup_id=backup.id)
        with pytest.raises(BackupNotFound):
            await r.restores.restore("acme", latest=True)


async def test_a_backup_is_never_restored_into_another_tenant(
    platform: Platform, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    first = await service.create(name="A", slug="tenant-a", tier="starter")
    second = await service.create(name="B", slug="tenant-b", tier="starter")
    await add_cards(pg_admin_dsn, first, ["a's card"])
    async with restores_of(platform, service) as r:
        backup = await r.backup("tenant-a")
        before = await snapshot(control_dsn, pg_admin_dsn)
        with pytest.raises(BackupMismatch) as refused:
            await r.restores.restore("tenant-b", backup_id=backup.id)
        assert refused.value.status == 409
        assert await snapshot(control_dsn, pg_admin_dsn) == before
        assert (await table_counts(pg_admin_dsn, second))["public.cards"] == 0


async def test_a_backup_of_an_older_schema_is_restored_at_its_revision_then_upgraded_to_head(
    platform: Platform, service: TenantService, pg_admin_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    await add_cards(pg_admin_dsn, tenant, ["one"])
    scripts = platform.tenant_scripts
    older = scripts.revisions()[-2]  # the revision before head
    await asyncio.to_thread(scripts.downgrade, f"{pg_admin_dsn} dbname={tenant.database_name}", older)
    async with restores_of(platform, service) as r:
        backup = await r.backup("acme")
        assert backup.manifest["schema_revision"] == older

        op = await r.restores.restore("acme", backup_id=backup.id, pre_backup=False)

    assert op.state is OperationState.SUCCEEDED
    restored = await service.get("acme")
    assert restored.schema_revision == scripts.head()
    assert (await table_counts(pg_admin_dsn, restored))["public.cards"] == 1
    await assert_tenant_works(platform, pg_admin_dsn, restored)  # at head, its role reads and writes
