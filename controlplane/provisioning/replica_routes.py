"""Admin API for a server's read replicas: ``/admin/servers/{name}/replicas`` (list with state, replace).

A sub-resource of the server rather than a field of its PATCH: the list is replaced as a whole (every
DSN checked first), and the answer is the replicas with what this process measures of them.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, KwargDefinition

from controlplane.audit.routes import audited
from controlplane.fleet.replicas import MAX_REPLICAS, Replica, Replicas, list_replicas
from controlplane.http.replica_routing import REPLICA_READS_STATE_KEY
from controlplane.platform import Platform
from controlplane.routing.replica_monitor import ReplicaState, format_lsn
from controlplane.routing.replica_reads import ReplicaReads


class ReplicaList(msgspec.Struct, forbid_unknown_fields=True):
    dsns: Annotated[
        list[str],
        KwargDefinition(
            description=f"libpq DSNs (host, port, user, dbname) of streaming replicas of the server, at most "
            f"{MAX_REPLICAS}, preferred in this order; [] removes them all"
        ),
    ]


class ReplicaView(msgspec.Struct):
    """A replica and what this process last measured of it (None: not measured yet)."""

    id: str
    position: int
    dsn_display: str
    up: bool | None
    usable: bool | None
    lag_seconds: float | None
    lag_bytes: int | None
    replay_lsn: str | None
    error: str | None
    reads: int

    @classmethod
    def of(cls, replica: Replica, state: ReplicaState | None, max_lag: float) -> ReplicaView:
        return cls(
            id=str(replica.id),
            position=replica.position,
            dsn_display=replica.dsn_display,
            up=None if state is None else state.up,
            usable=None if state is None else state.usable(max_lag),
            lag_seconds=None if state is None else state.lag_seconds,
            lag_bytes=None if state is None else state.lag_bytes,
            replay_lsn=None if state is None or state.replay_lsn is None else format_lsn(state.replay_lsn),
            error=None if state is None else state.error,
            reads=0 if state is None else state.reads,
        )


def _views(request: Request[Any, Any, Any], replicas: list[Replica]) -> list[ReplicaView]:
    reads: ReplicaReads = request.app.state[REPLICA_READS_STATE_KEY]
    states = {state.replica.id: state for state in reads.monitor.states()}
    return [ReplicaView.of(r, states.get(r.id), reads.monitor.max_lag) for r in replicas]


class ReplicasController(Controller):
    path = "/admin/servers/{name:str}/replicas"
    tags = ["fleet"]

    @get("/", summary="The server's read replicas with their lag as this process measures it")
    async def show(
        self, request: Request[Any, Any, Any], name: FromPath[str], platform: NamedDependency[Platform]
    ) -> list[ReplicaView]:
        async with platform.control.connection() as conn:
            server = await platform.fleet.get(conn, name)
            found = await list_replicas(conn, server.id)
        return _views(request, found)

    @put("/", status_code=200, summary="Replace the server's read replicas (each DSN must reach a standby of it)")
    async def replace(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        data: JSONBody[ReplicaList],
        platform: NamedDependency[Platform],
    ) -> list[ReplicaView]:
        async with audited(request, "server.set_replicas", entity="server", entity_id=name) as audit:
            async with platform.control.connection() as conn:
                registry = Replicas(platform.fleet, platform.box, platform.settings.database)
                stored = await registry.set(conn, name, data.dsns)
            audit.details["replicas"] = [r.dsn_display for r in stored]  # never the DSNs as given
        reads: ReplicaReads = request.app.state[REPLICA_READS_STATE_KEY]
        await reads.monitor.check()  # answer with the new replicas measured
        return _views(request, stored)


ADMIN_REPLICA_HANDLERS = [ReplicasController]
