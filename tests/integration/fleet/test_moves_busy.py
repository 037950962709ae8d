"""Busy tenants moved between the two servers while writers hammer them through every process.

Two tenants of each server move to the other one, a move in each direction at a time (each request sent to
another process), while three writers per tenant (one per process) create cards back to back and a light
load keeps the other tenants busy:

- every move succeeds; its write freeze (``freeze_ms`` of the move, and the longest gap between two
  acknowledged writes as the clients saw it) is reported and bounded;
- writes are only ever acknowledged or refused with 503 ``tenant_unavailable`` (the freeze); after each
  move every process writes to the tenant at its new place;
- no acknowledged write is lost: each is in the tenant's database on its new server;
- nothing of the moves is left but the retired source databases: no slot, subscription or publication, and
  the reconciler finds nothing; the other tenants' requests all succeeded meanwhile.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from tests.integration.fleet.fleet_support import ADMIN, Fleet, FleetTenant
from tests.integration.fleet.load_support import Load, Writer, longest_gap, summarize
from tests.integration.fleet.state_support import disagreements, placements
from tests.integration.move_support import card_numbers, databases_of

#: Tenants moved from each server.
BUSY_PER_SERVER = 2
#: A move's write freeze stays under this (a loose bound for a loaded CI machine; it is ~0.1-0.5 s).
FREEZE_BOUND_MS = 5000.0
#: Writes each writer must have acknowledged after its tenant's move (so every process served it there).
AFTER_MOVE = 3


@pytest.mark.slow
@pytest.mark.xdist_group("fleet")  # one shared fleet (three processes, two clusters) per run, not per worker
async def test_busy_tenants_move_between_servers_and_no_acknowledged_write_is_lost(fleet: Fleet) -> None:
    outbound, inbound = fleet.on("default")[:BUSY_PER_SERVER], fleet.on("second")[:BUSY_PER_SERVER]
    busy = outbound + inbound
    origin = {t.slug: t.server for t in busy}
    target = {t.slug: fleet.other(t.server) for t in busy}
    others = [t for t in fleet.tenants.values() if t.slug not in origin]
    writers = {t.slug: [Writer(fleet, t, p) for p in range(len(fleet.processes))] for t in busy}
    background = Load(fleet, others, prefix="beside-moves", workers=2, max_requests=20_000, duration=120)
    results: dict[str, dict[str, Any]] = {}
    windows: dict[str, tuple[float, float]] = {}

    async def move(index: int, tenant: FleetTenant) -> None:
        sent = time.monotonic()
        response = await fleet.client(index).post(
            f"/admin/tenants/{tenant.slug}/move", json={"to": target[tenant.slug]}, headers=ADMIN
        )
        windows[tenant.slug] = (sent, time.monotonic())
        assert response.status_code == 200, (tenant.slug, response.text)
        results[tenant.slug] = response.json()
        for writer in writers[tenant.slug]:
            await writer.acknowledged_more(AFTER_MOVE)

    for writer in (w for group in writers.values() for w in group):
        writer.start()
    background.start()
    try:
        for writer in (w for group in writers.values() for w in group):
            await writer.acknowledged_more(AFTER_MOVE)
        for i, pair in enumerate(zip(outbound, inbound, strict=True)):  # one move each way at a time
            await asyncio.gather(*(move(2 * i + j, tenant) for j, tenant in enumerate(pair)))
    finally:
        for writer in (w for group in writers.values() for w in group):
            await writer.stop()
        await background.stop()

    print(f"\nmoves of {len(busy)} busy tenants, {len(fleet.processes)} writers each (one per process):")
    for tenant in busy:
        done = results[tenant.slug]
        acks = [moment for w in writers[tenant.slug] for _, moment in w.acknowledged]
        gap = longest_gap(acks, *windows[tenant.slug])
        refused = sum(w.refused for w in writers[tenant.slug])
        print(f"  {tenant.slug} {done['from_server']} -> {done['to_server']}: freeze {done['freeze_ms']} ms "
              f"(clients saw {gap * 1000:.0f} ms without an acknowledged write; {refused} writes refused), "
              f"move took {windows[tenant.slug][1] - windows[tenant.slug][0]:.2f} s")  # fmt: skip
        assert (done["state"], done["from_server"], done["to_server"]) == (
            "succeeded", origin[tenant.slug], target[tenant.slug],
        ), done  # fmt: skip
        assert 0 < done["freeze_ms"] < FREEZE_BOUND_MS, done
        for writer in writers[tenant.slug]:
            assert writer.wrong == [], writer.wrong[:5]
    print(f"  beside the moves: {summarize(background.samples).line()}")
    failed = [s for s in background.samples if not s.ok]
    assert not failed, failed[:5]

    # Every acknowledged write is on the new server; the source's database is retired there, nothing else.
    placed = placements(fleet.control_dsn)
    for tenant in busy:
        assert placed[tenant.slug].server == target[tenant.slug]
        acknowledged = {number for w in writers[tenant.slug] for number, _ in w.acknowledged}
        stored = await card_numbers(fleet.servers[target[tenant.slug]], tenant.database)
        assert acknowledged <= stored, f"{tenant.slug} lost {sorted(acknowledged - stored)[:5]}"
        left = databases_of(fleet.servers[origin[tenant.slug]], uuid.UUID(tenant.id))
        assert len(left) == 1 and next(iter(left)).startswith(f"t_{uuid.UUID(tenant.id).hex}_p"), left
    assert await asyncio.to_thread(disagreements, fleet) == []
    report = await fleet.client(1).post("/admin/reconcile", headers=ADMIN)
    assert report.status_code == 200 and report.json()["findings"] == [], report.text
