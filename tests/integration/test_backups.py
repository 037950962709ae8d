"""A backup is a real ``pg_dump -Fc`` of the tenant database, sealed as it streams into the store.

What is stored is ciphertext only (a card's notes are nowhere in it), its sha256 and size are the row's, it
opens with the row's data key (unwrapped by the master key) into an archive ``pg_restore`` reads, and the
manifest counts every table's rows in the dump's own snapshot. A dump that fails (a database dropped
under it, no client binaries) leaves a ``failed`` row with the reason and no object.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from controlplane.backups.dump import Dumper, find_client_bindir
from controlplane.backups.models import BackupStatus, BackupTrigger
from controlplane.backups.service import BackupService
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from tests.integration.backup_support import (
    add_cards,
    backup_rows,
    plaintext,
    sha256,
    stored_bytes,
    table_counts,
    tenant_dsn,
)

SECRET_NOTE = "rookie card kept in the blue binder 7f3a9c"


async def test_a_backup_is_a_sealed_pg_dump_with_the_snapshots_row_counts(
    platform: Platform, service: TenantService, pg_admin_dsn: str, tmp_path: Path
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="professional")
    await add_cards(pg_admin_dsn, tenant, [SECRET_NOTE, "second", "third"])
    backups = BackupService(platform)
    try:
        backup = await backups.create("acme", requested_by="test")
    finally:
        await backups.stop()

    assert backup.status is BackupStatus.SUCCEEDED, backup.error
    assert backup.trigger is BackupTrigger.MANUAL and backup.attempts == 1
    stored = await stored_bytes(platform.objects, backup.object_key)
    assert SECRET_NOTE.encode() not in stored
    assert backup.bytes == len(stored) and backup.sha256 == sha256(stored)
    assert backup.finished_at is not None and backup.expires_at is not None
    retention = platform.settings.backups.schedules["professional"].retention
    assert abs((backup.expires_at - backup.finished_at).total_seconds() - retention) < 1

    archive = await plaintext(platform, backup)
    assert archive.startswith(b"PGDMP")
    (tmp_path / "t.dump").write_bytes(archive)
    pg_restore = find_client_bindir(15, "pg_restore") / "pg_restore"
    listing = await asyncio.to_thread(
        subprocess.run, [pg_restore, "--list", tmp_path / "t.dump"], capture_output=True, text=True, check=True
    )
    assert "TABLE DATA public cards" in listing.stdout

    counts = await table_counts(pg_admin_dsn, tenant)
    manifest = backup.manifest
    assert manifest["tables"] == counts
    assert manifest["tables"]["public.cards"] == 3 and manifest["tables"]["public.players"] == 1
    assert manifest["schema_revision"] == tenant.schema_revision == backup.schema_revision
    assert manifest["server_version"] // 10000 == 15
    assert str(manifest["pg_dump"]).startswith("pg_dump (PostgreSQL) 15")


async def test_the_manifest_counts_what_the_archive_holds_while_writes_go_on(
    platform: Platform, service: TenantService, pg_admin_dsn: str, tmp_path: Path
) -> None:
    """Rows keep arriving during the backup: the manifest's count is still exactly the archive's, because
    both come from one snapshot."""
    tenant = await service.create(name="Busy", slug="busy", tier="professional")
    await add_cards(pg_admin_dsn, tenant, ["before"] * 100)
    stop = asyncio.Event()

    async def writer() -> int:
        written = 0
        async with await psycopg.AsyncConnection.connect(tenant_dsn(pg_admin_dsn, tenant), autocommit=True) as conn:
            while not stop.is_set():
                await conn.execute("INSERT INTO cards (cardnumber) VALUES (%s)", (f"W-{written}",))
                written += 1
        return written

    writing = asyncio.create_task(writer())
    backups = BackupService(platform)
    try:
        await asyncio.sleep(0.05)
        backup = await backups.create("busy")
    finally:
        stop.set()
        written = await writing
        await backups.stop()
    assert backup.status is BackupStatus.SUCCEEDED, backup.error
    (tmp_path / "busy.dump").write_bytes(await plaintext(platform, backup))
    pg_restore = find_client_bindir(15, "pg_restore") / "pg_restore"
    restored = await asyncio.to_thread(
        subprocess.run,
        [pg_restore, "--data-only", "--table=cards", "--file=-", tmp_path / "busy.dump"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = restored.stdout.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("COPY public.cards "))
    rows = lines[start + 1 : lines.index("\\.", start)]
    counted = backup.manifest["tables"]["public.cards"]
    assert len(rows) == counted
    assert 100 <= counted < 100 + written  # taken while the writes went on


async def test_a_failed_dump_leaves_a_failed_row_and_no_object(
    platform: Platform, service: TenantService, pg_admin_dsn: str, tmp_path: Path
) -> None:
    tenant = await service.create(name="Gone", slug="gone", tier="starter")
    # No client binaries where the service is told they are: it says what to install, and stores nothing.
    backups = BackupService(platform, dumper=Dumper(platform.settings.database, bindirs={15: tmp_path}))
    try:
        failed = await backups.create("gone")
    finally:
        await backups.stop()
    assert failed.status is BackupStatus.FAILED and failed.bytes is None
    assert failed.error is not None and "postgresql-client-15" in failed.error
    assert await platform.objects.stat(failed.object_key) is None

    # The database dropped under it: pg_dump cannot connect.
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(tenant.database_name)))
    backups = BackupService(platform)
    try:
        failed = await backups.create("gone")
    finally:
        await backups.stop()
    assert failed.status is BackupStatus.FAILED
    assert failed.error is not None and tenant.database_name in failed.error
    assert await platform.objects.stat(failed.object_key) is None
    assert await platform.objects.list(f"backups/{tenant.id}/") == []
    assert [r["status"] for r in await backup_rows(platform, tenant.id)] == ["failed", "failed"]
