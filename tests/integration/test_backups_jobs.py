"""The backup job against real tenants: scheduling on an injected clock, expiry, crash recovery, usage.

- The job requests the backups of the tenants that are due at the (injected) time, active and suspended
  ones only, and runs them; a tenant just backed up is not due again.
- Expiry deletes the object and marks the row ``expired`` (also for a purged tenant); usage
  (``tenant_storage_usage``, type ``backups``) follows every success and expiry.
- A ``running`` backup whose process died (its lease is free) is run again by the job's recovery, with
  one more attempt; one interrupted too often is failed, not retried forever. A backup whose lease is held
  elsewhere is left alone.
- The overview behind ``/metrics`` knows each tenant's last success and who is stale.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from controlplane.backups import repository
from controlplane.backups.leases import lease_key
from controlplane.backups.models import BackupStatus, BackupTrigger
from controlplane.backups.schedule import BackupScheduler, stagger_offset
from controlplane.backups.service import BackupService
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.usage.service import UsageService, file_bytes
from tests.conftest import eventually
from tests.integration.backup_support import backup_rows
from tests.integration.tenant_support import fetch

SLUGS = ("due", "paused", "recent", "leaving", "fresh")


async def storage_row(platform: Platform, tenant_id: uuid.UUID) -> tuple[int, int] | None:
    async with platform.control.connection() as conn:
        cur = await conn.execute(
            "SELECT bytes_used, file_count FROM tenant_storage_usage WHERE tenant_id = %s AND storage_type = 'backups'",
            (tenant_id,),
        )
        row = await cur.fetchone()
    return (int(row["bytes_used"]), int(row["file_count"])) if row else None


async def settled(platform: Platform, tenant_id: uuid.UUID) -> list[dict[str, object]]:
    async def no_open() -> bool:
        return all(r["status"] not in ("pending", "running") for r in await backup_rows(platform, tenant_id))

    await eventually(no_open, "no open backup", within=30)
    return await backup_rows(platform, tenant_id)


async def backed_up_at(platform: Platform, backups: BackupService, slug: str, at: datetime) -> None:
    """Give ``slug`` a (long expired) backup made at ``at``."""
    made = await backups.request(slug)
    async with platform.control.connection() as conn:
        await conn.execute(
            "UPDATE backups SET status = 'expired', created_at = %s, finished_at = %s, deleted_at = %s WHERE id = %s",
            (at, at, at, made.id),
        )


async def test_the_job_backs_up_the_due_tenants(platform: Platform, service: TenantService) -> None:
    now = datetime.now(UTC)
    interval = platform.settings.backups.schedules["starter"].interval
    tenants = {slug: await service.create(name=slug.title(), slug=slug, tier="starter") for slug in SLUGS}
    await service.suspend("paused")
    await service.delete("leaving")
    backups = BackupService(platform)
    job = BackupScheduler(backups, clock=lambda: now)
    try:
        two_days_ago = now - timedelta(days=2)
        for slug in ("due", "paused", "leaving"):
            await backed_up_at(platform, backups, slug, two_days_ago)
        # "recent" was backed up after its latest slot: not due before the next one.
        offset = stagger_offset(tenants["recent"].id, interval)
        latest_slot = (now.timestamp() - offset) // interval * interval + offset
        await backed_up_at(
            platform, backups, "recent", datetime.fromtimestamp((latest_slot + now.timestamp()) / 2, UTC)
        )
        # "fresh" was never backed up, and was created a moment ago: its first slot is still to come.

        assert (await job.job()).startswith("2 scheduled, 2 started")
        for slug in ("due", "paused"):
            rows = await settled(platform, tenants[slug].id)
            assert [(r["status"], r["trigger"], r["requested_by"]) for r in rows][-1] == (
                "succeeded",
                "scheduled",
                "scheduler",
            )
            assert await storage_row(platform, tenants[slug].id) == (rows[-1]["bytes"], 1)
        for slug in ("recent", "leaving", "fresh"):
            assert all(r["trigger"] != "scheduled" for r in await backup_rows(platform, tenants[slug].id)), slug
        assert (await job.job()).startswith("0 scheduled")  # just backed up

        board = await job.refresh()
        assert set(board.stale) == {"due", "paused", "recent", "fresh"}  # active and suspended tenants
        assert board.stale == {"due": False, "paused": False, "recent": False, "fresh": False}
        assert board.last_success["due"] is not None and board.retained == 2
    finally:
        await backups.stop()


async def test_expiry_deletes_the_objects_also_of_purged_tenants(platform: Platform, service: TenantService) -> None:
    kept = await service.create(name="Kept", slug="kept", tier="starter")
    await service.create(name="Gone", slug="gone", tier="starter")
    backups = BackupService(platform)
    try:
        old = await backups.create("kept")
        recent = await backups.create("kept")
        of_gone = await backups.create("gone")
        assert await storage_row(platform, kept.id) == ((old.bytes or 0) + (recent.bytes or 0), 2)
        await service.delete("gone", now=True)  # purged: its backups stay until they expire
        async with platform.control.connection() as conn:
            await conn.execute(
                "UPDATE backups SET expires_at = now() - interval '1 minute' WHERE id = ANY(%s)",
                ([old.id, of_gone.id],),
            )
        assert await backups.expire() == 2
        for expired in (old, of_gone):
            row = await backups.get(expired.id)
            assert row.status is BackupStatus.EXPIRED and row.deleted_at is not None
            assert await platform.objects.stat(expired.object_key) is None
        assert (await backups.get(recent.id)).status is BackupStatus.SUCCEEDED
        assert await platform.objects.stat(recent.object_key) == recent.bytes
        assert await storage_row(platform, kept.id) == (recent.bytes, 1)
        assert [b.id for b in await backups.list_for_tenant("gone")] == [of_gone.id]  # by the slug it had
        assert await backups.expire() == 0
    finally:
        await backups.stop()


async def test_a_backup_whose_process_died_is_run_again_or_failed(
    platform: Platform, service: TenantService, control_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    backups = BackupService(platform)
    try:
        # A process claimed it and died (its lease went with its connection): the row says running.
        died = await backups.request("acme", BackupTrigger.MANUAL)
        async with platform.control.connection() as conn:
            await repository.claim(conn, died.id, server_id=tenant.server_id, database_name=tenant.database_name)
        # While another process holds its lease, recovery leaves it alone.
        with psycopg.connect(control_dsn, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (lease_key(died.id),))
            assert await backups.recover() == 1  # started, but it finds the lease taken
            await backups.wait_background()
            assert (await backups.get(died.id)).status is BackupStatus.RUNNING
        assert await backups.recover() == 1
        await backups.wait_background()
        retried = await backups.get(died.id)
        assert (retried.status, retried.attempts) == (BackupStatus.SUCCEEDED, 2)

        # Interrupted as many times as CARDVAULT_MAX_ATTEMPTS allows: failed, not run again.
        stuck = await backups.request("acme", BackupTrigger.MANUAL)
        async with platform.control.connection() as conn:
            await conn.execute(
                "UPDATE backups SET status = 'running', attempts = %s WHERE id = %s",
                (platform.settings.provisioning.max_attempts, stuck.id),
            )
        assert await backups.recover() == 1
        await backups.wait_background()
        failed = await backups.get(stuck.id)
        assert failed.status is BackupStatus.FAILED and failed.error is not None and "interrupted" in failed.error
        assert await platform.objects.stat(failed.object_key) is None
    finally:
        await backups.stop()


async def test_backup_bytes_are_storage_of_their_own_never_the_tenants_files(
    platform: Platform, service: TenantService, pg_admin_dsn: str
) -> None:
    """Backups show in ``tenant_storage_usage`` (type ``backups``), but a restarted usage service, which
    rebuilds its snapshot from that table, does not count them in the tenant's ``storage_bytes``."""
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    usage = UsageService(platform)
    await usage.collect()
    before = usage.snapshot.tenants[tenant.id]
    backups = BackupService(platform)
    try:
        backup = await backups.create("acme")
    finally:
        await backups.stop()
    assert backup.status is BackupStatus.SUCCEEDED and backup.bytes

    rows = await fetch(
        platform.settings.database.url,
        "SELECT bytes_used, file_count FROM tenant_storage_usage WHERE tenant_id = %s AND storage_type = 'backups'",
        (tenant.id,),
    )
    assert [(r["bytes_used"], r["file_count"]) for r in rows] == [(backup.bytes, 1)]
    restarted = UsageService(platform)
    await restarted.load()
    reloaded = restarted.snapshot.tenants[tenant.id]
    assert "backups" not in reloaded.storage
    assert file_bytes(reloaded) == file_bytes(before)
