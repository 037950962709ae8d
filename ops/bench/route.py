"""Routing benchmark: the tenant API through the control plane against a bare handler, in one run.

    .venv/bin/python ops/bench/route.py [--tenants 1000] [--duration 10] [--connections 64] [--pgbouncer]
        [--dsn DSN]

Provisions N tenants through the service (one card and a first tenant_admin each), starts the real
service (``cardvault serve``, pool capacity 100, connection budget 200, 2 connections per tenant) and a
bare Litestar app (one GET handler running the same SQL as the cards GET handler on a plain
``psycopg_pool.AsyncConnectionPool`` to the hot tenant's database as the tenant's role), each as its own
uvicorn process with the same settings, logs every tenant's admin in through the service
(``POST /t/{slug}/auth/token``), then drives both with the same HTTP load generator (``wrk``; an asyncio
client if wrk is missing) from the same machine. Every request carries the access token of the tenant
it names (``Authorization: Bearer ...``; the baseline gets the same bytes and ignores them), so the
routed numbers include authentication: the JWT check, the per-tenant API call meter and the session
lookup on the tenant's connection (cached, see the README).

(a) GET one card of one hot tenant, bare baseline and routed alternating (``--rounds`` each, every
    other round routed first, both sampled alike): median throughput, p50 and p99 of each and the
    ratio routed/baseline (floor: >= ``RATIO_FLOOR``). The baseline sends what the service sends for a
    read: the statement alone, in autocommit (``--baseline-transaction``: inside BEGIN / COMMIT, as
    psycopg does by default and as the service did before issue 11);
(b) GET one card per tenant, round-robin over all N tenants: throughput, p50/p99, errors, tenant pool
    hit ratio, peak tenant connections on the server (``pg_stat_activity`` polled every 50 ms) against
    the budget (floors: no errors, never above the budget, p99 under ``SPREAD_P99_FLOOR_MS``), after a 2 s
    warm-up like (a)'s. With ``--pgbouncer``, once more through a real PgBouncer registered in front of
    the server with ``cardvault servers pgbouncer`` (``route_pgbouncer``): every miss then connects to
    PgBouncer instead of starting a PostgreSQL backend (floors ``PGBOUNCER_RPS_FLOOR`` and
    ``PGBOUNCER_P99_FLOOR_MS``; the server's tenant connections, PgBouncer's now, within the budget);
(c) RSS of the service process with N tenants registered and the pools (b) left open.

The service is ``.venv/bin/cardvault serve`` itself; pool hits and misses come from its
``GET /admin/pools``. Exits 1 if a floor is violated. Two settings differ from a production service,
neither on the measured path: argon2 runs at test strength (only the logins before the measurements
hash), and the benchmarked tenants' ``api_calls_per_hour`` quota is raised far beyond what a run makes
(the meter still counts every call; the tier's limit would only turn the hot tenant's load into 429s).
Access tokens live for a day (``CARDVAULT_ACCESS_TOKEN_TTL``), so none expires during a long run.

Without ``--dsn`` a private PostgreSQL cluster with default (durable) settings is started under a
temporary directory and destroyed at the end; with ``--dsn`` (a superuser DSN) only databases and roles
this run creates are touched, and all of them are dropped at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

SELF = Path(__file__).resolve()
ROOT = SELF.parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import HOST, drop_leftovers, free_port, run, server_env  # noqa: E402
from route_load import ConnectionPeak, LoadResult, login_all, run_load, verify_all  # noqa: E402
from route_pgbouncer import PgBouncerInFront  # noqa: E402
from route_servers import (  # noqa: E402
    ADMIN_PASSWORD,
    RoutedStats,
    Server,
    provision,
    rss_kib,
    start_server,
    stop_server,
    wait_ready,
)
from route_spread import (  # noqa: E402
    PGBOUNCER_P99_FLOOR_MS,
    PGBOUNCER_RPS_FLOOR,
    SPREAD_P99_FLOOR_MS,
    Spread,
    spread_failures,
    spread_row,
    spread_run,
)

#: Floors: (a) routed/baseline throughput at least this; (b) p99 of the spread run under this many ms.
RATIO_FLOOR = 0.85
#: Connections the bench needs besides the tenant budget: control pool, listener, baseline, poller, admin.
OVERHEAD_CONNECTIONS = 30
#: argon2id cost of the run (service and provisioning): only the logins before the measurements hash.
ARGON2_MEMORY_KIB = 64
ARGON2_TIME_COST = 1
#: Lifetime of the access tokens the run logs in for: longer than any run.
ACCESS_TOKEN_TTL = "1d"


def median_result(results: Sequence[LoadResult]) -> dict[str, float]:
    return {
        "rps": statistics.median(r.rps for r in results),
        "p50_ms": statistics.median(r.p50_ms for r in results),
        "p99_ms": statistics.median(r.p99_ms for r in results),
        "errors": sum(r.error_count for r in results),
        "cpu_us": statistics.median(r.cpu_us_per_request for r in results),
    }


async def bench(args: argparse.Namespace, server_dsn: str, home: Path) -> int:
    import psycopg
    from psycopg import sql

    from controlplane import db
    from controlplane.provisioning.catalog import TENANT_GROUP_ROLE
    from controlplane.schemas.control import migrate_registry
    from controlplane.settings import (
        AuthSettings,
        DatabaseSettings,
        ProvisioningSettings,
        SecuritySettings,
        Settings,
    )

    run_id = uuid.uuid4().hex[:8]
    control_db = f"cvroute_ctl_{run_id}"
    template = f"cvroute_tpl_{run_id}"
    secret_key = "route-bench-" + uuid.uuid4().hex + uuid.uuid4().hex
    admin_token = "route-bench-" + uuid.uuid4().hex
    data_dir = home / "data"
    data_dir.mkdir()
    servers: list[Server] = []
    group_role_existed = True  # until known otherwise: never drop a role this run did not create
    admin = psycopg.connect(server_dsn, autocommit=True)
    try:
        row = admin.execute(
            "SELECT current_setting('server_version'), current_setting('max_connections')::int, "
            "current_setting('fsync')"
        ).fetchone()
        assert row is not None
        version, max_connections, fsync = row
        if args.budget + OVERHEAD_CONNECTIONS > max_connections:
            raise SystemExit(
                f"connection budget {args.budget} + {OVERHEAD_CONNECTIONS} for the rest does not fit the "
                f"server's max_connections {max_connections}: lower --budget"
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
            auth=AuthSettings(argon2_memory_kib=ARGON2_MEMORY_KIB, argon2_time_cost=ARGON2_TIME_COST),
        )
        if args.wrk:
            load_name = f"wrk ({args.wrk}, {args.threads} threads)"
        else:
            load_name = "asyncio client" + ("" if args.python_client else " (wrk not found)")
        print(
            f"server: PostgreSQL {version}, fsync={fsync}, max_connections={max_connections}; "
            f"{os.cpu_count()} CPUs; load: {load_name}, {args.connections} connections, {args.duration:.0f} s/run"
        )
        await migrate_registry(settings)
        tenants, provision_seconds = await provision(args, settings, run_id)
        print(
            f"provisioned {len(tenants)} tenants with an admin and one card each in {provision_seconds:.1f} s "
            f"({len(tenants) / provision_seconds:.1f}/s, concurrency {args.provision_concurrency})"
        )
        hot = tenants[0]

        # -- the two servers
        routed_port, baseline_port = free_port(), free_port()
        routed_env = server_env(
            {
                "CARDVAULT_DATABASE_URL": control_dsn,
                "CARDVAULT_SECRET_KEY": secret_key,
                "CARDVAULT_ADMIN_TOKEN": admin_token,
                "CARDVAULT_TEMPLATE_DATABASE": template,
                "CARDVAULT_DATA_DIR": str(data_dir),
                "CARDVAULT_HOST": HOST,
                "CARDVAULT_POOL_CAPACITY": str(args.capacity),
                "CARDVAULT_CONNECTION_BUDGET": str(args.budget),
                "CARDVAULT_POOL_MAX_SIZE": str(args.pool_max),
                "CARDVAULT_RECONCILE_INTERVAL": "0",
                "CARDVAULT_LOG_LEVEL": "WARNING",
                "CARDVAULT_ARGON2_MEMORY_KIB": str(ARGON2_MEMORY_KIB),
                "CARDVAULT_ARGON2_TIME_COST": str(ARGON2_TIME_COST),
                "CARDVAULT_ACCESS_TOKEN_TTL": ACCESS_TOKEN_TTL,
            }
        )
        cardvault = Path(sys.executable).parent / "cardvault"
        if not cardvault.exists():
            raise SystemExit(f"{cardvault} not found: run this with the project's .venv/bin/python")
        routed_argv = [str(cardvault), "serve", "--port", str(routed_port)]
        routed = start_server("routed", routed_argv, routed_env, home, routed_port)
        servers.append(routed)
        baseline_env = server_env(
            {
                "CVBENCH_BASELINE_DSN": hot.dsn,
                "CVBENCH_POOL_MAX_SIZE": str(args.pool_max),
                "CVBENCH_BASELINE_AUTOCOMMIT": "0" if args.baseline_transaction else "1",
                "CVBENCH_LOG_LEVEL": "WARNING",
            }
        )
        baseline_argv = [sys.executable, str(SELF.parent / "route_servers.py"), str(baseline_port)]
        baseline = start_server("baseline", baseline_argv, baseline_env, home, baseline_port)
        servers.append(baseline)
        wait_ready(routed)
        wait_ready(baseline)
        stats = RoutedStats(routed, admin_token)
        rss_start = rss_kib(routed.proc.pid)

        # Every tenant's admin logs in; every tenant answers (and the registry cache is warm) before anything
        # is measured.
        t0 = time.perf_counter()
        await login_all(routed, tenants, ADMIN_PASSWORD)
        print(f"logged in: every tenant's admin through the service ({time.perf_counter() - t0:.1f} s)")
        await verify_all(baseline, [hot])
        t0 = time.perf_counter()
        await verify_all(routed, tenants)
        print(f"checked: every tenant's card answers 200 through the service ({time.perf_counter() - t0:.1f} s)")
        rss_touched = rss_kib(routed.proc.pid)

        # -- (a) one hot tenant: baseline and routed alternating
        print(f"(a) GET one card of one hot tenant, {args.rounds} rounds alternating, after a 2 s warm-up each:")
        for server in (baseline, routed):
            await run_load(args, home, server, [hot.request], 2, "round-robin")
        base_runs: list[LoadResult] = []
        routed_runs: list[LoadResult] = []
        peak_a = ConnectionPeak(server_dsn)
        for i in range(args.rounds):
            # ABBA: every other round runs the routed side first, so a drift of the machine's speed during
            # the run does not always favour the same side. Both sides run under the same 50 ms sampling.
            order = ((baseline, base_runs), (routed, routed_runs))
            for server, runs in order if i % 2 == 0 else order[::-1]:
                async with peak_a.sampling():
                    runs.append(await run_load(args, home, server, [hot.request], args.duration, "round-robin"))
                print(runs[-1].line(f"round {i + 1} {server.name}"))
        base_m, routed_m = median_result(base_runs), median_result(routed_runs)
        ratio = routed_m["rps"] / base_m["rps"] if base_m["rps"] else 0.0
        per_round = ", ".join(f"{r.rps / b.rps:.2f}" for b, r in zip(base_runs, routed_runs, strict=True) if b.rps)
        print(
            f"  median: baseline {base_m['rps']:.0f} req/s (p50 {base_m['p50_ms']:.2f} ms, p99 "
            f"{base_m['p99_ms']:.2f} ms); routed {routed_m['rps']:.0f} req/s (p50 {routed_m['p50_ms']:.2f} ms, "
            f"p99 {routed_m['p99_ms']:.2f} ms)"
        )
        print(
            f"  ratio routed/baseline throughput = {ratio:.2f}x (per round: {per_round}); floor {RATIO_FLOOR}x"
            + (" (baseline in BEGIN / COMMIT)" if args.baseline_transaction else "")
        )
        print(
            f"  server CPU per request: baseline {base_m['cpu_us']:.0f} us, routed {routed_m['cpu_us']:.0f} us "
            f"({routed_m['cpu_us'] / base_m['cpu_us'] if base_m['cpu_us'] else 0:.2f}x)"
        )
        rss_after_a = rss_kib(routed.proc.pid)

        # -- (b) every tenant round-robin through capacity-bounded pools (then through PgBouncer)
        requests = [t.request for t in tenants]
        spread = await spread_run(args, home, routed, stats, requests, server_dsn, max_connections, "")
        bouncer: Spread | None = None
        if args.pgbouncer:
            pgbouncer = PgBouncerInFront(home, cardvault, routed_env)
            pgbouncer.start()
            try:
                await verify_all(routed, tenants)  # the service heard of it (NOTIFY): every tenant through it
                bouncer = await spread_run(
                    args, home, routed, stats, requests, server_dsn, max_connections, " through PgBouncer"
                )
            finally:
                pgbouncer.stop()
        pools_after = spread.pools_after

        # -- (c) memory
        rss_end = rss_kib(routed.proc.pid)
        rss_base = rss_kib(baseline.proc.pid)
        open_pools = pools_after["open_pools"] if pools_after else "n/a (not measured)"
        print(
            f"(c) service RSS: {rss_start['VmRSS'] / 1024:.1f} MiB when ready, {rss_touched['VmRSS'] / 1024:.1f} MiB "
            f"after one request per tenant, {rss_after_a['VmRSS'] / 1024:.1f} MiB after (a), "
            f"{rss_end['VmRSS'] / 1024:.1f} MiB after (b) with {len(tenants)} tenants registered and "
            f"{open_pools} pools open (peak {rss_end['VmHWM'] / 1024:.1f} MiB); "
            f"bare baseline {rss_base['VmRSS'] / 1024:.1f} MiB"
        )

        # -- verdict
        failures = []
        if ratio < RATIO_FLOOR:
            failures.append(f"(a) routed/baseline throughput {ratio:.2f}x < {RATIO_FLOOR}x")
        if base_m["errors"] or routed_m["errors"]:
            failures.append(f"(a) errors: baseline {base_m['errors']}, routed {routed_m['errors']}")
        if peak_a.peak_tenant > args.budget:
            failures.append(f"(a) {peak_a.peak_tenant} connections > budget {args.budget}")
        failures += spread_failures(spread, args.budget, "(b)", SPREAD_P99_FLOOR_MS)
        if bouncer is not None:
            failures += spread_failures(
                bouncer, args.budget, "(b) through PgBouncer", PGBOUNCER_P99_FLOOR_MS, PGBOUNCER_RPS_FLOOR
            )
        print()
        print(
            f"Results ({len(tenants)} tenants, {args.connections} connections, {args.duration:.0f} s runs, "
            f"{'wrk' if args.wrk else 'asyncio client'}, {os.cpu_count()} CPUs, PostgreSQL {version}):"
        )
        print()
        print("| Scenario | req/s | p50 ms | p99 ms | Notes |")
        print("|---|---:|---:|---:|---|")
        print(
            f"| (a) bare Litestar + psycopg pool, hot tenant | {base_m['rps']:.0f} | {base_m['p50_ms']:.2f} | "
            f"{base_m['p99_ms']:.2f} | median of {args.rounds} |"
        )
        print(
            f"| (a) routed, hot tenant | {routed_m['rps']:.0f} | {routed_m['p50_ms']:.2f} | "
            f"{routed_m['p99_ms']:.2f} | **{ratio:.2f}x** baseline (floor {RATIO_FLOOR}x) |"
        )
        print(spread_row(spread, f"(b) routed, {len(tenants)} tenants {args.pattern}", args.budget))
        if bouncer is not None:
            print(spread_row(bouncer, f"(b) routed through PgBouncer, {len(tenants)} tenants", args.budget))
        print(
            f"| (c) service RSS | | | | {rss_end['VmRSS'] / 1024:.0f} MiB with {len(tenants)} tenants, "
            f"{open_pools} pools open (idle after start "
            f"{rss_start['VmRSS'] / 1024:.0f} MiB) |"
        )
        print()
        if failures:
            print("FLOOR VIOLATED: " + "; ".join(failures))
            return 1
        print(
            f"floors met: (a) >= {RATIO_FLOOR}x, (b) no errors, p99 < {SPREAD_P99_FLOOR_MS:.0f} ms (through PgBouncer "
            f">= {PGBOUNCER_RPS_FLOOR:.0f} req/s, p99 < {PGBOUNCER_P99_FLOOR_MS:.0f} ms) and connections "
            "within the budget"
        )
        return 0
    finally:
        stopping = time.perf_counter()
        for server in servers:
            stop_server(server)
        if servers:
            print(f"servers stopped in {time.perf_counter() - stopping:.1f} s", file=sys.stderr)
        if args.dsn:  # a private cluster is destroyed whole
            try:
                drop_leftovers(admin, server_dsn, control_db, template, drop_group_role=not group_role_existed)
            except Exception as exc:
                print(f"warning: cleanup incomplete ({exc}); drop t_* of run {run_id} by hand", file=sys.stderr)
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1000, help="tenants to provision (default 1000)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per measured run (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent HTTP connections (default 64)")
    parser.add_argument("--rounds", type=int, default=2, help="(a): baseline/routed pairs (default 2)")
    parser.add_argument("--capacity", type=int, default=100, help="CARDVAULT_POOL_CAPACITY (default 100)")
    parser.add_argument("--budget", type=int, default=200, help="CARDVAULT_CONNECTION_BUDGET (default 200)")
    parser.add_argument("--pool-max", type=int, default=2, help="CARDVAULT_POOL_MAX_SIZE (default 2)")
    parser.add_argument(
        "--baseline-transaction", action="store_true", help="(a): baseline wraps its read in BEGIN / COMMIT"
    )
    parser.add_argument("--pattern", choices=("round-robin", "random"), default="round-robin", help="(b) order")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--provision-concurrency", type=int, default=4, help="tenants created at once (default 4)")
    parser.add_argument(
        "--pgbouncer", action="store_true", help="(b) once more with a PgBouncer in front of the server"
    )
    parser.add_argument("--python-client", action="store_true", help="use the asyncio client even if wrk exists")
    parser.add_argument("--dsn", help="superuser DSN of an existing server (default: a private durable cluster)")
    args = parser.parse_args()
    if args.tenants < 1 or args.connections < 1 or args.rounds < 1 or args.duration < 1:
        parser.error("--tenants, --connections, --rounds and --duration must be >= 1")
    args.wrk = None if args.python_client else shutil.which("wrk")
    if args.wrk is None and not args.python_client:
        print(
            "wrk not found: falling back to the asyncio load generator, which shares the 2 cores with the "
            "servers and saturates them less; install wrk for real numbers (apt-get install -y wrk).",
            file=sys.stderr,
        )

    run("cvroute-", args.dsn, lambda server_dsn, home: bench(args, server_dsn, home))


if __name__ == "__main__":
    main()
