"""A PostgreSQL server restarted under load through three control-plane processes.

A bounded load (writes and reads of every tenant, through every process) runs while server ``second`` is
stopped for a few seconds and started again:

- the load's figures (requests per second, p50/p99, errors) are reported before, during and after;
- the tenants of ``default`` are served throughout: every one of their requests succeeds;
- while ``second`` is down its tenants get a fast 503 ``tenant_unavailable`` (JSON) from every process,
  never a hang, a 500 or a dropped connection;
- once it is back, every process serves them again by itself (no process is restarted), and admin work
  on that server (a reconcile) succeeds through every process at the first attempt;
- every write acknowledged (201) before, during or after is in the tenant's database, and no write refused
  while the server was down is.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from controlplane.pools.lifecycle import RECONNECT_TIMEOUT
from tests.integration.fleet.fleet_support import Fleet, FleetTenant
from tests.integration.fleet.load_support import Load, Sample, summarize
from tests.integration.move_support import card_numbers

#: Seconds the server stays down.
OUTAGE = 3.0
#: A 503 while the server is down comes at once (connections are refused): well under this, per request.
FAST_FAIL = 2.0
#: No request of the down server's tenants hangs: the pools answer within their connect and reconnect
#: timeouts (``CARDVAULT_CONNECT_TIMEOUT=2`` for these processes), plus slack.
NO_HANG = 2.0 + RECONNECT_TIMEOUT + 5.0
#: Seconds every process may take to serve the server's tenants again after it is back.
RECOVERY_DEADLINE = 60.0


async def served_again(fleet: Fleet, tenants: list[FleetTenant]) -> float:
    """Wait until every process serves every one of ``tenants`` (a 200 for its cards); the seconds it took."""
    started = time.monotonic()

    async def served(index: int, tenant: FleetTenant) -> None:
        while True:
            response = await fleet.client(index).get(f"/t/{tenant.slug}/api/cards", headers=tenant.auth)
            if response.status_code == 200:
                return
            assert response.status_code == 503, response.text
            assert time.monotonic() - started < RECOVERY_DEADLINE, f"{tenant.slug} not served by p{index}"
            await asyncio.sleep(0.05)

    await asyncio.gather(*(served(i, t) for i in range(len(fleet.processes)) for t in tenants))
    return time.monotonic() - started


def described(samples: list[Sample]) -> str:
    return "; ".join(f"{s.slug} via p{s.process}: {s.status} {s.error} in {s.latency:.2f} s" for s in samples[:10])


@pytest.mark.slow
@pytest.mark.xdist_group("fleet")  # one shared fleet (three processes, two clusters) per run, not per worker
async def test_a_server_restart_under_load_fails_only_its_tenants_fast_and_loses_no_write(fleet: Fleet) -> None:
    down, up = fleet.on("second"), fleet.on("default")
    down_slugs = {t.slug for t in down}
    pids = [p.pid for p in fleet.processes]
    # Interleaved, so that each worker reaches both servers.
    mixed = [t for pair in itertools.zip_longest(down, up) for t in pair if t is not None]
    load = Load(fleet, mixed, prefix="restart", workers=6, max_requests=20_000, duration=90)
    load.start()
    try:
        await asyncio.sleep(2.0)
        stopping = time.monotonic()
        await asyncio.to_thread(fleet.second.stop)
        down_from = time.monotonic()
        await asyncio.sleep(OUTAGE)
        up_from = time.monotonic()
        await asyncio.to_thread(fleet.second.start)
        recovery = await served_again(fleet, down)
        recovered = time.monotonic()
        await asyncio.sleep(2.0)
    finally:
        await load.stop()

    samples = load.samples
    before = [s for s in samples if s.answered < stopping]
    during = [s for s in samples if s.sent >= down_from and s.answered <= up_from]
    after = load.since(recovered)
    print(f"\nload through {len(fleet.processes)} processes, {len(load.tenants)} tenants on 2 servers")
    for label, part in (("before", before), ("outage", during), ("after", after), ("whole run", samples)):
        print(f"  {label}: {summarize(part).line()}")
    print(f"  every process served second's tenants again {recovery:.2f} s after its start returned")
    assert before and after, "the load ran before and after the outage"

    # The other server's tenants never noticed.
    failed = [s for s in samples if s.slug not in down_slugs and not s.ok]
    assert not failed, f"{len(failed)} failed requests of default's tenants: {described(failed)}"

    # The down server's tenants: a fast JSON 503 from every process while it was down; never anything but
    # an answer or a 503, and never a hang, at any time.
    outage = [s for s in during if s.slug in down_slugs]
    assert {s.process for s in outage} == set(range(len(fleet.processes))), "every process saw the outage"
    wrong = [s for s in outage if (s.status, s.error) != (503, "tenant_unavailable") or s.latency >= FAST_FAIL]
    assert not wrong, f"{len(wrong)} of {len(outage)} requests during the outage: {described(wrong)}"
    slowest = max(s.latency for s in outage)
    print(f"  outage: {len(outage)} requests of second's tenants, all 503 tenant_unavailable, slowest {slowest:.3f} s")
    odd = [s for s in samples if (s.slug in down_slugs and not (s.ok or s.status == 503)) or s.latency >= NO_HANG]
    assert not odd, f"requests neither served nor refused with 503, or hung: {described(odd)}"

    # Nobody restarted anything, and the load's writes to the down tenants resumed on every process.
    assert [p.pid for p in fleet.processes] == pids and all(p.alive() for p in fleet.processes)
    resumed = {s.process for s in after if s.slug in down_slugs and s.kind == "write" and s.ok}
    assert resumed == set(range(len(fleet.processes))), resumed
    # Admin work on the restarted server succeeds at once through every process: no connection that died
    # with the old server process fails it (a reconcile reaches every server and reports what it finds).
    for index in range(len(fleet.processes)):
        report = await fleet.admin("POST", "/admin/reconcile", via=index)
        assert (report.status_code, report.json()["findings"]) == (200, []), (f"p{index}", report.text)

    # Every acknowledged write is in its tenant's database; none refused while the server was down is.
    refused = {(s.slug, s.number) for s in outage if s.kind == "write"}
    assert refused, "writes were refused during the outage"
    for group in (down, up):
        assert any(load.acknowledged.get(t.slug) for t in group), "writes of each server were acknowledged"
    for tenant in down + up:
        stored = await card_numbers(fleet.servers[tenant.server], tenant.database)
        acknowledged = load.acknowledged.get(tenant.slug, set())
        assert acknowledged <= stored, f"{tenant.slug} lost {sorted(acknowledged - stored)[:5]}"
        assert not {number for slug, number in refused if slug == tenant.slug} & stored
