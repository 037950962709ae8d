"""The fault scenarios of the fleet benchmark (``fleet.py``), each run while the background load and the
``Writer`` keep the fleet busy: a PostgreSQL server restarted, a ``cardvault serve`` process killed during a
burst of provisionings and moves, busy tenants moved between the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import statistics
import time
import uuid
from typing import Any

import httpx
import psycopg
from fleet_checks import placement, settle
from fleet_probe import Writer, errors_by_status, live
from fleet_setup import SERVER_NAMES, Fleet
from route_servers import Tenant

#: Seconds of steady writes before a fault, and the most a server may take to be served again.
STEADY = 2.0
RECOVERY_TIMEOUT = 60.0
#: Most seconds a restarted server may take to accept connections again.
START_TIMEOUT = 900.0
#: Moves into one server at a time during the burst (see ``kill_during_burst``).
MOVES_PER_TARGET = 1
#: Seconds a move on the victim process runs (from its ledger row) before the process is killed.
KILL_AFTER = 0.5
RUNNING_MOVE = "SELECT 1 FROM tenant_operations WHERE tenant_slug = %s AND kind = 'move' AND state = 'running'"


def other_server(name: str) -> str:
    return SERVER_NAMES[1 - SERVER_NAMES.index(name)]


def start_again(cluster: Any) -> None:
    """Start a stopped cluster and wait until it accepts connections. ``pg_ctl start -w`` gives up after 60 s;
    a crash recovery that fsyncs thousands of tenant databases' files first may take longer: then the
    server, still starting, is waited for here (up to ``START_TIMEOUT``)."""
    from controlplane.localpg.system import LocalClusterError

    try:
        cluster.ensure_running()
        return
    except LocalClusterError:
        pass
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            psycopg.connect(cluster.dsn(), connect_timeout=5).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


async def restart_server(fleet: Fleet, writer: Writer, name: str, *, immediate: bool) -> dict[str, Any]:
    """PostgreSQL server ``name`` stopped (``immediate``: ``pg_ctl stop -m immediate``, a crash, recovery on
    start; else ``-m fast``, a clean shutdown) and started again: errors of its tenants and of the other
    server's, seconds until every one of its busy tenants took writes again (from the stop)."""
    group_of = fleet.group_of()
    mine = {t.slug for t in writer.tenants if group_of[t.slug] == name}
    others = {t.slug for t in writer.tenants} - mine
    cluster = fleet.clusters[SERVER_NAMES.index(name)]
    await asyncio.sleep(STEADY)
    t_stop = time.monotonic()
    await asyncio.to_thread(cluster.stop, immediate=immediate)
    t_down = time.monotonic()
    await asyncio.to_thread(start_again, cluster)
    t_up = time.monotonic()
    while time.monotonic() < t_up + RECOVERY_TIMEOUT:
        if {o.slug for o in writer.window(t_up, time.monotonic(), mine) if o.ok} >= mine:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # a second more of writes to both servers' tenants
    end = time.monotonic()
    served_again = 0.0
    for slug in mine:
        seen = writer.window(t_stop, end, {slug})
        last_failure = max((o.at for o in seen if not o.ok), default=t_stop)
        first_ok = min((o.at for o in seen if o.ok and o.at >= last_failure), default=end)
        served_again = max(served_again, first_ok - t_stop)
    mine_seen, others_seen = writer.window(t_stop, end, mine), writer.window(t_stop, end, others)
    return {
        "server": name,
        "mode": "immediate" if immediate else "fast",
        "stop_s": round(t_down - t_stop, 3),
        "start_s": round(t_up - t_down, 3),
        "served_again_s": round(served_again, 3),
        "served_again_after_start_s": round(served_again - (t_up - t_stop), 3),
        "its_tenants_writes": len(mine_seen),
        "its_tenants_errors": sum(1 for o in mine_seen if not o.ok),
        "its_tenants_errors_by_status": errors_by_status(mine_seen),
        "other_tenants_writes": len(others_seen),
        "other_tenants_errors": sum(1 for o in others_seen if not o.ok),
        "other_tenants_errors_by_status": errors_by_status(others_seen),
    }


