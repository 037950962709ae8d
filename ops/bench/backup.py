"""Backup, restore and legacy-import benchmark, each against a raw baseline measured in the same run.

    .venv/bin/python ops/bench/backup.py [--cards 100000] [--rounds 3] [--small-tenants 1000] [--dsn DSN]
                                         [--skip-fleet] [--skip-import]

1. One tenant with ``--cards`` cards (``COPY``, the search benchmark's generator: card numbers, years,
   conditions, 4-12 words of notes). Per round, in alternating order:
   - backup: the raw ``pg_dump -Fc -f FILE`` of its database (then ``fsync``, as the store does) against
     ``BackupService.create`` (the same ``pg_dump`` in the dump's own snapshot plus the row-count manifest,
     sealed with AES-256-GCM as it streams, written atomically into the local store, recorded);
   - restore: the raw ``CREATE DATABASE`` + ``pg_restore --no-owner -d`` of that file against
     ``RestoreService.restore`` (checksum of the stored object, unseal, streamed ``pg_restore`` into a new
     database, grants, row counts and revision checked against the manifest, the switch through the ledger).
   Medians and the service/raw ratio of each are printed (the issue's floor: <= 1.3x, encryption included;
   the run exits 1 above it).
2. ``--small-tenants`` tenants with 20 cards each, all backed up as the leader's job backs up the tenants
   that are due (scheduled backups requested, then started at ``CARDVAULT_BACKUP_CONCURRENCY``
   (``--concurrency``) per server); wall time until the last one finished, and bytes stored. (The schedule
   spreads a tier's tenants over its interval; here every one is due at once.) Baseline: the same databases
   dumped by raw ``pg_dump -Fc -f FILE`` (and fsync) at the same concurrency.
3. The 100,000-card legacy SQLite file of the tests (``tests/legacy_support.large_installation``) imported
   into an empty tenant through ``LegacyImporter`` (seconds).

Without ``--dsn`` a private PostgreSQL cluster with default (durable) settings is started under
``/var/tmp`` and destroyed at the end; with ``--dsn`` (a superuser DSN) only databases and roles this
run creates are touched, and all of them are dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import drop_leftovers, run  # noqa: E402
from search import cards, load  # noqa: E402

from controlplane import db  # noqa: E402
from controlplane.settings import (  # noqa: E402
    AuthSettings,
    BackupSettings,
    DatabaseSettings,
    ProvisioningSettings,
    SecuritySettings,
    Settings,
)

MIB = 1024 * 1024
#: Floor of the service's backup and restore time against raw pg_dump / pg_restore (issue 13).
RATIO_FLOOR = 1.3


def median_line(label: str, service: list[float], raw: list[float]) -> str:
    s, r = statistics.median(service), statistics.median(raw)
    rounds = " ".join(f"{a / b:.2f}" for a, b in zip(service, raw, strict=True))
    return f"{label}: service {s:6.2f} s, raw {r:6.2f} s, ratio {s / r:.2f}x (rounds: {rounds})"


def raw_dump(pg_dump: Path, conninfo: str, target: Path) -> float:
    started = time.perf_counter()
    subprocess.run([str(pg_dump), "-Fc", "-f", str(target), "-d", conninfo], check=True)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - started


def raw_restore(pg_restore: Path, server_dsn: str, source: Path, database: str) -> float:
    started = time.perf_counter()
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    subprocess.run(
        [str(pg_restore), "--no-owner", "-d", db.with_database(server_dsn, database), str(source)], check=True
    )
    elapsed = time.perf_counter() - started
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
    return elapsed


async def bench_big_tenant(args: argparse.Namespace, platform: Any, server_dsn: str, home: Path) -> list[str]:
    """Backup and restore of one big tenant, service against raw; the floors it misses."""
    from controlplane.backups.dump import find_client_bindir
    from controlplane.backups.models import BackupStatus
    from controlplane.backups.restore import RestoreService
    from controlplane.backups.service import BackupService
    from controlplane.provisioning.service import TenantService

    tenants = TenantService(platform)
    tenant = await tenants.create(name="Backup bench", slug="big-backup", tier="enterprise")
    tenant_dsn = db.with_database(server_dsn, tenant.database_name)
    rows, _ = cards(args.cards)
    await asyncio.to_thread(load, tenant_dsn, rows)
    with psycopg.connect(tenant_dsn) as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    print(f"tenant: {args.cards} cards, database {size[0] / MIB if size else 0:.1f} MiB")
    major = int(psycopg.connect(server_dsn).execute("SHOW server_version_num").fetchone()[0]) // 10000  # type: ignore[index]
    bindir = find_client_bindir(major, "pg_restore")
    raw_file = home / "raw.dump"
    backups = BackupService(platform)
    restores = RestoreService(platform, tenants, backups)
    dump_service: list[float] = []
    dump_raw: list[float] = []
    restore_service: list[float] = []
    restore_raw: list[float] = []
    try:
        for n in range(args.rounds):
            order = ("raw", "service") if n % 2 == 0 else ("service", "raw")
            backup = None
            for which in order:
                if which == "raw":
                    dump_raw.append(await asyncio.to_thread(raw_dump, bindir / "pg_dump", tenant_dsn, raw_file))
                else:
                    started = time.perf_counter()
                    backup = await backups.create(tenant.slug, requested_by="bench")
                    dump_service.append(time.perf_counter() - started)
                    if backup.status is not BackupStatus.SUCCEEDED:
                        raise RuntimeError(f"backup failed: {backup.error}")
            assert backup is not None
            for which in order:
                if which == "raw":
                    scratch = f"cvbench_raw_{uuid.uuid4().hex[:8]}"
                    restore_raw.append(
                        await asyncio.to_thread(raw_restore, bindir / "pg_restore", server_dsn, raw_file, scratch)
                    )
                else:
                    started = time.perf_counter()
                    await restores.restore(tenant.slug, backup_id=backup.id, pre_backup=False, requested_by="bench")
                    restore_service.append(time.perf_counter() - started)
            print(
                f"  round {n + 1}: dump raw {dump_raw[-1]:.2f} s / service {dump_service[-1]:.2f} s; "
                f"restore raw {restore_raw[-1]:.2f} s / service {restore_service[-1]:.2f} s; "
                f"dump {raw_file.stat().st_size / MIB:.1f} MiB raw, {(backup.bytes or 0) / MIB:.1f} MiB sealed"
            )
    finally:
        await backups.stop()
    print(median_line("backup ", dump_service, dump_raw))
    print(median_line("restore", restore_service, restore_raw))
    return [
        f"{label} {statistics.median(service) / statistics.median(raw):.2f}x > {RATIO_FLOOR}x"
        for label, service, raw in (("backup", dump_service, dump_raw), ("restore", restore_service, restore_raw))
        if statistics.median(service) > RATIO_FLOOR * statistics.median(raw)
    ]


async def bench_fleet(args: argparse.Namespace, platform: Any, server_dsn: str, home: Path) -> None:
    from controlplane.backups.models import BackupTrigger
    from controlplane.backups.service import BackupService
    from controlplane.provisioning.service import TenantService

    tenants = TenantService(platform)
    started = time.perf_counter()
    made = 0
    gate = asyncio.Semaphore(4)

    async def make(i: int) -> None:
        nonlocal made
        async with gate:
            tenant = await tenants.create(name=f"Small {i}", slug=f"small-{i:05d}", tier="starter")
        async with _tenant_conn(platform, tenant) as conn:
            await conn.execute(
                "INSERT INTO cards (cardnumber, year, notes) SELECT 'S-' || g, 1990 + g % 30, 'note ' || g"
                " FROM generate_series(1, 20) g"
            )
        made += 1

    await asyncio.gather(*(make(i) for i in range(args.small_tenants)))
    print(f"fleet: {made} small tenants (20 cards each) made in {time.perf_counter() - started:.0f} s")
    backups = BackupService(platform)
    started = time.perf_counter()
    try:
        # What the leader's job does for every tenant that is due (the schedule spreads them over the
        # interval; here all of them are due at once): request, then start them, bounded per server.
        async with platform.control.connection() as conn:
            cur = await conn.execute("SELECT id, database_name FROM tenants WHERE slug LIKE 'small-%%'")
            rows = await cur.fetchall()
        ids = [row["id"] for row in rows]
        for tenant_id in ids:
            await backups.request(tenant_id, BackupTrigger.SCHEDULED, requested_by="bench")
        await backups.recover()
        while True:
            async with platform.control.connection() as conn:
                cur = await conn.execute(
                    "SELECT count(*) FILTER (WHERE status IN ('pending', 'running')) AS open,"
                    " count(*) FILTER (WHERE status = 'succeeded') AS ok,"
                    " count(*) FILTER (WHERE status = 'failed') AS failed,"
                    " coalesce(sum(bytes) FILTER (WHERE status = 'succeeded'), 0) AS bytes"
                    " FROM backups WHERE trigger = 'scheduled'"
                )
                counts = await cur.fetchone()
            assert counts is not None
            if counts["open"] == 0:
                break
            await asyncio.sleep(0.2)
        wall = time.perf_counter() - started
    finally:
        await backups.stop()
    concurrency = platform.settings.backups.per_server_concurrency
    print(
        f"nightly: {counts['ok']} succeeded, {counts['failed']} failed in {wall:.1f} s at concurrency "
        f"{concurrency} per server ({counts['ok'] / wall:.1f} backups/s); {counts['bytes'] / MIB:.1f} MiB stored "
        f"({counts['bytes'] / max(counts['ok'], 1) / 1024:.1f} KiB per backup)"
    )
    raw = await raw_fleet_dumps(server_dsn, [row["database_name"] for row in rows], home, concurrency)
    print(f"nightly raw: {len(rows)} x pg_dump -Fc at concurrency {concurrency}: {raw:.1f} s; ratio {wall / raw:.2f}x")


async def raw_fleet_dumps(server_dsn: str, databases: list[str], home: Path, concurrency: int) -> float:
    """The baseline of the nightly run: ``pg_dump -Fc -f FILE`` (then fsync) of each database, ``concurrency``
    at once."""
    from controlplane.backups.dump import find_client_bindir

    with psycopg.connect(server_dsn) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
    assert version is not None
    pg_dump = find_client_bindir(int(version[0]) // 10000, "pg_dump") / "pg_dump"
    target = home / "raw-fleet"
    target.mkdir()
    gate = asyncio.Semaphore(concurrency)

    async def one(database: str) -> None:
        async with gate:
            await asyncio.to_thread(raw_dump, pg_dump, db.with_database(server_dsn, database), target / database)

    started = time.perf_counter()
    await asyncio.gather(*(one(name) for name in databases))
    return time.perf_counter() - started


def _tenant_conn(platform: Any, tenant: Any) -> Any:
    """An admin connection to the tenant's database (on the tenant's server)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def opened() -> Any:
        async with (
            platform.control.connection() as control,
            platform.fleet.connect_database(control, tenant.server_id, tenant.database_name) as conn,
        ):
            yield conn

    return opened()


