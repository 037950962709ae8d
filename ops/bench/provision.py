"""Provisioning benchmark: the control plane against raw PostgreSQL, in one run, on one server.

    .venv/bin/python ops/bench/provision.py [--tenants 200] [--dsn DSN] [--migrate] [--strategies]

For each of N rounds it creates one tenant through the service layer (registry row, ledger, template
clone, login role, grants, quotas) and, alternating with it, runs one raw ``CREATE DATABASE ... TEMPLATE``
of the same template with the same strategy; then purges every tenant through the service and drops
every raw clone. It prints p50/p95 of each and their ratio. ``--migrate`` then adds a revision to a
temporary copy of the tenant schema and times ``cardvault migrate tenants`` over every tenant at
concurrency 4 against a raw psycopg baseline in the same run (``migrate.py``: ``compare``).
``--strategies`` first times raw clones with both ``WAL_LOG`` and ``FILE_COPY``.

Without ``--dsn`` a private PostgreSQL cluster with default (durable) settings is started under a
temporary directory and destroyed at the end; with ``--dsn`` (a superuser DSN) only databases and
roles this run creates are touched, and all of them are dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import drop_leftovers, pct  # noqa: E402
from migrate import SECRET_KEY, Bench, compare  # noqa: E402

from controlplane import db  # noqa: E402
from controlplane.localpg import LocalCluster  # noqa: E402
from controlplane.platform import Platform  # noqa: E402
from controlplane.provisioning.service import TenantService  # noqa: E402
from controlplane.schemas.control import migrate_registry  # noqa: E402
from controlplane.settings import DatabaseSettings, ProvisioningSettings, SecuritySettings, Settings  # noqa: E402


def line(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"  {label:<34} n={len(ms):<5} p50={statistics.median(ms):8.2f} ms  p95={pct(ms, 0.95):8.2f} ms"


def raw_clone(conn: psycopg.Connection[tuple[object, ...]], name: str, template: str, strategy: str) -> float:
    started = time.perf_counter()
    conn.execute(
        sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY {}").format(
            sql.Identifier(name), sql.Identifier(template), sql.SQL(strategy.upper())
        )
    )
    return time.perf_counter() - started


def raw_drop(conn: psycopg.Connection[tuple[object, ...]], name: str) -> float:
    started = time.perf_counter()
    conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    return time.perf_counter() - started


async def bench(args: argparse.Namespace, server_dsn: str) -> None:
    run_id = uuid.uuid4().hex[:8]
    control_db = f"cvbench_ctl_{run_id}"
    template = f"cvbench_tpl_{run_id}"
    admin = psycopg.connect(server_dsn, autocommit=True)
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(control_db)))
    schema_copy = Path(tempfile.mkdtemp(prefix="cvbench-schema-"))
    raw_names: list[str] = []
    settings = Settings(
        database=DatabaseSettings(url=db.with_database(server_dsn, control_db)),
        provisioning=dataclasses.replace(
            ProvisioningSettings(), template_database=template, clone_strategy=args.strategy, reconcile_interval=0
        ),
        security=SecuritySettings(secret_key=SECRET_KEY, admin_token="bench"),
    )
    try:
        version = admin.execute("SHOW server_version").fetchone()
        fsync = admin.execute("SHOW fsync").fetchone()
        print(f"server: PostgreSQL {version[0] if version else '?'}, fsync={fsync[0] if fsync else '?'}")
        await migrate_registry(settings)
        async with Platform.open(settings, migrate=False) as platform:
            service = TenantService(platform)
            # Build the template once (first tenant), outside the measurements.
            await service.create(name="warm-up", slug=f"warmup-{run_id}", tier="starter")
            await service.purge(f"warmup-{run_id}")

            if args.strategies:
                print("raw clone by strategy (20 each):")
                for strategy in ("wal_log", "file_copy"):
                    times = []
                    for i in range(20):
                        name = f"cvbench_s_{run_id}_{strategy}_{i}"
                        times.append(raw_clone(admin, name, template, strategy))
                        raw_drop(admin, name)
                    print(line(f"CREATE DATABASE STRATEGY {strategy}", times))

            created, raw_created = [], []
            databases: list[str] = []
            slugs = [f"bench-{run_id}-{i}" for i in range(args.tenants)]
            started = time.perf_counter()
            for i, slug in enumerate(slugs):
                name = f"cvbench_raw_{run_id}_{i}"
                raw_created.append(raw_clone(admin, name, template, args.strategy))
                raw_names.append(name)
                t0 = time.perf_counter()
                databases.append(
                    (await service.create(name=f"Bench {i}", slug=slug, tier="professional")).database_name
                )
                created.append(time.perf_counter() - t0)
                if (i + 1) % 100 == 0:
                    print(f"  ... {i + 1}/{args.tenants} provisioned", file=sys.stderr)
            total = time.perf_counter() - started
            print(f"provision {args.tenants} tenants (strategy {args.strategy}; raw and service alternating):")
            print(line("raw CREATE DATABASE ... TEMPLATE", raw_created))
            print(line("control plane create (service)", created))
            ratio = statistics.median(created) / statistics.median(raw_created)
            print(f"  ratio p50 service/raw = {ratio:.2f}x   (both together took {total:.1f} s)")

            if args.migrate:
                shutil.copytree(ROOT / "tenant_schema", schema_copy, dirs_exist_ok=True)
                bench_fleet = Bench(
                    server_dsn,
                    db.with_database(server_dsn, control_db),
                    template,
                    schema_copy,
                    schema_copy / ".cli-data",  # removed with the copy
                    databases,
                    concurrency=4,
                )
                await compare(bench_fleet, platform.tenant_scripts.head(), rounds=2)

            purged, raw_dropped = [], []
            for slug, name in zip(slugs, raw_names, strict=True):
                raw_dropped.append(raw_drop(admin, name))
                t0 = time.perf_counter()
                await service.purge(slug)
                purged.append(time.perf_counter() - t0)
            raw_names.clear()
            print("delete:")
            print(line("raw DROP DATABASE ... WITH (FORCE)", raw_dropped))
            print(line("control plane purge (service)", purged))
            print(f"  ratio p50 service/raw = {statistics.median(purged) / statistics.median(raw_dropped):.2f}x")
    finally:
        for name in raw_names:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        drop_leftovers(admin, server_dsn, control_db, template)
        admin.close()
        shutil.rmtree(schema_copy, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--dsn", help="superuser DSN of an existing server (default: a private durable cluster)")
    parser.add_argument("--strategy", choices=("wal_log", "file_copy"), default=ProvisioningSettings.clone_strategy)
    parser.add_argument(
        "--migrate", action="store_true", help="also time `cardvault migrate tenants` over every tenant against raw"
    )
    parser.add_argument("--strategies", action="store_true", help="also compare raw WAL_LOG and FILE_COPY clones")
    args = parser.parse_args()
    if args.dsn:
        asyncio.run(bench(args, args.dsn))
        return
    home = Path(tempfile.mkdtemp(prefix="cvbench-", dir="/var/tmp"))
    home.chmod(0o711)
    cluster = LocalCluster(home / "pg")
    try:
        asyncio.run(bench(args, cluster.ensure_running()))
    finally:
        cluster.destroy()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
