"""Fleet benchmark: two PostgreSQL servers, three ``cardvault serve`` processes, load, and faults under it.

    .venv/bin/python ops/bench/fleet.py [--tenants 1000] [--duration 10] [--move-size-mb 100] [--json]

Starts two private durable PostgreSQL clusters: the first holds the control database and is the registered
server ``default``, the second is registered as ``second`` through ``POST /admin/servers``. ``--tenants``
tenants are provisioned on each (``route_servers.provision``: through the service, a first admin and one
card each), three ``cardvault serve`` processes share the control database (reconciler and the sweeping jobs
off: the bench settles crashes itself and times that), and every tenant's admin logs in.

Load: GET one card per tenant, round-robin over all tenants, ``--connections`` split over the processes
(``wrk`` if installed, else ``route_load``'s asyncio client), for ``--duration`` seconds:
  baseline  the bare Litestar + psycopg pool app of ``route.py`` on one hot tenant (``route_servers.py``),
  one       one ``cardvault serve``, all tenants,
  three     the three processes at once, all tenants (one load generator per process; p99: the worst),
in turn, ``--rounds`` times: the median of each, and its ratio to the baseline.
Then, while that load keeps running in 2 s chunks and a writer keeps creating cards on 5 busy tenants per
server (``--writers`` requests at a time, through every live process):
  (1) the ``second`` server (not the control database's) is crashed (``pg_ctl stop -m immediate``; with
      ``--restart fast``, shut down cleanly) and started again: its busy tenants' errors and the seconds
      until each took writes again, the other server's tenants' errors (must be 0);
  (2) ``cardvault serve`` #3 is SIGKILLed during a burst of ``--burst-provisions`` provisionings and 20
      moves (one move into each server at a time: see ``fleet_scenarios``), 0.5 s after a move it runs is
      in the ledger, and restarted at once. From the kill on, the bench runs the reconciler and the move
      upkeep once a second (what the leader's jobs do on their timers) until the rest of the burst is done,
      the ledger has nothing running, the reconciler finds nothing and no tenant is half-moved (its
      database not on exactly the server the registry names, or a move's copy, slot or subscription left):
      seconds from the kill;
  (3) the 10 busy tenants are moved to the other server one after another: the write freeze each move
      recorded (min/median/max) and the longest gap between acknowledged writes of the moved tenant.
Every acknowledged write is read back from its tenant's database afterwards (lost must be 0).
  (4) ``--move-size-mb`` (0: skipped): one tenant filled with that many MB of cards by COPY, moved with a
      writer on it (no background load): the freeze and the longest gap between acknowledged writes;
      the issue's goal is under one second.

Prints a table at the end (``--json``: the results as JSON instead). Exits 1 if a write acknowledged is
lost, the other server's tenants saw errors, the fleet did not converge, or the big move missed the goal.
Everything listens on 127.0.0.1; both clusters are destroyed at the end (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

SELF = Path(__file__).resolve()
ROOT = SELF.parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(SELF.parent))

from fleet_bigmove import big_move  # noqa: E402
from fleet_checks import check, locate  # noqa: E402
from fleet_probe import BackgroundLoad, Writer, combined, errors_by_status, read_back  # noqa: E402
from fleet_report import report, verdict  # noqa: E402
from fleet_scenarios import STEADY, kill_during_burst, move_busy, restart_server  # noqa: E402
from fleet_setup import SERVER_NAMES, Fleet, build  # noqa: E402
from harness import free_port, run_clusters, server_env  # noqa: E402
from route_load import run_load  # noqa: E402
from route_servers import start_server, stop_server, wait_ready  # noqa: E402

#: Busy tenants (the writer's) per server, and tenants per server the burst moves.
BUSY_PER_SERVER = 5
MOVERS_PER_SERVER = 10


async def measure_load(args: argparse.Namespace, fleet: Fleet, home: Path) -> dict[str, Any]:
    """Baseline, one process and three processes in turn, ``--rounds`` times (each after a 1 s warm-up once):
    the median of each."""
    hot = fleet.tenants["default"][0]
    everyone = [t.request for t in fleet.all_tenants]
    env = server_env({"CVBENCH_BASELINE_DSN": hot.dsn, "CVBENCH_POOL_MAX_SIZE": str(args.pool_max),
                      "CVBENCH_BASELINE_AUTOCOMMIT": "1", "CVBENCH_LOG_LEVEL": "WARNING"})  # fmt: skip
    port = free_port()
    baseline = start_server("baseline", [sys.executable, str(SELF.parent / "route_servers.py"), str(port)], env,
                            home, port)  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "one": [], "three": []}
    try:
        wait_ready(baseline)
        three = BackgroundLoad(args, home, lambda: fleet.processes, everyone)
        await run_load(args, home, baseline, [hot.request], 1, "round-robin")
        await run_load(args, home, fleet.processes[0], everyone, 1, "round-robin")
        await three.once(1)
        for i in range(args.rounds):
            base = await run_load(args, home, baseline, [hot.request], args.duration, "round-robin")
            print(base.line(f"round {i + 1} baseline"))
            one = await run_load(args, home, fleet.processes[0], everyone, args.duration, "round-robin")
            print(one.line(f"round {i + 1} one process"))
            all_three = combined(await three.once(args.duration))
            print(f"  round {i + 1} three processes {all_three['rps']:9.0f} req/s  p50 {all_three['p50_ms']:7.2f} ms  "
                  f"p99 {all_three['p99_ms']:7.2f} ms  (errors {all_three['errors']:.0f})")  # fmt: skip
            runs["baseline"].append(combined([base]))
            runs["one"].append(combined([one]))
            runs["three"].append(all_three)
    finally:
        stop_server(baseline)
    labels = {
        "baseline": "bare Litestar + psycopg pool, one hot tenant (route.py's baseline)",
        "one": f"one cardvault serve, {len(everyone)} tenants round-robin",
        "three": f"three cardvault serve, {len(everyone)} tenants round-robin",
    }
    return {key: {"label": labels[key], **medians(values)} for key, values in runs.items()}


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 2) for key in runs[0]}


async def scenarios(args: argparse.Namespace, fleet: Fleet, home: Path) -> dict[str, Any]:
    default, second = (fleet.tenants[name] for name in SERVER_NAMES)
    busy = default[1 : 1 + BUSY_PER_SERVER] + second[1 : 1 + BUSY_PER_SERVER]
    first_mover = 1 + BUSY_PER_SERVER
    movers = (
        default[first_mover : first_mover + MOVERS_PER_SERVER] + second[first_mover : first_mover + MOVERS_PER_SERVER]
    )
    everyone = [t.request for t in fleet.all_tenants]
    writer = Writer(lambda: fleet.processes, busy, workers=args.writers)
    results: dict[str, Any] = {}
    windows: dict[str, tuple[float, float]] = {}
    writer.start()
    try:
        await asyncio.sleep(STEADY)
        steps: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
            ("restart", lambda: restart_server(fleet, writer, "second", immediate=args.restart == "immediate")),
            ("kill", lambda: kill_during_burst(args, fleet, movers)),
            ("moves", lambda: move_busy(fleet, writer, busy)),
        ]
        for name, scenario in steps:
            load = BackgroundLoad(args, home, lambda: fleet.processes, everyone)
            t0 = time.monotonic()
            async with load.running():
                results[name] = await scenario()
            windows[name] = (t0, time.monotonic())
            results[name]["background_load"] = {k: round(v, 2) for k, v in load.summary().items()}
            seen = writer.window(*windows[name])
            results[name]["busy_writes"] = len(seen)
            results[name]["busy_write_errors_by_status"] = errors_by_status(seen)
            print(f"({len(results)}) {name}: {json.dumps(results[name])}")
    finally:
        await writer.stop()
    lost = await read_back(writer, locate(fleet))
    for name, (t0, t1) in windows.items():
        results[name]["acknowledged"] = sum(1 for at in writer.acked_at.values() if t0 <= at <= t1)
        results[name]["lost"] = sum(1 for n in lost if t0 <= writer.acked_at[n] <= t1)
    results["acknowledged"], results["lost"] = len(writer.acked_at), len(lost)
    final = await check(fleet)
    results["final"] = {"converged": final.converged, "findings": final.findings[:10],
                        "half_moved": final.half_moved[:10]}  # fmt: skip
    return results


async def bench(args: argparse.Namespace, clusters: list[Any], home: Path) -> int:
    """The whole run; with ``--json`` its progress goes to stderr and only the JSON to stdout."""
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        results = await measure(args, clusters, home)
    failures = verdict(results)
    if args.json:
        print(json.dumps({**results, "failures": failures}, indent=2), file=stdout)
    else:
        print()
        print(report(results))
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr if args.json else stdout)
        return 1
    print("all checks met", file=sys.stderr if args.json else stdout)
    return 0


async def measure(args: argparse.Namespace, clusters: list[Any], home: Path) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(clusters[0].dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('server_version'), current_setting('fsync'), "
                           "current_setting('max_logical_replication_workers')").fetchone()  # fmt: skip
    assert row is not None
    load_name = f"wrk ({args.wrk})" if args.wrk else "asyncio client (wrk not found)"
    info = {"postgresql": row[0], "fsync": row[1], "max_logical_replication_workers": row[2],
            "tenants_per_server": args.tenants, "connections": args.connections, "duration_s": args.duration,
            "rounds": args.rounds, "load": load_name}  # fmt: skip
    print(f"2 servers: PostgreSQL {row[0]}, fsync={row[1]}; load: {load_name}, {args.connections} connections")
    fleet: Fleet | None = None
    try:
        fleet = await build(args, clusters, home)
        results: dict[str, Any] = {"setup": info}
        results["load"] = await measure_load(args, fleet, home)
        results |= await scenarios(args, fleet, home)
        if args.move_size_mb > 0:
            big = fleet.tenants["default"][-1]
            results["big_move"] = await big_move(fleet, big, args.move_size_mb)
            print(f"(4) big move: {json.dumps(results['big_move'])}")
        return results
    finally:
        if fleet is not None:
            stopping = time.perf_counter()
            fleet.stop_all()
            print(f"processes stopped in {time.perf_counter() - stopping:.1f} s", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1000, help="tenants per server (default 1000, at least 17)")
    parser.add_argument("--duration", type=float, default=10, help="seconds of each measured load run (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="load runs of each kind, alternating (default 2)")
    parser.add_argument("--connections", type=int, default=48, help="concurrent HTTP connections (default 48)")
    parser.add_argument("--writers", type=int, default=4, help="writes in flight on the busy tenants (default 4)")
    parser.add_argument("--burst-provisions", type=int, default=50, help="provisionings in the burst (default 50)")
    parser.add_argument("--burst-concurrency", type=int, default=6, help="burst requests at once (default 6)")
    parser.add_argument(
        "--restart",
        choices=("immediate", "fast"),
        default="immediate",
        help="(1): pg_ctl stop mode of the server restart: immediate (a crash; default) or fast (clean)",
    )
    parser.add_argument("--move-size-mb", type=float, default=100, help="size of the big move's tenant (0: skip)")
    parser.add_argument("--capacity", type=int, default=100, help="CARDVAULT_POOL_CAPACITY per process (default 100)")
    parser.add_argument("--budget", type=int, default=80, help="CARDVAULT_CONNECTION_BUDGET per process (default 80)")
    parser.add_argument("--pool-max", type=int, default=2, help="CARDVAULT_POOL_MAX_SIZE (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads per process's load (default 2)")
    parser.add_argument("--provision-concurrency", type=int, default=4, help="tenants created at once (default 4)")
    parser.add_argument("--python-client", action="store_true", help="use the asyncio client even if wrk exists")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    args = parser.parse_args()
    if args.tenants < 1 + BUSY_PER_SERVER + MOVERS_PER_SERVER + 1 or args.duration < 1 or args.connections < 3:
        parser.error("--tenants must be >= 17, --duration >= 1, --connections >= 3")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    args.wrk = None if args.python_client else shutil.which("wrk")
    run_clusters("cvfleet-", 2, lambda clusters, home: bench(args, clusters, home))


if __name__ == "__main__":
    main()
