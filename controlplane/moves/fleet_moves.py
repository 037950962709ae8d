"""``FleetMoves``: draining a server and rebalancing the fleet, as moves queued on the task queue.

- ``drain(server)`` marks the server ``draining`` (placement and moves skip it from then on), reads the
  fleet (every server's tenant sizes and connections, live), chooses a target for each movable tenant
  (``balance.drain_targets``) and queues one ``moves.move_tenant`` task per tenant. Workers of every process
  run them, one move per tenant at a time (the task's lock), each through ``MoveService.move``.
- ``proposals`` / ``rebalance``: the same reading, ``balance.propose``'s moves; ``rebalance`` queues them.
- ``run_move`` is the task's body, safe to run twice: a tenant no longer on the source server is left
  alone (its move happened), a target that filled up or started draining since is replaced by the best
  server with room now, and a refusal (the tenant not movable, no room anywhere) ends the task without a
  retry. A failed move was undone by ``MoveService`` and raises, so the queue retries it.
- ``progress`` (a drain's tenants left and pending moves) and ``outcomes`` (how queued moves ended).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime

from controlplane.db import AsyncConn
from controlplane.errors import ServerUnavailable
from controlplane.fleet import repository as fleet_repository
from controlplane.fleet.models import ServerStatus
from controlplane.moves import balance
from controlplane.moves import repository as moves_repository
from controlplane.moves.fleet_models import (
    DEFAULT_LIMIT,
    DrainProgress,
    DrainReport,
    MoveOutcome,
    MoveQueue,
    QueuedMove,
    RebalancePlan,
    TenantLeft,
    Unmoved,
)
from controlplane.moves.models import MoveRefused, MoveState
from controlplane.moves.service import MOVABLE_STATUSES, MoveService
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry import repository as registry
from controlplane.usage import fill
from controlplane.usage.fill_repository import ServerView, server_view

log = logging.getLogger(__name__)


async def _now(conn: AsyncConn) -> datetime:
    cur = await conn.execute("SELECT now() AS now")
    row = await cur.fetchone()
    assert row is not None
    now: datetime = row["now"]
    return now


class FleetMoves:
    """Drains and rebalances (CLI, admin API and the move task alike)."""

    def __init__(self, platform: Platform, tenants: TenantService) -> None:
        self._p = platform
        self._tenants = tenants
        self.policy = fill.FillPolicy.of(platform.settings.moves)

    # -- reading the fleet --------------------------------------------------------------------------

    async def read(self, *, live: bool = True) -> tuple[list[fill.ServerFill], list[fill.TenantLoad]]:
        """Every server's fill and every placed tenant's load; ``live``: sizes and connections as each
        server reports them now (an unreachable server is marked so: it takes and gives no tenant)."""
        async with self._p.control.connection() as conn:
            servers = await fleet_repository.list_servers(conn)
            loads = await fill.tenant_loads(conn)
            database_of = {t.id: t.database_name for t in await registry.list_tenants(conn)}
            views: dict[uuid.UUID, ServerView] = {}
            unreachable: set[uuid.UUID] = set()
            if live:
                for server in servers:
                    own = [t for t in loads if t.server_id == server.id]
                    try:
                        async with self._p.fleet.admin(conn, server.id) as admin:
                            view = await server_view(admin, [database_of[t.tenant_id] for t in own])
                    except ServerUnavailable as exc:
                        log.warning("server %s not read: %s", server.name, exc.detail)
                        unreachable.add(server.id)
                        continue
                    fill.with_view(own, database_of, view)
                    views[server.id] = view
        fills = fill.fill_servers(servers, loads, self.policy, views)
        for server_fill in fills:
            server_fill.reachable = server_fill.id not in unreachable
        return fills, loads

    # -- drain ----------------------------------------------------------------------------------------

    async def drain(self, name: str, queue: MoveQueue, *, requested_by: str | None = None) -> DrainReport:
        """Mark ``name`` draining and queue a move of each of its movable tenants (see the module doc)."""
        async with self._p.control.connection() as conn:
            started = await _now(conn)
            source = await self._p.fleet.set_status(conn, name, ServerStatus.DRAINING)
            on_source = await registry.list_tenants(conn, server_id=source.id)
        servers, loads = await self.read()
        plan = balance.Fleet(servers, loads, self.policy)
        queued: list[QueuedMove] = []
        not_moved: list[Unmoved] = []
        planned = set()
        for tenant, target in balance.drain_targets(plan, source.id):
            planned.add(tenant.tenant_id)
            if target is None:
                reason = (
                    f"the tenant is {tenant.status.value}"
                    if tenant.status not in MOVABLE_STATUSES
                    else "no active server has room for it"
                )
                not_moved.append(Unmoved(slug=tenant.slug, tenant_id=tenant.tenant_id, reason=reason))
                continue
            fresh = await queue.enqueue_move(tenant.tenant_id, source=source.id, to=target, requested_by=requested_by)
            queued.append(
                QueuedMove(
                    slug=tenant.slug, tenant_id=tenant.tenant_id, from_server=name, to_server=target, queued=fresh
                )
            )
        for other in on_source:  # provisioning or deleting: not in the loads
            if other.id not in planned:
                reason = f"the tenant is {other.status.value}"
                not_moved.append(Unmoved(slug=other.slug, tenant_id=other.id, reason=reason))
        log.info("server %s draining: %d move(s) queued, %d tenant(s) stay", name, len(queued), len(not_moved))
        return DrainReport(
            server=name, status=ServerStatus.DRAINING, started_at=started, queued=queued, not_moved=not_moved
        )

    async def progress(self, name: str, queue: MoveQueue) -> DrainProgress:
        """The tenants still on ``name``, whether a move of each waits, and why its last move failed."""
        async with self._p.control.connection() as conn:
            server = await self._p.fleet.get(conn, name)
            left = await registry.list_tenants(conn, server_id=server.id)
            errors: dict[uuid.UUID, str | None] = {}
            for tenant in left:
                last = await moves_repository.for_tenant(conn, tenant.id, limit=1)
                errors[tenant.id] = last[0].error if last and last[0].state is MoveState.ROLLED_BACK else None
        pending = await queue.pending_moves([t.id for t in left])
        return DrainProgress(
            server=server.name,
            status=server.status,
            tenants_left=len(left),
            moves_pending=len(pending),
            tenants=[
                TenantLeft(
                    slug=t.slug,
                    tenant_id=t.id,
                    status=t.status.value,
                    move_pending=t.id in pending,
                    last_error=errors[t.id],
                )
                for t in left
            ],
        )

    async def outcomes(self, queued: Sequence[QueuedMove], queue: MoveQueue, *, since: datetime) -> list[MoveOutcome]:
        """How each queued move ended (or ``pending``), judged from the registry and the tenant's moves."""
        pending = await queue.pending_moves([q.tenant_id for q in queued])
        out: list[MoveOutcome] = []
        async with self._p.control.connection() as conn:
            for item in queued:
                tenant = await registry.get_by_id(conn, item.tenant_id)
                last = await moves_repository.for_tenant(conn, item.tenant_id, limit=1)
                move = last[0] if last and last[0].started_at >= since else None
                if tenant is None:
                    outcome, server = "not moved", item.from_server
                elif item.tenant_id in pending:
                    outcome, server = "pending", tenant.server_name
                elif tenant.server_name != item.from_server:
                    outcome, server = "moved", tenant.server_name
                elif move is not None and move.state is MoveState.ROLLED_BACK:
                    outcome, server = "failed", tenant.server_name
                else:
                    outcome, server = "not moved", tenant.server_name
                out.append(
                    MoveOutcome(
                        slug=item.slug,
                        tenant_id=item.tenant_id,
                        outcome=outcome,
                        server=server,
                        freeze_ms=move.freeze_ms if move is not None and outcome == "moved" else None,
                        error=move.error if move is not None and outcome == "failed" else None,
                    )
                )
        return out

    # -- rebalance ------------------------------------------------------------------------------------

    async def rebalance(
        self, *, limit: int = DEFAULT_LIMIT, queue: MoveQueue | None = None, requested_by: str | None = None
    ) -> RebalancePlan:
        """The proposals (``balance.propose`` on a live reading); with ``queue``, each queued as a move."""
        async with self._p.control.connection() as conn:
            started = await _now(conn)
        servers, loads = await self.read()
        ids = {s.name: s.id for s in servers}
        proposals = balance.propose(balance.Fleet(servers, [_copy(t) for t in loads], self.policy), limit=limit)
        queued: list[QueuedMove] = []
        for proposal in proposals if queue is not None else []:
            assert queue is not None
            fresh = await queue.enqueue_move(
                proposal.tenant_id, source=ids[proposal.from_server], to=proposal.to_server, requested_by=requested_by
            )
            queued.append(
                QueuedMove(
                    slug=proposal.slug,
                    tenant_id=proposal.tenant_id,
                    from_server=proposal.from_server,
                    to_server=proposal.to_server,
                    queued=fresh,
                )
            )
        return RebalancePlan(generated_at=started, servers=servers, proposals=proposals, queued=queued)

    # -- the task ---------------------------------------------------------------------------------------

    async def run_move(
        self, tenant_id: uuid.UUID, source: uuid.UUID, to: str, *, requested_by: str | None = None
    ) -> str:
        """The ``moves.move_tenant`` task: move the tenant off ``source``, to ``to`` if it still has room
        (else to the best server that has); what happened, in a few words. See the module docstring."""
        async with self._p.control.connection() as conn:
            tenant = await registry.get_by_id(conn, tenant_id)
        if tenant is None:
            return "no tenant to move"
        if tenant.server_id != source:
            return f"{tenant.slug}: already moved (on {tenant.server_name})"
        if tenant.status not in MOVABLE_STATUSES:
            return f"{tenant.slug}: not moved: the tenant is {tenant.status.value}"
        servers, loads = await self.read(live=False)
        target = self._target(servers, loads, tenant_id, to)
        if target is None:
            return f"{tenant.slug}: not moved: no active server has room for it"
        try:
            move = await MoveService(self._p, self._tenants).move(tenant.slug, target, requested_by=requested_by)
        except MoveRefused as exc:
            return f"{tenant.slug}: not moved: {exc.detail}"
        return f"{tenant.slug}: moved to {target} (writes frozen {move.freeze_ms} ms)"

    def _target(
        self, servers: list[fill.ServerFill], loads: list[fill.TenantLoad], tenant_id: uuid.UUID, planned: str
    ) -> str | None:
        plan = balance.Fleet(servers, loads, self.policy)
        load = next((t for t in loads if t.tenant_id == tenant_id), None)
        if load is None:
            return None
        rooms = [s for s in plan.servers.values() if plan.room(s, load)]
        if any(s.fill.name == planned for s in rooms):
            return planned
        best = min(rooms, key=lambda s: (s.load, s.fill.name), default=None)
        return best.fill.name if best is not None else None


def _copy(load: fill.TenantLoad) -> fill.TenantLoad:
    return fill.TenantLoad(
        tenant_id=load.tenant_id,
        slug=load.slug,
        status=load.status,
        server_id=load.server_id,
        database_bytes=load.database_bytes,
        growth_bytes_per_day=load.growth_bytes_per_day,
        connections=load.connections,
    )
