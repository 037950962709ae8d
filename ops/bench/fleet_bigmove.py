"""The big move of the fleet benchmark (``fleet.py``): one tenant filled with ~``--move-size-mb`` MB of cards
(``COPY`` straight into its database, the search benchmark's card generator), then moved to the other server
while a writer keeps creating cards through the tenant API: the freeze the move recorded, and the longest
time between two acknowledged writes the writer saw.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fleet_checks import locate, placement, platform_of
from fleet_probe import Writer, errors_by_status, read_back
from fleet_scenarios import STEADY, other_server
from fleet_setup import Fleet
from route_servers import Tenant
from search import cards, load

#: Cards per COPY: the first (which measures a card's bytes with its indexes), and the most of the others.
FIRST_BATCH = 5_000
BATCH = 50_000


def database_size(server_dsn: str, database: str) -> int:
    import psycopg

    with psycopg.connect(server_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(%s)", (database,)).fetchone()
    return int(row[0]) if row else 0


async def fill(fleet: Fleet, tenant: Tenant, size_mb: float) -> tuple[int, int, float]:
    """COPY cards into the tenant's database until it has grown by ``size_mb`` MB: (cards, bytes, seconds).
    Its cards quota is lifted first (the writer must not run into it)."""
    import psycopg

    from controlplane.registry import repository as registry
    from controlplane.registry.models import QuotaType

    async with platform_of(fleet) as (platform, _), platform.control.connection() as conn, conn.transaction():
        await registry.set_quotas(conn, tenant.tenant_id, {QuotaType.CARDS: None})
    server, database = placement(fleet)[tenant.slug]
    server_dsn = fleet.server_dsn(server)
    dsn = psycopg.conninfo.make_conninfo(server_dsn, dbname=database)
    started, t0 = database_size(server_dsn, database), time.perf_counter()
    count, batch, per_card = 0, 0, 0.0
    while (grown := database_size(server_dsn, database) - started) < size_mb * 2**20:
        # The first batch measures the bytes a card takes; the next ones aim at the size left.
        size = FIRST_BATCH if not per_card else min(BATCH, max(1000, int((size_mb * 2**20 - grown) / per_card)))
        rows, _ = cards(size, seed=1000 + batch)
        await asyncio.to_thread(load, dsn, rows, analyze=False)
        count, batch = count + len(rows), batch + 1
        per_card = max(1.0, (database_size(server_dsn, database) - started) / count)
    await asyncio.to_thread(load, dsn, [], analyze=True)
    return count, database_size(server_dsn, database) - started, time.perf_counter() - t0


async def big_move(fleet: Fleet, tenant: Tenant, size_mb: float) -> dict[str, Any]:
    filled, grown, fill_s = await fill(fleet, tenant, size_mb)
    print(f"big move: {filled} cards COPYed into {tenant.slug} (+{grown / 2**20:.0f} MB) in {fill_s:.1f} s")
    writer = Writer(lambda: fleet.processes, [tenant], workers=2)
    writer.start()
    try:
        await asyncio.sleep(STEADY)
        to = other_server(placement(fleet)[tenant.slug][0])
        t0 = time.monotonic()
        response = await fleet.admin(fleet.processes[0], "POST", f"/admin/tenants/{tenant.slug}/move", {"to": to})
        t1 = time.monotonic()
        await asyncio.sleep(1.0)
        end = time.monotonic()
    finally:
        await writer.stop()
    if response.status_code != 200:
        raise RuntimeError(f"the big move failed: {response.status_code} {response.text[:300]}")
    seen = writer.window(t0, end)
    lost = await read_back(writer, locate(fleet))
    return {
        "cards": filled,
        "database_mb": round(grown / 2**20, 1),
        "fill_s": round(fill_s, 1),
        "move_s": round(t1 - t0, 2),
        "freeze_ms": float(response.json()["freeze_ms"]),
        "longest_write_gap_ms": round(writer.longest_gap(tenant.slug, t0, end) * 1000, 1),
        "writes": len(seen),
        "write_errors_by_status": errors_by_status(seen),
        "acknowledged": len(writer.acked_at),
        "lost": len(lost),
    }
