"""(b) of the routing benchmark (``route.py``): GET one card per tenant over every tenant through the
capacity-bounded pools (and, with ``--pgbouncer``, once more through a PgBouncer in front of the server),
with the pool hit ratio from ``GET /admin/pools`` and the peak tenant connections the server sees."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from route_load import POLL_INTERVAL, ConnectionPeak, LoadResult, run_load
from route_servers import RoutedStats, Server

#: Floors (never above the budget, no errors, and): p99 of a spread run straight to the server under this
#: many ms (every miss opens a PostgreSQL backend: see the README); through PgBouncer at least this many
#: requests per second (3x the 90 of issue 11's first measurement) and p99 under this many ms.
SPREAD_P99_FLOOR_MS = 750.0
PGBOUNCER_RPS_FLOOR = 270.0
PGBOUNCER_P99_FLOOR_MS = 400.0


@dataclasses.dataclass
class Spread:
    """(b): one run over every tenant."""

    load: LoadResult
    peak: ConnectionPeak
    hit_ratio: float | None
    pools_after: dict[str, Any] | None


async def spread_run(
    args: argparse.Namespace,
    home: Path,
    routed: Server,
    stats: RoutedStats,
    requests: list[str],
    server_dsn: str,
    max_connections: int,
    how: str,
) -> Spread:
    print(
        f"(b) GET one card per tenant{how}, {args.pattern} over {len(requests)} tenants, pool capacity "
        f"{args.capacity}, budget {args.budget} connections, {args.pool_max} per tenant, after a 2 s warm-up:"
    )
    # Like (a), the steady state: not the first burst of 64 cold requests at once.
    await run_load(args, home, routed, requests, 2, args.pattern)
    before = stats.read()
    peak = ConnectionPeak(server_dsn)
    async with peak.sampling():
        load = await run_load(args, home, routed, requests, args.duration, args.pattern)
    after = stats.read()
    print(load.line("routed, all tenants"))
    hit_ratio: float | None = None
    if before and after:
        hits = after["pools"]["hits"] - before["pools"]["hits"]
        misses = after["pools"]["misses"] - before["pools"]["misses"]
        evictions = after["pools"]["evictions"] - before["pools"]["evictions"]
        hit_ratio = hits / (hits + misses) if hits + misses else 0.0
        print(
            f"  pool hits {hits}, misses {misses} (hit ratio {hit_ratio:.1%}), evictions {evictions}; "
            f"open pools after: {after['pools']['open_pools']}, connections open "
            f"{after['pools']['connections_open']}"
        )
    else:
        print("  pool hit ratio: not measured (the service has no GET /admin/pools)")
    print(
        f"  peak tenant connections on the server: {peak.peak_tenant} (budget {args.budget}; "
        f"{peak.samples} samples every {POLL_INTERVAL * 1000:.0f} ms); peak client backends "
        f"{peak.peak_total} of max_connections {max_connections}"
    )
    return Spread(load, peak, hit_ratio, after["pools"] if after else None)


def spread_failures(spread: Spread, budget: int, label: str, p99_floor_ms: float, rps_floor: float = 0.0) -> list[str]:
    load, failures = spread.load, []
    if load.rps < rps_floor:
        failures.append(f"{label} {load.rps:.0f} req/s < {rps_floor:.0f}")
    if load.p99_ms >= p99_floor_ms:
        failures.append(f"{label} p99 {load.p99_ms:.0f} ms >= {p99_floor_ms:.0f} ms")
    if load.error_count:
        failures.append(f"{label} {load.error_count} errors: {load.errors}")
    if spread.peak.peak_tenant > budget:
        failures.append(f"{label} {spread.peak.peak_tenant} connections > budget {budget}")
    return failures


def spread_row(spread: Spread, label: str, budget: int) -> str:
    load = spread.load
    hits = f"{spread.hit_ratio:.1%}" if spread.hit_ratio is not None else "n/a"
    return (
        f"| {label} | {load.rps:.0f} | {load.p50_ms:.2f} | {load.p99_ms:.2f} | errors {load.error_count}, pool hit "
        f"ratio {hits}, peak connections {spread.peak.peak_tenant} / budget {budget} |"
    )
