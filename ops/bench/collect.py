"""Usage collection benchmark: the collector against a raw catalog scan, and ``/metrics``, in one run.

    .venv/bin/python ops/bench/collect.py [--tenants 1000] [--rounds 3] [--scrapes 200] [--dsn DSN]

Provisions N tenants on one server through ``TenantService``, then:

(1) full cycle against a raw baseline, alternating (``--rounds`` each, after one untimed pass of both):
    the baseline connects to every tenant database (``psycopg.AsyncConnection``, the conninfo the collector
    builds), runs the collector's per-tenant catalog queries (own size, tables, counters, files by kind) and
    closes, at most ``--concurrency`` at once, after the per-server size and connection queries once on a
    connection kept open (the collector's is pooled); the full cycle is ``UsageService.collect(full=True)``
    (registry read, server read, the same scans plus the storage directory walk, the snapshot and the history
    written to the control database). Median wall time of each and the ratio (floor: full <= 1.5x raw);
(2) incremental cycles after a full one: ``collect()`` with nothing changed, then again after 10 tenants grew
    (~2 MB of card notes inserted into each through a superuser connection, then CHECKPOINT): seconds and
    tenants scanned (floors: exactly the 10 grown tenants scanned, in < 5 s);
(3) ``GET /metrics`` of the real service (``cardvault serve`` with ``CARDVAULT_USAGE_INTERVAL=0`` and
    ``CARDVAULT_RECONCILE_INTERVAL=0``, so only this run collects) after ``POST /admin/usage/collect?full=true``
    and the leader's first tenant health round (``CARDVAULT_HEALTH_INTERVAL`` long enough that no second
    round runs during the scrapes): the first scrape (renders the new snapshot) and ``--scrapes`` sequential
    scrapes on one keep-alive connection with the scrape token: p50/p99 and response size (floor: p50 <
    50 ms); then the same with ``CARDVAULT_METRICS_PER_TABLE=0``.

Exits 1 if a floor is violated. Without ``--dsn`` a private PostgreSQL cluster with default (durable)
settings is started under a temporary directory and destroyed at the end; with ``--dsn`` (a superuser DSN)
only databases and roles this run creates are touched, and all of them are dropped at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

SELF = Path(__file__).resolve()
ROOT = SELF.parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from collect_support import (  # noqa: E402
    GROWTH_BYTES,
    HEALTH_INTERVAL_SECONDS,
    MachineCpu,
    RawBaseline,
    Scrapes,
    Service,
    grow,
    load_text,
    provision,
    scrape,
    start_service,
    stop_service,
    timed_collect,
)
from harness import (  # noqa: E402
    HOST,
    drop_leftovers,
    run,
    server_env,
)

from controlplane import db  # noqa: E402
from controlplane.fleet import repository as fleet_repository  # noqa: E402
from controlplane.platform import Platform  # noqa: E402
from controlplane.provisioning.catalog import TENANT_GROUP_ROLE  # noqa: E402
from controlplane.schemas.control import migrate_registry  # noqa: E402
from controlplane.settings import (  # noqa: E402
    DatabaseSettings,
    ProvisioningSettings,
    SecuritySettings,
    Settings,
    UsageSettings,
)
from controlplane.usage.collector import SCAN_ROLE  # noqa: E402
from controlplane.usage.service import UsageService  # noqa: E402

#: Tenants grown before the incremental cycle, and how much each grows (card notes, incompressible text).
GROWN_TENANTS = 10
#: Floors.
MAX_FULL_RATIO = 1.5
MAX_INCREMENTAL_SECONDS = 5.0
MAX_METRICS_P50_MS = 50.0


# ----------------------------------------------------------------------------------------- the run


async def bench(args: argparse.Namespace, server_dsn: str, home: Path) -> int:
    run_id = uuid.uuid4().hex[:8]
    control_db = f"cvcollect_ctl_{run_id}"
    template = f"cvcollect_tpl_{run_id}"
    secret_key = "collect-bench-" + uuid.uuid4().hex + uuid.uuid4().hex
    admin_token = "collect-bench-admin-" + uuid.uuid4().hex
    metrics_token = "collect-bench-scrape-" + uuid.uuid4().hex
    data_dir = home / "data"
    data_dir.mkdir()
    services: list[Service] = []
    group_role_existed = True  # until known otherwise: never drop a role this run did not create
    admin = psycopg.connect(server_dsn, autocommit=True)
    try:
        row = admin.execute(
            "SELECT current_setting('server_version'), current_setting('fsync'), current_setting('shared_buffers'),"
            " current_setting('max_connections')"
        ).fetchone()
        assert row is not None
        version, fsync, shared_buffers, max_connections = row
        print(
            f"machine: {os.cpu_count()} CPUs, {load_text()}; server: PostgreSQL {version}, fsync={fsync}, "
            f"shared_buffers={shared_buffers}, max_connections={max_connections}"
        )
        group_role_existed = bool(
            admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (TENANT_GROUP_ROLE,)).fetchone()
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(control_db)))
        control_dsn = db.with_database(server_dsn, control_db)
        settings = Settings(
            data_dir=data_dir,
            database=DatabaseSettings(url=control_dsn),
            provisioning=dataclasses.replace(ProvisioningSettings(), template_database=template, reconcile_interval=0),
            security=SecuritySettings(secret_key=secret_key, admin_token=admin_token),
            usage=dataclasses.replace(UsageSettings(), interval=0, concurrency=args.concurrency),
        )
        await migrate_registry(settings)
        async with Platform.open(settings, migrate=False) as platform:
            t0 = time.perf_counter()
            tenants = await provision(args, platform, run_id)
            seconds = time.perf_counter() - t0
            print(
                f"provisioned {len(tenants)} tenants in {seconds:.1f} s ({len(tenants) / seconds:.1f}/s, "
                f"concurrency {args.provision_concurrency}); {load_text()}"
            )
            async with platform.control.connection() as conn:
                servers = await fleet_repository.list_servers(conn)
                if len(servers) != 1:
                    raise RuntimeError(f"expected one registered server, found {len(servers)}")
                fleet_dsn = await platform.fleet.dsn(conn, servers[0].id)

            # -- (1) full cycle against the raw baseline
            usage = UsageService(platform)
            # The collector's conninfo: ``db.connect(dsn, settings.database, dbname=..., role=SCAN_ROLE)``.
            scan_infos = [
                db.management_conninfo(fleet_dsn, settings.database, dbname=t.database_name, role=SCAN_ROLE)
                for t in tenants
            ]
            server_info = db.management_conninfo(fleet_dsn, settings.database, role="admin")
            async with await psycopg.AsyncConnection.connect(
                server_info, autocommit=True, row_factory=dict_row
            ) as server_conn:
                raw = RawBaseline(server_conn, scan_infos, [t.database_name for t in tenants], args.concurrency)
                print(
                    f"(1) full cycle vs raw catalog scan, {len(tenants)} tenants, concurrency {args.concurrency}, "
                    f"{args.rounds} rounds alternating after one untimed pass of each:"
                )
                warm_raw = await raw.run()
                warm_full, _ = await timed_collect(usage, full=True)
                print(f"  warm-up: raw {warm_raw:.2f} s, full {warm_full:.2f} s (first cycle, loads the snapshot)")
                raw_times: list[float] = []
                full_times: list[float] = []
                for i in range(args.rounds):
                    cpu = MachineCpu()
                    raw_times.append(await raw.run())
                    raw_cpu = cpu.stop()
                    cpu = MachineCpu()
                    seconds, stats = await timed_collect(usage, full=True)
                    full_cpu = cpu.stop()
                    full_times.append(seconds)
                    if stats.scanned != len(tenants):
                        raise RuntimeError(f"full cycle scanned {stats.scanned} of {len(tenants)} tenants")
                    print(
                        f"  round {i + 1}: raw {raw_times[-1]:.2f} s (machine CPU {raw_cpu:.0f}%), full "
                        f"{full_times[-1]:.2f} s (machine CPU {full_cpu:.0f}%, peak scans in flight "
                        f"{usage.collector.peak_in_flight}), ratio {full_times[-1] / raw_times[-1]:.2f}x"
                    )
            raw_median, full_median = statistics.median(raw_times), statistics.median(full_times)
            full_ratio = full_median / raw_median
            per_tenant_raw = raw_median / len(tenants) * 1000
            per_tenant_full = full_median / len(tenants) * 1000
            print(
                f"  median: raw {raw_median:.2f} s ({per_tenant_raw:.2f} ms/tenant), full {full_median:.2f} s "
                f"({per_tenant_full:.2f} ms/tenant); ratio full/raw = {full_ratio:.2f}x (floor {MAX_FULL_RATIO}x)"
            )

            # -- (2) incremental cycles
            print(f"(2) incremental cycles after the full one; {load_text()}:")
            idle_seconds, idle_stats = await timed_collect(usage, full=False)
            print(f"  nothing changed: {idle_seconds:.2f} s, {idle_stats.scanned} scanned")
            step = max(1, len(tenants) // GROWN_TENANTS)
            grown = tenants[::step][:GROWN_TENANTS]
            before = {t.tenant_id: usage.snapshot.tenants[t.tenant_id] for t in tenants}
            t0 = time.perf_counter()
            for tenant in grown:
                await grow(server_dsn, tenant)
            grow_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            admin.execute("CHECKPOINT")  # also writes what provisioning and the cycles left dirty
            print(
                f"  grew {len(grown)} tenants by {GROWTH_BYTES / 1e6:.0f} MB of card notes each "
                f"({grow_seconds:.1f} s), then CHECKPOINT ({time.perf_counter() - t0:.1f} s)"
            )
            cpu = MachineCpu()
            incr_seconds, incr_stats = await timed_collect(usage, full=False)
            incr_cpu = cpu.stop()
            after = usage.snapshot.tenants
            rescanned = {tid for tid, old in before.items() if after[tid].tables_scanned_at != old.tables_scanned_at}
            grown_ids = {t.tenant_id for t in grown}
            growth = [after[t.tenant_id].database_bytes - before[t.tenant_id].database_bytes for t in grown]
            print(
                f"  after growing {len(grown)}: {incr_seconds:.2f} s (machine CPU {incr_cpu:.0f}%), "
                f"{incr_stats.scanned} scanned ({len(rescanned & grown_ids)} of them the grown tenants, "
                f"{len(rescanned - grown_ids)} others); measured growth per grown tenant: median "
                f"{statistics.median(growth) / 1e6:.2f} MB, min {min(growth) / 1e6:.2f} MB"
            )

        # -- (3) /metrics of the real service
        base_env = {
            "CARDVAULT_DATABASE_URL": control_dsn,
            "CARDVAULT_SECRET_KEY": secret_key,
            "CARDVAULT_ADMIN_TOKEN": admin_token,
            "CARDVAULT_METRICS_TOKEN": metrics_token,
            "CARDVAULT_TEMPLATE_DATABASE": template,
            "CARDVAULT_DATA_DIR": str(data_dir),
            "CARDVAULT_HOST": HOST,
            "CARDVAULT_USAGE_INTERVAL": "0",
            "CARDVAULT_USAGE_CONCURRENCY": str(args.concurrency),
            "CARDVAULT_RECONCILE_INTERVAL": "0",
            # A round soon after start, then none during the scrapes (they take a few seconds).
            "CARDVAULT_HEALTH_INTERVAL": f"{HEALTH_INTERVAL_SECONDS:.0f}s",
            "CARDVAULT_LOG_LEVEL": "WARNING",
        }
        print(
            f"(3) GET /metrics of `cardvault serve`, {args.scrapes} sequential scrapes on one keep-alive connection "
            f"after POST /admin/usage/collect?full=true; {load_text()}:"
        )
        results: list[Scrapes] = []
        for label, extra in (
            ("per-table on", {}),
            ("CARDVAULT_METRICS_PER_TABLE=0", {"CARDVAULT_METRICS_PER_TABLE": "0"}),
        ):
            service = start_service(server_env(base_env | extra), home, f"service-{len(results)}")
            services.append(service)
            try:
                result = scrape(service, admin_token, metrics_token, args.scrapes, label)
            finally:
                stop_service(service)
                services.remove(service)
            results.append(result)
            print(
                f"  {label}: collect over HTTP {result.collect_seconds:.2f} s "
                f"({result.collect_stats.get('scanned')} scanned); first scrape {result.first_ms:.1f} ms; "
                f"p50 {result.p50:.2f} ms, p99 {result.p99:.2f} ms, max {max(result.times_ms):.2f} ms; "
                f"{result.body_bytes / 1024:.0f} KiB, {result.series} series (machine CPU {result.machine_cpu:.0f}%)"
            )
        metrics = results[0]

        # -- verdict
        failures = []
        if full_ratio > MAX_FULL_RATIO:
            failures.append(f"(1) full/raw {full_ratio:.2f}x > {MAX_FULL_RATIO}x")
        if incr_stats.scanned != len(grown) or rescanned != grown_ids:
            failures.append(
                f"(2) {incr_stats.scanned} tenants scanned, {len(rescanned & grown_ids)} of the {len(grown)} grown"
            )
        if incr_seconds >= MAX_INCREMENTAL_SECONDS:
            failures.append(f"(2) incremental cycle {incr_seconds:.2f} s >= {MAX_INCREMENTAL_SECONDS:.0f} s")
        if metrics.p50 >= MAX_METRICS_P50_MS:
            failures.append(f"(3) /metrics p50 {metrics.p50:.2f} ms >= {MAX_METRICS_P50_MS:.0f} ms")

        print()
        print(
            f"Results ({len(tenants)} tenants on one server, usage concurrency {args.concurrency}, {os.cpu_count()} "
            f"CPUs, PostgreSQL {version}, fsync={fsync}; {load_text()} at the end):"
        )
        print()
        print("| Measurement | Value | Notes |")
        print("|---|---:|---|")
        print(
            f"| (1) raw catalog scan (connect + 4 queries + close per tenant, server read once) | "
            f"{raw_median:.2f} s | median of {args.rounds}; {per_tenant_raw:.2f} ms/tenant |"
        )
        print(
            f"| (1) `collect(full=True)` | {full_median:.2f} s | median of {args.rounds}; {per_tenant_full:.2f} "
            f"ms/tenant; **{full_ratio:.2f}x** raw (floor <= {MAX_FULL_RATIO}x) |"
        )
        print(f"| (2) `collect()`, nothing changed | {idle_seconds:.2f} s | {idle_stats.scanned} scanned |")
        print(
            f"| (2) `collect()`, {len(grown)} tenants grown ~{GROWTH_BYTES / 1e6:.0f} MB | {incr_seconds:.2f} s | "
            f"**{incr_stats.scanned} scanned** ({len(rescanned & grown_ids)} grown, {len(rescanned - grown_ids)} "
            f"other); floor < {MAX_INCREMENTAL_SECONDS:.0f} s, exactly the {len(grown)} |"
        )
        for result in results:
            floor = f" (floor < {MAX_METRICS_P50_MS:.0f} ms)" if result is metrics else ""
            print(
                f"| (3) `GET /metrics` p50 / p99, {result.label} | {result.p50:.2f} / {result.p99:.2f} ms | "
                f"{args.scrapes} scrapes{floor}; {result.body_bytes / 1024:.0f} KiB, {result.series} series; first "
                f"scrape after the collection {result.first_ms:.1f} ms |"
            )
        print()
        if failures:
            print("FLOOR VIOLATED: " + "; ".join(failures))
            return 1
        print(
            f"floors met: (1) full <= {MAX_FULL_RATIO}x raw, (2) exactly the grown tenants scanned in < "
            f"{MAX_INCREMENTAL_SECONDS:.0f} s, (3) /metrics p50 < {MAX_METRICS_P50_MS:.0f} ms"
        )
        return 0
    finally:
        for service in services:
            stop_service(service)
        if args.dsn:  # a private cluster is destroyed whole
            try:
                drop_leftovers(admin, server_dsn, control_db, template, drop_group_role=not group_role_existed)
            except Exception as exc:
                print(f"warning: cleanup incomplete ({exc}); drop t_* of run {run_id} by hand", file=sys.stderr)
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1000, help="tenants to provision (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="(1): raw/full pairs (default 3)")
    parser.add_argument("--scrapes", type=int, default=200, help="(3): timed GET /metrics (default 200)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=UsageSettings.concurrency,
        help=f"scans at once, collector and baseline (default {UsageSettings.concurrency})",
    )
    parser.add_argument("--provision-concurrency", type=int, default=4, help="tenants created at once (default 4)")
    parser.add_argument("--dsn", help="superuser DSN of an existing server (default: a private durable cluster)")
    args = parser.parse_args()
    if args.tenants < GROWN_TENANTS or args.rounds < 1 or args.scrapes < 1:
        parser.error(f"--tenants must be >= {GROWN_TENANTS}, --rounds and --scrapes >= 1")
    if args.concurrency < 1 or args.provision_concurrency < 1:
        parser.error("--concurrency and --provision-concurrency must be >= 1")

    run("cvcollect-", args.dsn, lambda server_dsn, home: bench(args, server_dsn, home))


if __name__ == "__main__":
    main()