async def bench_import(platform: Any, home: Path) -> None:
    from controlplane.context import AuditContext
    from controlplane.importer.service import LegacyImporter
    from controlplane.provisioning.service import TenantService
    from tests.legacy_support import large_installation

    directory = home / "legacy"
    directory.mkdir()
    started = time.perf_counter()
    legacy = await asyncio.to_thread(large_installation, directory)
    print(f"import: legacy file with {len(legacy.cards)} cards written in {time.perf_counter() - started:.1f} s")
    tenants = TenantService(platform)
    await tenants.create(name="Legacy bench", slug="legacy-import", tier="enterprise")
    started = time.perf_counter()
    report = await LegacyImporter(platform, tenants).run(
        "legacy-import",
        legacy.path,
        legacy.uploads if legacy.uploads.is_dir() else None,
        dry_run=False,
        actor=AuditContext(actor="bench"),
    )
    print(
        f"import: {report.imported} in {time.perf_counter() - started:.1f} s "
        f"({sum(report.issue_counts.values())} issue(s) reported)"
    )


async def bench(args: argparse.Namespace, server_dsn: str, home: Path) -> int:
    from controlplane.platform import Platform
    from controlplane.schemas.control import migrate_registry

    run_id = uuid.uuid4().hex[:8]
    control_db, template = f"cvbench_ctl_{run_id}", f"cvbench_tpl_{run_id}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(control_db)))
        version = admin.execute("SHOW server_version").fetchone()
    settings = Settings(
        data_dir=home / "data",
        database=DatabaseSettings(url=db.with_database(server_dsn, control_db)),
        provisioning=dataclasses.replace(
            ProvisioningSettings(), template_database=template, reconcile_interval=0, spare_databases=0
        ),
        security=SecuritySettings(secret_key="bench-" + "k" * 40, admin_token="bench-admin-token"),
        auth=AuthSettings(argon2_memory_kib=64, argon2_time_cost=1),
        backups=BackupSettings(per_server_concurrency=args.concurrency),
        log_level="WARNING",
    )
    logging.disable(logging.INFO)
    print(f"server: PostgreSQL {version[0] if version else '?'}; store {settings.backup_dir}")
    try:
        await migrate_registry(settings)
        async with Platform.open(settings, migrate=False) as platform:
            failures = await bench_big_tenant(args, platform, server_dsn, home)
            if not args.skip_import:
                await bench_import(platform, home)
            if not args.skip_fleet:
                await bench_fleet(args, platform, server_dsn, home)
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            drop_leftovers(admin, server_dsn, control_db, template)
    if failures:
        print("FLOOR VIOLATED: " + "; ".join(failures))
        return 1
    print(f"floors met: backup and restore <= {RATIO_FLOOR}x raw")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small-tenants", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=BackupSettings.per_server_concurrency)
    parser.add_argument("--skip-fleet", action="store_true")
    parser.add_argument("--skip-import", action="store_true")
    parser.add_argument("--dsn", help="superuser DSN of an existing server (default: a private cluster)")
    args = parser.parse_args()
    run("cvbench-backup-", args.dsn, lambda dsn, home: bench(args, dsn, home))


if __name__ == "__main__":
    main()