async def kill_during_burst(
    args: argparse.Namespace, fleet: Fleet, movers: list[Tenant], victim: int = 2
) -> dict[str, Any]:
    """``--burst-provisions`` tenant creations (``POST /admin/tenants``) and a move of each of ``movers`` to the
    other server, ``--burst-concurrency`` requests at a time, each kind round-robin over the live processes;
    process ``victim`` gets SIGKILL ``KILL_AFTER`` s after a move it runs is in the ledger (and is
    restarted at once, as a supervisor would). From the kill on, the bench settles the fleet once a second
    (``fleet_checks.settle``): seconds from the kill until it is consistent, and what was left."""
    run = uuid.uuid4().hex[:6]
    where = placement(fleet)
    jobs: list[tuple[str, str, str]] = [("provision", f"fb{run}-{i}", "") for i in range(args.burst_provisions)]
    step = max(1, len(jobs) // max(1, len(movers)))
    for i, tenant in enumerate(movers):  # moves spread evenly among the provisionings
        jobs.insert(min(len(jobs), i * (step + 1)), ("move", tenant.slug, other_server(where[tenant.slug][0])))
    gate = asyncio.Semaphore(args.burst_concurrency)
    # One move at a time into each server: a move holds one of the target's logical replication workers
    # (max_logical_replication_workers, 4 by default) for its apply worker and needs more for the initial
    # table copies; more moves into one server than that starve each other until their sync timeout.
    into = {name: asyncio.Semaphore(MOVES_PER_TARGET) for name in SERVER_NAMES}
    turns = {"provision": itertools.count(), "move": itertools.count()}
    results: list[tuple[str, int]] = []
    refused: list[str] = []  # the first answers other than 201 / 200
    killed = asyncio.Event()
    t0 = time.monotonic()
    t_kill = 0.0
    restart: asyncio.Future[Any] | None = None

    def kill() -> None:
        nonlocal t_kill, restart
        if killed.is_set():
            return
        killed.set()
        t_kill = time.monotonic()
        os.kill(fleet.processes[victim].proc.pid, signal.SIGKILL)
        restart = asyncio.ensure_future(asyncio.to_thread(fleet.start_process, victim))

    async def kill_later(slug: str) -> None:
        """Kill the victim once the move of ``slug`` it runs is in the ledger, ``KILL_AFTER`` s later."""
        async with await psycopg.AsyncConnection.connect(fleet.control_dsn, autocommit=True) as conn:
            while slug in running_on_victim:
                cur = await conn.execute(RUNNING_MOVE, (slug,))
                if await cur.fetchone():
                    await asyncio.sleep(KILL_AFTER)
                    if slug in running_on_victim:
                        kill()
                    return
                await asyncio.sleep(0.05)

    running_on_victim: set[str] = set()
    killers: set[asyncio.Future[None]] = set()

    async def one(kind: str, slug: str, to: str) -> None:
        async with contextlib.AsyncExitStack() as stack:
            if to:
                await stack.enter_async_context(into[to])
            await stack.enter_async_context(gate)
            servers = live(fleet.processes)
            server = servers[next(turns[kind]) % len(servers)]
            on_victim = fleet.processes.index(server) == victim and not killed.is_set()
            if kind == "provision":
                body: dict[str, Any] = {"name": f"Burst {slug}", "slug": slug, "tier": "starter"}
                path = "/admin/tenants"
            else:
                body, path = {"to": to}, f"/admin/tenants/{slug}/move"
                if on_victim:
                    running_on_victim.add(slug)
                    killers.add(asyncio.ensure_future(kill_later(slug)))
            try:
                response = await fleet.admin(server, "POST", path, body)
                status = response.status_code
                if status not in (200, 201) and len(refused) < 10:
                    refused.append(f"{kind} {slug}: {status} {response.text[:160]}")
            except httpx.HTTPError:
                status = 0
            running_on_victim.discard(slug)
            results.append((kind, status))

    async def burst() -> None:
        await asyncio.gather(*(one(kind, slug, to) for kind, slug, to in jobs))
        kill()  # (only if no move ran on the victim long enough: then it dies after the burst)

    burst_task = asyncio.ensure_future(burst())
    await killed.wait()
    settled = await settle(fleet, t_kill, until=burst_task)
    await burst_task
    final = settled.state
    if restart is not None:
        await restart
    statuses: dict[str, dict[str, int]] = {}
    for kind, status in results:
        key = str(status) if status else "no answer"
        statuses.setdefault(kind, {})[key] = statuses.setdefault(kind, {}).get(key, 0) + 1
    with psycopg.connect(fleet.control_dsn) as conn:
        burst_rows = conn.execute(
            "SELECT status, count(*) FROM tenants WHERE slug LIKE %s GROUP BY status", (f"fb{run}-%",)
        ).fetchall()
    return {
        "provisions": args.burst_provisions,
        "moves": len(movers),
        "killed_after_s": round(t_kill - t0, 2),
        "burst_ended_after_kill_s": round(settled.until_s or 0.0, 2),
        "answers": statuses,
        "refused": refused,
        "interrupted": sum(1 for _, status in results if status == 0),
        "converge_s": round(settled.seconds, 2),
        "first_settling_after_kill_s": None if settled.first_action_s is None else round(settled.first_action_s, 2),
        "settled": settled.actions,
        "orphans_left": final.orphans,
        "half_moved": len(final.half_moved),
        "half_moved_detail": final.half_moved[:10],
        "running_operations_left": final.running_operations + final.running_moves,
        "findings_left": final.findings[:10],
        "burst_tenants_by_status": {status: n for status, n in burst_rows},
    }


async def move_busy(fleet: Fleet, writer: Writer, busy: list[Tenant]) -> dict[str, Any]:
    """Each of ``busy`` (tenants the writer keeps writing to) moved to the other server, one after another
    through the live processes in turn: the freeze each move recorded, how long each took, and the longest
    gap between two acknowledged writes of the tenant while it moved."""
    where = placement(fleet)
    freezes: list[float] = []
    durations: list[float] = []
    gaps: list[float] = []
    failed: dict[str, str] = {}
    t_start = time.monotonic()
    for n, tenant in enumerate(busy):
        servers = live(fleet.processes)
        to = other_server(where[tenant.slug][0])
        t0 = time.monotonic()
        response = await fleet.admin(
            servers[n % len(servers)], "POST", f"/admin/tenants/{tenant.slug}/move", {"to": to}
        )
        t1 = time.monotonic()
        await asyncio.sleep(0.3)  # the writes right after the switch count for the gap
        if response.status_code != 200:
            failed[tenant.slug] = f"{response.status_code} {response.text[:200]}"
            continue
        freezes.append(float(response.json()["freeze_ms"]))
        durations.append(t1 - t0)
        gaps.append(writer.longest_gap(tenant.slug, t0, time.monotonic()) * 1000)
    moved = {t.slug for t in busy}
    seen = writer.window(t_start, time.monotonic(), moved)
    return {
        "moves": len(busy),
        "failed": failed,
        "freeze_ms": summary(freezes),
        "move_s": summary(durations),
        "longest_write_gap_ms": summary(gaps),
        "writes": len(seen),
        "write_errors_by_status": errors_by_status(seen),
    }


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"min": 0.0, "median": 0.0, "max": 0.0}
    return {"min": round(min(values), 1), "median": round(statistics.median(values), 1), "max": round(max(values), 1)}
