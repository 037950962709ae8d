"""``kill -9`` of one of three control-plane processes in the middle of a burst of provisionings and moves.

The victim is the scheduler leader, and it is killed while it demonstrably works: one of its moves has its
copy on the target server and one of its provisionings is running in the ledger. The other two processes
carry on: their own provisionings and moves succeed, one of them becomes the leader and its reconcile job
finishes or undoes the interrupted provisionings; the move upkeep (``cardvault tenants move-upkeep``, the
leader job's command: the job itself runs once a minute) settles the interrupted moves. Then everything
has converged:

- every tenant is active on exactly one server, its database and role there and only there; no orphan
  database or role on either server (a moved tenant's old database is kept, listed as retired);
- no move is half done: no copy, subscription, publication or slot left anywhere, and each move is
  recorded as finished (the registry names its target) or undone (the registry names its source);
- the ledger is complete: nothing ``running``, each provisioning succeeded or rolled back, and every
  request acknowledged before the kill is as it was acknowledged;
- the reconciler finds nothing, and every tenant is served (written and read back) by both survivors.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.integration.cli_support import cli_env, run_cli
from tests.integration.fleet.fleet_support import ADMIN, Fleet, FleetTenant
from tests.integration.fleet.state_support import (
    disagreements,
    leader,
    move_records,
    placements,
    query,
    running_operations,
)
from tests.integration.move_support import card_numbers
from tests.integration.tenant_support import TENANT_ADMIN_PASSWORD, login_tenant_admin, tenant_admin_email

PROVISIONINGS = 15
MOVES = 5
#: Seconds to wait for a leader, for the victim to be at work, and for everything to converge.
LEADER_DEADLINE = 30.0
KILL_DEADLINE = 30.0
CONVERGE_DEADLINE = 120.0

#: What became of one request: its HTTP status, "cut" (the connection broke while it was in flight) or
#: "refused" (the process was gone before it was sent).
Outcome = int | str


async def outcome_of(request: Awaitable[httpx.Response], results: dict[str, Outcome], key: str) -> None:
    try:
        response = await request
    except httpx.ConnectError:
        results[key] = "refused"
    except httpx.TransportError:
        results[key] = "cut"
    else:
        results[key] = response.status_code


def provisioning(client: httpx.AsyncClient, slug: str) -> Awaitable[httpx.Response]:
    body = {"name": slug, "slug": slug, "tier": "professional", "admin_email": tenant_admin_email(slug),
            "admin_password": TENANT_ADMIN_PASSWORD}  # fmt: skip
    return client.post("/admin/tenants", json=body, headers=ADMIN)


async def victim_at_work(fleet: Fleet, moving: list[FleetTenant], provisioning_slugs: set[str]) -> bool:
    """One of ``moving`` has its copy on the target server (``t_<id>_m*``) and one of
    ``provisioning_slugs`` is being provisioned (a ``running`` provision in the ledger)."""

    def check() -> bool:
        copying = False
        for tenant in moving:
            like = f"t\\_{uuid.UUID(tenant.id).hex}\\_m%"
            target = fleet.servers[fleet.other(tenant.server)]
            copying = copying or bool(query(target, "SELECT 1 FROM pg_database WHERE datname LIKE %s", (like,)))
        return copying and any(
            kind == "provision" and slug in provisioning_slugs
            for kind, slug, _ in running_operations(fleet.control_dsn)
        )

    return await asyncio.to_thread(check)


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.02)


@pytest.mark.slow
@pytest.mark.xdist_group("fleet")  # one shared fleet (three processes, two clusters) per run, not per worker
async def test_a_process_killed_mid_burst_leaves_a_fleet_that_converges(fleet: Fleet) -> None:
    async def has_leader() -> bool:
        return await asyncio.to_thread(leader, fleet) is not None

    await until(has_leader, "a process is the scheduler leader", LEADER_DEADLINE)
    victim = leader(fleet)
    assert victim is not None
    v = fleet.processes.index(victim)
    survivors = [i for i in range(len(fleet.processes)) if i != v]

    # The burst: the victim gets a third of the provisionings (one after another, so that one is always in
    # flight) and two of the moves; the survivors the rest, all at once.
    new = [f"burst-{i:02d}" for i in range(PROVISIONINGS)]
    victim_new, survivor_new = new[: PROVISIONINGS // 3], new[PROVISIONINGS // 3 :]
    movers = (fleet.on("default")[:3] + fleet.on("second")[:2])[:MOVES]
    victim_moves, survivor_moves = movers[:2], movers[2:]
    targets = {t.slug: fleet.other(t.server) for t in movers}
    provisioned: dict[str, Outcome] = {}
    moved: dict[str, Outcome] = {}

    async def victim_stream() -> None:
        for slug in victim_new:
            await outcome_of(provisioning(fleet.client(v), slug), provisioned, slug)

    def move(index: int, tenant: FleetTenant) -> Awaitable[httpx.Response]:
        return fleet.client(index).post(
            f"/admin/tenants/{tenant.slug}/move", json={"to": targets[tenant.slug]}, headers=ADMIN
        )

    victim_work = [victim_stream()] + [outcome_of(move(v, t), moved, t.slug) for t in victim_moves]
    survivor_work = [
        outcome_of(provisioning(fleet.client(survivors[i % 2]), slug), provisioned, slug)
        for i, slug in enumerate(survivor_new)
    ] + [outcome_of(move(survivors[i % 2], t), moved, t.slug) for i, t in enumerate(survivor_moves)]
    burst = asyncio.gather(*victim_work, *survivor_work)

    await until(lambda: victim_at_work(fleet, victim_moves, set(victim_new)), "the victim is at work", KILL_DEADLINE)
    await asyncio.to_thread(victim.kill)
    victim_slugs = set(victim_new) | {t.slug for t in victim_moves}
    interrupted = [op for op in running_operations(fleet.control_dsn) if op[1] in victim_slugs]
    await burst
    print(f"\nkilled {victim.name} (the leader) with these of its operations running: {interrupted}")
    print(f"provisionings: {provisioned}\nmoves: {moved}")
    assert any(kind == "move" for kind, _, _ in interrupted), interrupted
    assert "cut" in {moved[t.slug] for t in victim_moves}, moved

    # The survivors' requests were not disturbed by the kill.
    assert {provisioned[s] for s in survivor_new} == {201}, provisioned
    assert {moved[t.slug] for t in survivor_moves} == {200}, moved

    # Convergence: the surviving leader's reconcile job (every 2 s) settles the provisionings; the move
    # upkeep settles the moves.
    env = cli_env(fleet.control_dsn, fleet.template, fleet.tmp_path / "data", CARDVAULT_SPARE_DATABASES="0")
    started = time.monotonic()
    upkeeps: list[str] = []
    while (left := await asyncio.to_thread(disagreements, fleet)) != []:
        assert time.monotonic() - started < CONVERGE_DEADLINE, f"not converged: {left}"
        if any(kind == "move" for kind, _, _ in running_operations(fleet.control_dsn)):
            result = await asyncio.to_thread(run_cli, env, "tenants", "move-upkeep")
            assert result.code == 0, result
            upkeeps.append(result.stdout.strip())
        await asyncio.sleep(0.5)
    print(f"converged {time.monotonic() - started:.1f} s after the kill; move upkeep: {upkeeps}")
    new_leader = leader(fleet)
    assert new_leader is not None and new_leader is not victim, "a survivor took over the leader's jobs"

    # Every request answered before the kill holds; cut ones went either way, consistently.
    placed = placements(fleet.control_dsn)
    for slug, outcome in provisioned.items():
        if outcome == 201:
            assert slug in placed, f"{slug} was acknowledged and is gone"
        elif outcome == "refused":
            assert slug not in placed, f"{slug} was never sent and exists"
    ledger = query(fleet.control_dsn, "SELECT tenant_slug, state FROM tenant_operations WHERE kind = 'provision'")
    provision_states = dict(ledger)
    for slug in new:
        if slug in placed:
            assert provision_states[slug] == "succeeded", (slug, provision_states.get(slug))
        elif slug in provision_states:
            assert provision_states[slug] in ("rolled_back", "failed"), (slug, provision_states[slug])
    latest_first = sorted(move_records(fleet.control_dsn).items(), reverse=True)  # by operation id
    records: dict[str, tuple[str, str, str]] = {}
    for _, (slug, source, target, state) in latest_first:
        records.setdefault(slug, (source, target, state))
    for tenant in movers:
        source, target, state = records[tenant.slug]
        assert (source, target) == (tenant.server, targets[tenant.slug])
        assert placed[tenant.slug].server == {"succeeded": target, "rolled_back": source}[state], (tenant.slug, state)
        if moved[tenant.slug] == 200:
            assert state == "succeeded"
    report = await fleet.client(survivors[0]).post("/admin/reconcile", headers=ADMIN)
    assert report.status_code == 200 and report.json()["findings"] == [], report.text

    # Every tenant is served by both survivors: a write through one is read back through the other, and
    # it is in the database on the server the registry names.
    for slug in [s for s in new if s in placed]:
        body = placed[slug]
        auth = await login_tenant_admin(fleet.client(survivors[0]), slug)
        fleet.tenants[slug] = FleetTenant(slug, body.id, body.server, body.database, auth)
    for tenant in list(fleet.tenants.values()):
        tenant.server = placed[tenant.slug].server
        for writer, reader in (survivors, survivors[::-1]):
            number = f"after-kill-via-p{writer}"
            written = await fleet.client(writer).post(
                f"/t/{tenant.slug}/api/cards", json={"cardnumber": number}, headers=tenant.auth
            )
            assert written.status_code == 201, (tenant.slug, written.text)
            read = await fleet.client(reader).get(
                f"/t/{tenant.slug}/api/cards/{written.json()['id']}", headers=tenant.auth
            )
            assert read.status_code == 200, (tenant.slug, read.text)
        stored = await card_numbers(fleet.servers[tenant.server], tenant.database)
        assert {f"after-kill-via-p{i}" for i in survivors} <= stored, tenant.slug
