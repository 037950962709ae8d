"""Admin API of drains and rebalances (``/admin/*``: super-admins and the automation token).

- ``POST /admin/servers/{name}/drain``: the server takes no new tenants (``draining``); with
  ``?move_tenants=true`` one move per movable tenant is also queued (``drain``: where each goes, and those
  that stay). Answers the server as ``GET /admin/servers`` lists it, with ``drain`` (null without the flag).
- ``GET /admin/servers/{name}/drain``: its progress: tenants left, moves pending, the last move error of each.
- ``GET /admin/fleet/rebalance?limit=N``: each server's fill and the proposed moves (nothing changes).
- ``POST /admin/fleet/rebalance?limit=N``: the same, each proposal queued as a move (``queued``).

Moves run on the task queue's workers (every ``cardvault serve`` and ``cardvault worker``); see
``fleet_moves``. An unknown server: 404 ``server_not_found``; a bad ``limit``: 400.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from controlplane.audit.routes import audited
from controlplane.fleet.models import Server, ServerStatus
from controlplane.http.admin import admin_principal
from controlplane.http.state import MOVE_QUEUE_STATE_KEY
from controlplane.moves.fleet_models import DEFAULT_LIMIT, DrainProgress, DrainReport, MoveQueue, RebalancePlan
from controlplane.moves.fleet_moves import FleetMoves
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService

#: Most moves one rebalance call may propose.
MAX_LIMIT = 500


class ServerDrain(Server, kw_only=True):
    """The drained server, and the moves its drain queued (None: only marked draining)."""

    drain: DrainReport | None = None


def _queue(request: Request[Any, Any, Any]) -> MoveQueue:
    queue: MoveQueue = request.app.state[MOVE_QUEUE_STATE_KEY]
    return queue


@post(
    "/admin/servers/{name:str}/drain",
    status_code=200,
    tags=["fleet"],
    summary="Place no new tenants on the server; move_tenants=true: also queue a move of each of its tenants",
)
async def drain_server(
    request: Request[Any, Any, Any],
    name: FromPath[str],
    platform: NamedDependency[Platform],
    tenants: NamedDependency[TenantService],
    move_tenants: Annotated[bool, QueryParameter(description="queue a move of every movable tenant")] = False,
) -> ServerDrain:
    async with audited(request, "server.drain", entity="server", entity_id=name) as audit:
        report: DrainReport | None = None
        if move_tenants:
            moves = FleetMoves(platform, tenants)
            report = await moves.drain(name, _queue(request), requested_by=admin_principal(request).subject)
            audit.details |= {"queued": len(report.queued), "not_moved": len(report.not_moved)}
        async with platform.control.connection() as conn:
            server = (
                await platform.fleet.get(conn, name)
                if report is not None
                else await platform.fleet.set_status(conn, name, ServerStatus.DRAINING)
            )
        return ServerDrain(**msgspec.structs.asdict(server), drain=report)


@get("/admin/servers/{name:str}/drain", tags=["fleet"], summary="A drain's progress: tenants left, moves pending")
async def drain_progress(
    request: Request[Any, Any, Any],
    name: FromPath[str],
    platform: NamedDependency[Platform],
    tenants: NamedDependency[TenantService],
) -> DrainProgress:
    return await FleetMoves(platform, tenants).progress(name, _queue(request))


_LIMIT = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description="most moves proposed")]


@get("/admin/fleet/rebalance", tags=["fleet"], summary="Server fill and the moves that would even it out")
async def rebalance_proposals(
    platform: NamedDependency[Platform], tenants: NamedDependency[TenantService], limit: _LIMIT = DEFAULT_LIMIT
) -> RebalancePlan:
    return await FleetMoves(platform, tenants).rebalance(limit=limit)


@post("/admin/fleet/rebalance", status_code=200, tags=["fleet"], summary="Queue the proposed rebalancing moves")
async def rebalance_apply(
    request: Request[Any, Any, Any],
    platform: NamedDependency[Platform],
    tenants: NamedDependency[TenantService],
    limit: _LIMIT = DEFAULT_LIMIT,
) -> RebalancePlan:
    async with audited(request, "fleet.rebalance", details={"limit": limit}) as audit:
        plan = await FleetMoves(platform, tenants).rebalance(
            limit=limit, queue=_queue(request), requested_by=admin_principal(request).subject
        )
        audit.details["moves"] = [f"{q.slug}: {q.from_server} -> {q.to_server}" for q in plan.queued]
        return plan


ADMIN_FLEET_MOVE_HANDLERS = [drain_server, drain_progress, rebalance_proposals, rebalance_apply]
