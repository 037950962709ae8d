"""Scale benchmark: a measured model of the path to 100,000 tenants, in one run.

    .venv/bin/python ops/bench/scale.py [--registered 0,10000,50000] [--server-tenants 1000] [--dsn DSN]

Measures, on a private durable PostgreSQL cluster (or ``--dsn``, a superuser DSN: then only what this run
creates is touched, and dropped):

(1) the control plane: a real ``cardvault serve`` process at each N of ``--registered`` registry-only tenants
    (``scale_tenants``: copies of a real collected tenant, no databases), plus ``--active`` real tenants
    provisioned with an admin and a card: RSS when ready and warm (``/metrics`` scraped, the admin tenants
    list read to its end), after resolving ``--sample`` registered tenants (cache entries) and after one
    authenticated read by each real tenant (a pool each); ``/metrics`` bytes, series and scrape time with
    per-table series on and off (``CARDVAULT_METRICS_PER_TABLE``), all with ``--tenant-series``
    (``CARDVAULT_METRICS_TENANT_SERIES``; with ``separate`` also ``/metrics/tenants``); see ``scale_process``;
(2) one database server: raw clone and tenant connect times, shared catalogs, files and idle CPU before and
    after creating ``--server-tenants`` tenants through the service (timed per batch), and the disk of an
    empty tenant database; see ``scale_server``;
(3) the model (``scale_model``): servers and processes for ``--target`` tenants from (1), (2) and the
    assumptions given as options (average tenant size, active fraction, request rates...).

Every periodic job that would reach the registered tenants' missing databases is off in the service
(usage collection, health, backups, reconcile, hygiene), and argon2 runs at test strength (only logins
before the measurements hash). Nothing is measured while another reading runs; the numbers are RSS of one
process, so allocator noise of a few MiB is expected: use large steps of N.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import uuid
from pathlib import Path

SELF = Path(__file__).resolve()
ROOT = SELF.parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(SELF.parent))

from harness import HOST, drop_leftovers, free_port, run, server_env  # noqa: E402
from route import ACCESS_TOKEN_TTL, ARGON2_MEMORY_KIB, ARGON2_TIME_COST  # noqa: E402
from route_load import login_all  # noqa: E402
from route_servers import ADMIN_PASSWORD, provision, start_server, stop_server, wait_ready  # noqa: E402
from scale_model import Assumptions, Measured, report  # noqa: E402
from scale_process import ProcessReading, measure  # noqa: E402
from scale_server import Server, create_tenants  # noqa: E402
from scale_tenants import Registered  # noqa: E402

from controlplane.settings import PoolSettings  # noqa: E402

#: Jobs off in the measured service: none of them may reach a registered tenant's (missing) database.
QUIET = {
    "CARDVAULT_RECONCILE_INTERVAL": "0",
    "CARDVAULT_USAGE_INTERVAL": "0",
    "CARDVAULT_USAGE_COMPACT_INTERVAL": "0",
    "CARDVAULT_HEALTH_INTERVAL": "0",
    "CARDVAULT_BACKUP_INTERVAL": "0",
    "CARDVAULT_BACKUP_VERIFY_INTERVAL": "0",
    "CARDVAULT_HYGIENE_INTERVAL": "0",
    "CARDVAULT_SPARE_DATABASES": "0",
    "CARDVAULT_LOG_LEVEL": "WARNING",
}


async def bench(args: argparse.Namespace, server_dsn: str, home: Path) -> int:
    import psycopg
    from psycopg import sql

    from controlplane import db
    from controlplane.platform import Platform
    from controlplane.provisioning.catalog import TENANT_GROUP_ROLE
    from controlplane.provisioning.service import TenantService
    from controlplane.schemas.control import migrate_registry
    from controlplane.settings import (
        AuthSettings,
        BackupSettings,
        DatabaseSettings,
        ProvisioningSettings,
        SecuritySettings,
        Settings,
        UsageSettings,
    )
    from controlplane.usage.service import UsageService

    run_id = uuid.uuid4().hex[:8]
    control_db, template = f"cvscale_ctl_{run_id}", f"cvscale_tpl_{run_id}"
    secret_key = "scale-bench-" + uuid.uuid4().hex * 2
    admin_token = "scale-bench-" + uuid.uuid4().hex
    data_dir = home / "data"
    data_dir.mkdir()
    admin = psycopg.connect(server_dsn, autocommit=True)
    group_role_existed = True  # until known otherwise: never drop a role this run did not create
    try:
        group_role_existed = bool(
            admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (TENANT_GROUP_ROLE,)).fetchone()
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(control_db)))
        control_dsn = db.with_database(server_dsn, control_db)
        settings = Settings(
            data_dir=data_dir,
            database=DatabaseSettings(url=control_dsn),
            provisioning=dataclasses.replace(
                ProvisioningSettings(), template_database=template, reconcile_interval=0, spare_databases=0
            ),
            security=SecuritySettings(secret_key=secret_key, admin_token=admin_token),
            auth=AuthSettings(argon2_memory_kib=ARGON2_MEMORY_KIB, argon2_time_cost=ARGON2_TIME_COST),
            usage=dataclasses.replace(UsageSettings(), interval=0, compact_interval=0, health_interval=0),
            backups=dataclasses.replace(BackupSettings(), interval=0, verify_interval=0),
        )
        server = Server(admin, template, settings.provisioning.clone_strategy)
        version = admin.execute("SHOW server_version").fetchone()
        print(
            f"PostgreSQL {version[0] if version else '?'}, max_connections {server.max_connections}, autovacuum "
            f"{server.autovacuum} (naptime {server.naptime}); data directory "
            f"{'readable' if server.data_dir else 'not readable: no disk or CPU figures'}"
        )
        await migrate_registry(settings)

        # -- real tenants: the model for the registered ones, and the active ones
        provisioning = argparse.Namespace(tenants=args.active, provision_concurrency=args.server_concurrency)
        active, seconds = await provision(provisioning, settings, run_id)
        async with Platform.open(settings, migrate=False) as platform:
            stats = await UsageService(platform).collect(full=True)
        print(
            f"{len(active)} real tenants (admin and a card each) in {seconds:.1f} s; collected: {stats.scanned} scanned"
        )
        env = QUIET | {
            "CARDVAULT_DATABASE_URL": control_dsn,
            "CARDVAULT_SECRET_KEY": secret_key,
            "CARDVAULT_ADMIN_TOKEN": admin_token,
            "CARDVAULT_TEMPLATE_DATABASE": template,
            "CARDVAULT_DATA_DIR": str(data_dir),
            "CARDVAULT_HOST": HOST,
            "CARDVAULT_ARGON2_MEMORY_KIB": str(ARGON2_MEMORY_KIB),
            "CARDVAULT_ARGON2_TIME_COST": str(ARGON2_TIME_COST),
            "CARDVAULT_ACCESS_TOKEN_TTL": ACCESS_TOKEN_TTL,
        }
        port = free_port()
        argv = [str(Path(sys.executable).parent / "cardvault"), "serve", "--port", str(port)]
        login = start_server("login", argv, server_env(env), home, port)
        try:
            wait_ready(login)
            await login_all(login, active, ADMIN_PASSWORD)
        finally:
            stop_server(login)

        # -- (1) the control plane at each N
        print(
            f"(1) `cardvault serve` at N registered tenants (+{len(active)} real), {args.scrapes} scrapes, "
            f"{args.sample:,} resolved, {len(active)} active:"
        )
        registered = Registered(control_dsn, run_id, active[0].tenant_id)
        on: list[ProcessReading] = []
        off: list[ProcessReading] = []
        for n in args.registered:
            took = registered.grow_to(n)
            if took:
                print(f"  registered {n:,} tenants ({took:.1f} s)")
            count = min(args.sample, n)
            sample = [registered.slug(1 + i * n // count) for i in range(count)] if count else []
            common = {
                "env": env,
                "home": home,
                "registered": n + len(active),
                "scrapes": args.scrapes,
                "tenant_series": args.tenant_series,
            }
            on.append(await measure(**common, per_table=True, sample_slugs=sample, active=active))
            print(on[-1].line(), flush=True)
            off.append(await measure(**common, per_table=False, sample_slugs=[], active=[]))
            print(off[-1].line(), flush=True)

        # -- (2) one database server
        print(f"(2) the database server, before and after {args.server_tenants:,} tenant databases:")
        before = server.probe(run_id, active[0].dsn, clones=args.clones, idle_seconds=args.idle_seconds)
        print(before.line(), flush=True)
        async with Platform.open(settings, migrate=False) as platform:
            creation = await create_tenants(
                TenantService(platform),
                server_dsn,
                run_id,
                args.server_tenants,
                batch=args.server_batch,
                concurrency=args.server_concurrency,
            )
        print(
            f"  created {creation.count:,} tenants in {creation.seconds:.1f} s "
            f"({creation.count / creation.seconds:.1f}/s, "
            f"batches of {args.server_batch}: first {creation.batch_seconds[0]:.1f} s, last "
            f"{creation.batch_seconds[-1]:.1f} s); connected to each in {creation.connect_seconds:.1f} s"
        )
        after = server.probe(run_id, active[0].dsn, clones=args.clones, idle_seconds=args.idle_seconds)
        print(after.line(), flush=True)
        empty = creation.database_names[0]
        pools = PoolSettings()
        measured = Measured(
            on=on,
            off=off,
            empty_db_bytes=server.database_bytes(empty),
            empty_db_files=server.database_files(empty),
            before=before,
            after=after,
            creation=creation,
            max_connections=server.max_connections,
            reserved_connections=server.reserved_connections,
            budget=pools.connection_budget,
            capacity=pools.capacity,
            per_tenant_max=pools.per_tenant_max,
        )
        if args.server_max_connections is None:
            args.server_max_connections = server.max_connections
        report(measured, Assumptions.from_args(args))
        return 0
    finally:
        if args.dsn:  # a private cluster is destroyed whole
            try:
                pattern = f"cvscale\\_raw\\_{run_id}%"  # a raw clone the probe made and did not drop
                for (name,) in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (pattern,)):
                    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                drop_leftovers(admin, server_dsn, control_db, template, drop_group_role=not group_role_existed)
            except Exception as exc:
                print(f"warning: cleanup incomplete ({exc}); drop t_* of run {run_id} by hand", file=sys.stderr)
        admin.close()


def _levels(text: str) -> list[int]:
    levels = sorted({int(part) for part in text.split(",") if part.strip()})
    if not levels or levels[0] < 0:
        raise argparse.ArgumentTypeError("a comma-separated list of counts >= 0")
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    measure_group = parser.add_argument_group("what to measure")
    add = measure_group.add_argument
    add("--registered", type=_levels, default=[0, 10_000, 50_000], help="registry-only tenants, N per reading")
    add("--sample", type=int, default=2000, help="registered tenants resolved per reading (default 2000)")
    add("--active", type=int, default=100, help="real tenants, each with an open pool (default 100, <= capacity)")
    add("--scrapes", type=int, default=20, help="timed /metrics scrapes per reading (default 20)")
    add(
        "--tenant-series",
        choices=("inline", "separate", "off"),
        default="inline",
        help="CARDVAULT_METRICS_TENANT_SERIES of the measured processes (default inline; separate: /metrics keeps "
        "the aggregates and /metrics/tenants is measured too)",
    )
    add("--server-tenants", type=int, default=1000, help="tenant databases created on the server (default 1000)")
    add("--server-batch", type=int, default=100, help="tenants per timed batch (default 100)")
    add("--server-concurrency", type=int, default=1, help="tenants created at once (default 1)")
    add("--clones", type=int, default=20, help="raw clones and connects per server probe (default 20)")
    add("--idle-seconds", type=float, default=30, help="window of the idle server CPU (default 30; 0: skip)")
    add("--dsn", help="superuser DSN of an existing server (default: a private durable cluster)")
    model = parser.add_argument_group("model assumptions")
    add = model.add_argument
    add("--target", type=int, default=100_000, help="tenants to size for (default 100000)")
    add("--avg-tenant-mb", type=float, default=50, help="average data per tenant beyond the empty database (50)")
    add("--server-disk-gb", type=float, default=1000, help="disk per database server (1000)")
    add("--disk-fill", type=float, default=0.7, help="fill the disks at most this much (0.7)")
    add("--active-fraction", type=float, default=0.05, help="tenants with requests at the same time (0.05)")
    add("--conns-per-active", type=float, default=1, help="server connections per active tenant (1)")
    add("--server-max-connections", type=int, help="max_connections per server (default: the measured one)")
    add("--server-reserve", type=int, default=20, help="connections kept for jobs, backups, replication (20)")
    add("--max-clone-growth-ms", type=float, default=500, help="tolerated rise of the clone p50 (500 ms)")
    add("--max-idle-cpu", type=float, default=50, help="tolerated idle server CPU, %% of one core (50)")
    add("--max-dbs-per-server", type=int, default=10_000, help="databases per server in any case (10000)")
    add("--rps-per-tenant", type=float, default=0.02, help="peak requests/s per tenant (0.02)")
    add("--hot-rps", type=float, default=1500, help="req/s per process on pool hits (README, routing (a): 1500)")
    add("--miss-rps", type=float, default=200, help="req/s per process on pool misses (README, routing (b): 200)")
    add("--hit-ratio", type=float, default=0.95, help="tenant pool hit ratio (0.95)")
    add("--process-memory-mib", type=float, default=2048, help="memory per control-plane process (2048 MiB)")
    add("--metrics-budget-mib", type=float, default=10, help="largest tolerated /metrics body (10 MiB)")
    args = parser.parse_args()
    if not 1 <= args.active <= PoolSettings.capacity:  # more would evict each other's pools
        parser.error(f"--active must be between 1 and the pool capacity {PoolSettings.capacity}")
    if args.server_tenants < 1 or args.server_batch < 1 or args.clones < 1 or args.scrapes < 1:
        parser.error("--server-tenants, --server-batch, --clones and --scrapes must be >= 1")
    run("cvscale-", args.dsn, lambda server_dsn, home: bench(args, server_dsn, home))


if __name__ == "__main__":
    main()
