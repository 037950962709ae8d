"""Verification: a backup restored into a scratch database and checked against its manifest, by hand and by
the leader's job; a corrupted backup is found, recorded and never restored; scratch databases never stay."""

from __future__ import annotations

import pytest
from psycopg.types.json import Jsonb

from controlplane.backups.restore_models import BackupUnusable, RestoreCheckFailed
from controlplane.platform import Platform
from controlplane.provisioning import spares_repository
from controlplane.provisioning.service import TenantService
from tests.integration.backup_support import add_cards, table_counts
from tests.integration.restore_support import flip_byte, object_path, restores_of, scratch_databases, verifications
from tests.integration.tenant_support import create_database, execute, operations, snapshot


async def test_a_good_backup_verifies_and_a_damaged_one_fails_and_is_never_restored(
    platform: Platform, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    await add_cards(pg_admin_dsn, tenant, ["one", "two"])
    async with restores_of(platform, service) as r:
        good = await r.backup("acme")
        damaged = await r.backup("acme")
        flip_byte(object_path(platform, damaged), 100)

        passed = await r.verifier.verify(good.id)
        assert passed.ok and passed.detail.startswith("restored and checked:"), passed
        failed = await r.verifier.verify(damaged.id)
        assert not failed.ok and "checksum" in failed.detail
        assert await scratch_databases(pg_admin_dsn) == []
        assert [v["ok"] for v in await verifications(control_dsn, damaged.id)] == [False]
        listed = await r.verifier.verifications(good.id)
        assert [(v.id, v.ok) for v in listed] == [(passed.id, True)]

        # The damaged one is refused; the latest restorable is the older, verified one.
        with pytest.raises(BackupUnusable) as refused:
            await r.restores.restore("acme", backup_id=damaged.id)
        assert "failed its last verification" in refused.value.detail
        op = await r.restores.restore("acme", latest=True, pre_backup=False)
        assert op.params["backup_id"] == str(good.id)


async def test_a_restore_that_does_not_match_its_manifest_is_refused_and_undone(
    platform: Platform, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    await add_cards(pg_admin_dsn, tenant, ["one", "two"])
    async with restores_of(platform, service) as r:
        backup = await r.backup("acme")
        manifest = dict(backup.manifest)
        manifest["tables"] = {**manifest["tables"], "public.cards": 3}  # type: ignore[dict-item]
        await execute(control_dsn, "UPDATE backups SET manifest = %s WHERE id = %s", (Jsonb(manifest), backup.id))
        live = await table_counts(pg_admin_dsn, tenant)
        before = await snapshot(control_dsn, pg_admin_dsn)

        with pytest.raises(RestoreCheckFailed) as refused:
            await r.restores.restore("acme", backup_id=backup.id, pre_backup=False)
        assert "public.cards: 2 row(s) restored, 3 row(s) in the manifest" in refused.value.detail
        after = await snapshot(control_dsn, pg_admin_dsn)
        assert (after.registry["tenants"], after.databases) == (before.registry["tenants"], before.databases)
        assert await table_counts(pg_admin_dsn, tenant) == live
        (restore,) = [o for o in await operations(control_dsn, tenant.id) if o["kind"] == "restore"]
        assert (restore["state"], restore["step"]) == ("rolled_back", "check")

        verification = await r.verifier.verify(backup.id)
        assert not verification.ok and "does not match its manifest" in verification.detail


async def test_the_verification_job_checks_a_sample_and_the_upkeep_clears_dead_scratch_databases(
    platform: Platform, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    await add_cards(pg_admin_dsn, tenant, ["one"])
    async with restores_of(platform, service) as r:
        good = await r.backup("acme")
        damaged = await r.backup("acme")
        flip_byte(object_path(platform, damaged), 200)

        assert await r.verifier.job() == "verified 2 backup(s): 1 ok, 1 failed"
        assert [v["ok"] for v in await verifications(control_dsn, good.id)] == [True]
        assert [v["ok"] for v in await verifications(control_dsn, damaged.id)] == [False]
        assert await r.verifier.job() == "verified 0 backup(s): 0 ok, 0 failed"  # both verified recently

        # A verification that died left its scratch database: the upkeep drops it (ours only).
        async with platform.control.connection() as conn:
            tag = await spares_repository.pool_tag(conn)
        ours, foreign = f"cvverify_{tag}_00112233", "cvverify_ffffffff_00112233"
        create_database(pg_admin_dsn, ours)
        create_database(pg_admin_dsn, foreign)
        try:
            outcome = await r.upkeep.run()
            assert "1 verification leftover(s) dropped" in outcome
            assert await scratch_databases(pg_admin_dsn) == [foreign]
        finally:
            await execute(pg_admin_dsn, f'DROP DATABASE IF EXISTS "{foreign}"')
