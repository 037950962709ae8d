"""Whether the fleet of the fleet benchmark (``fleet.py``) is consistent, and settling it after a crash: the
reconciler and the move upkeep run from the bench's own platform (what the leader's jobs do on their
timers), until the ledger has nothing running, the reconciler finds nothing and no tenant is half-moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from fleet_setup import SERVER_NAMES, Fleet

#: Seconds between two settling rounds, and the most a settling may take.
SETTLE_INTERVAL = 1.0
SETTLE_TIMEOUT = 300.0


@dataclasses.dataclass
class FleetState:
    running_operations: int
    running_moves: int
    #: Findings of a reconciler pass that changes nothing (orphans among them).
    findings: list[str]
    orphans: int
    #: Tenants whose database is not on exactly the server the registry names; move copies (``t_*_m*``)
    #: left on a server; replication slots or subscriptions left on a server.
    half_moved: list[str]

    @property
    def converged(self) -> bool:
        return not (self.running_operations or self.running_moves or self.findings or self.half_moved)


@contextlib.asynccontextmanager
async def platform_of(fleet: Fleet) -> AsyncIterator[tuple[Any, Any]]:
    """The bench's own platform on the fleet's control database, and its ``TenantService``."""
    from controlplane.platform import Platform
    from controlplane.provisioning.service import TenantService

    async with Platform.open(fleet.settings, migrate=False) as platform:
        yield platform, TenantService(platform)


def placement(fleet: Fleet) -> dict[str, tuple[str, str]]:
    """slug -> (server name, database name) as the registry has them now."""
    import psycopg

    with psycopg.connect(fleet.control_dsn) as conn:
        rows = conn.execute(
            "SELECT t.slug, s.name, t.database_name FROM tenants t JOIN db_servers s ON s.id = t.server_id"
        ).fetchall()
    return {slug: (server, database) for slug, server, database in rows}


def locate(fleet: Fleet) -> Any:
    """``slug -> (superuser DSN of its server, database)`` for ``fleet_probe.read_back``."""
    where = placement(fleet)

    def find(slug: str) -> tuple[str, str]:
        server, database = where[slug]
        return fleet.server_dsn(server), database

    return find


def _server_objects(dsn: str) -> tuple[set[str], list[str]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        left = [f"slot {r[0]}" for r in conn.execute("SELECT slot_name FROM pg_replication_slots")]
        left += [f"subscription {r[0]}" for r in conn.execute("SELECT subname FROM pg_subscription")]
    return names, left


async def state(fleet: Fleet, platform: Any, tenants: Any) -> FleetState:
    import psycopg

    from controlplane.provisioning.reconciler import Reconciler

    with psycopg.connect(fleet.control_dsn) as conn:
        ops = conn.execute("SELECT count(*) FROM tenant_operations WHERE state = 'running'").fetchone()
        moves = conn.execute("SELECT count(*) FROM tenant_moves WHERE state = 'running'").fetchone()
        live = conn.execute(
            "SELECT t.slug, s.name, t.database_name FROM tenants t JOIN db_servers s ON s.id = t.server_id"
            " WHERE t.status IN ('active', 'suspended')"
        ).fetchall()
    report = await Reconciler(platform, tenants).run(fix=False)
    half: list[str] = []
    databases: dict[str, set[str]] = {}
    for name in SERVER_NAMES:
        databases[name], leftovers = _server_objects(fleet.server_dsn(name))
        half += [f"{name}: {x}" for x in leftovers]
        half += [f"{name}: move copy {d}" for d in databases[name] if d.startswith("t_") and d[34:36] == "_m"]
    for slug, server, database in live:
        on = [name for name in SERVER_NAMES if database in databases[name]]
        if on != [server]:
            half.append(f"{slug}: registry says {server}, database on {on or 'no server'}")
    return FleetState(
        running_operations=int(ops[0]) if ops else 0,
        running_moves=int(moves[0]) if moves else 0,
        findings=[f"{f.kind} {f.subject} on {f.server}" for f in report.findings],
        orphans=sum(1 for f in report.findings if f.kind == "orphan"),
        half_moved=half,
    )


@dataclasses.dataclass
class Settled:
    #: Seconds from the start (``since``) until the fleet was consistent (or the timeout).
    seconds: float
    state: FleetState
    #: What the settling rounds found and did, by kind.
    actions: dict[str, int]
    #: Seconds from the start until the settling first found something to do, and until ``until`` ended.
    first_action_s: float | None
    until_s: float | None


async def settle(fleet: Fleet, since: float, until: asyncio.Future[Any] | None = None) -> Settled:
    """Reconciler (fixing) and move upkeep once a second, from now until the fleet is consistent and
    ``until`` (work still under way, e.g. the rest of a burst) has ended; ``since``: monotonic start time."""
    from controlplane.moves.service import MoveService
    from controlplane.provisioning.reconciler import Reconciler

    actions: dict[str, int] = {}
    first_action: float | None = None
    until_s: float | None = None
    async with platform_of(fleet) as (platform, tenants):
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            try:
                report = await Reconciler(platform, tenants).run(fix=True)
                kinds = [f"{f.kind} ({f.action})" for f in report.findings]
            except Exception as exc:  # the leader's job logs a failed cycle and runs again on its next tick
                kinds = [f"reconciler cycle failed ({type(exc).__name__}: {str(exc)[:80]})"]
            outcome = await MoveService(platform, tenants).upkeep()
            kinds += [
                "move " + part.rpartition(": ")[2].split(" (")[0]
                for part in outcome.split("; ")
                if part.startswith("move operation")
            ]
            for kind in kinds:
                actions[kind] = actions.get(kind, 0) + 1
            if kinds and first_action is None:
                first_action = time.monotonic() - since
            if until is not None and until.done() and until_s is None:
                until_s = time.monotonic() - since
            if until is None or until.done():
                now = await state(fleet, platform, tenants)
                if now.converged or time.monotonic() > deadline:
                    return Settled(time.monotonic() - since, now, actions, first_action, until_s)
            await asyncio.sleep(SETTLE_INTERVAL)


async def check(fleet: Fleet) -> FleetState:
    async with platform_of(fleet) as (platform, tenants):
        return await state(fleet, platform, tenants)
