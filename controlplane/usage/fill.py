"""Server fill: how full each database server is, how full it is projected to be, and when it counts as full.

One definition, used by placement (new tenants), drains and rebalancing (``controlplane.moves``), the
capacity report's recommendation and the ``cardvault servers rebalance`` output:

- A tenant's **projected bytes** are its database's bytes now plus its growth (the least-squares slope of
  its ``database_bytes`` history over ``trends.TREND_WINDOW_DAYS``, never below 0) times
  ``CARDVAULT_SERVER_FILL_HORIZON_DAYS``. A server's are the sum over its tenants.
- A server is **full** when it holds ``CARDVAULT_SERVER_MAX_TENANTS`` tenants, when its projected bytes reach
  ``CARDVAULT_SERVER_FULL_RATIO`` of ``CARDVAULT_SERVER_CAPACITY_BYTES``, or when its client connections
  (when known: a live reading) reach that ratio of its ``max_connections``. Full servers get no new tenant
  and no move.
- A server is **projected to fill** when, at its growth, it reaches its capacity within the horizon
  (``days_until_full``): the capacity report then recommends a rebalance, a drain or another server, and the
  ``CardVaultServerProjectedFull`` alert fires.

Bytes come from the usage history (the collectors' newest point per tenant) unless a caller has read the
servers themselves (``with_view``: the rebalance does).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from controlplane.db import AsyncConn
from controlplane.fleet import repository as fleet_repository
from controlplane.fleet.models import Server, ServerStatus
from controlplane.registry.models import TenantStatus
from controlplane.settings import MoveSettings
from controlplane.usage import fill_repository as repository
from controlplane.usage.fill_repository import ServerView
from controlplane.usage.trends import TREND_WINDOW_DAYS


@dataclass(frozen=True)
class FillPolicy:
    """The limits of a server (``CARDVAULT_SERVER_*``; 0 means no limit of that kind)."""

    max_tenants: int = 0
    capacity_bytes: int = 0
    full_ratio: float = 0.9
    horizon_days: int = 14

    @classmethod
    def of(cls, settings: MoveSettings) -> FillPolicy:
        return cls(
            max_tenants=settings.server_max_tenants,
            capacity_bytes=settings.server_capacity_bytes,
            full_ratio=settings.server_full_ratio,
            horizon_days=settings.server_fill_horizon_days,
        )

    @property
    def limits_bytes(self) -> bool:
        return self.capacity_bytes > 0


class TenantLoad(msgspec.Struct, kw_only=True):
    """One tenant's share of its server: bytes now, growth, connections (0 unless read live)."""

    tenant_id: uuid.UUID
    slug: str
    status: TenantStatus
    server_id: uuid.UUID
    database_bytes: int
    growth_bytes_per_day: float
    connections: int = 0

    def projected(self, horizon_days: int) -> float:
        return self.database_bytes + max(0.0, self.growth_bytes_per_day) * horizon_days


class ServerFill(msgspec.Struct, kw_only=True):
    """One server's fill now and projected, and whether it is full (and why)."""

    id: uuid.UUID
    name: str
    status: ServerStatus
    tenants: int
    database_bytes: int
    growth_bytes_per_day: float
    #: Bytes at the horizon at the current growth.
    projected_bytes: int
    horizon_days: int
    #: Client backends and ``max_connections`` (None unless the server was read live).
    connections: int | None
    max_connections: int | None
    capacity_bytes: int | None
    #: Days until ``capacity_bytes`` at the current growth (0: reached; None: unknown capacity, no growth).
    days_until_full: float | None
    full: bool
    #: Why the server is full (empty when it is not).
    full_reasons: list[str]
    #: What to do, when the server is full or projected to fill within the horizon.
    recommendation: str | None = None
    #: False when a live reading could not reach the server (it then takes no tenant and gives none).
    reachable: bool = True

    @property
    def takes_tenants(self) -> bool:
        return self.status is ServerStatus.ACTIVE and not self.full and self.reachable

    @property
    def projected_to_fill(self) -> bool:
        return self.days_until_full is not None and self.days_until_full <= self.horizon_days


def _fill(server: Server, loads: Sequence[TenantLoad], policy: FillPolicy, view: ServerView | None) -> ServerFill:
    size = sum(t.database_bytes for t in loads)
    growth = sum(t.growth_bytes_per_day for t in loads)
    projected = round(sum(t.projected(policy.horizon_days) for t in loads))
    reasons: list[str] = []
    if policy.max_tenants and server.tenants >= policy.max_tenants:
        reasons.append(f"holds {server.tenants} tenants (CARDVAULT_SERVER_MAX_TENANTS={policy.max_tenants})")
    days: float | None = None
    if policy.limits_bytes:
        if projected >= policy.full_ratio * policy.capacity_bytes:
            reasons.append(
                f"projected to hold {projected} bytes within {policy.horizon_days} days, "
                f"{projected / policy.capacity_bytes:.0%} of CARDVAULT_SERVER_CAPACITY_BYTES"
            )
        if size >= policy.capacity_bytes:
            days = 0.0
        elif growth > 0:
            days = (policy.capacity_bytes - size) / growth
    if view is not None and view.max_connections and view.total_connections >= policy.full_ratio * view.max_connections:
        reasons.append(f"uses {view.total_connections} of its {view.max_connections} connections")
    return ServerFill(
        id=server.id,
        name=server.name,
        status=server.status,
        tenants=server.tenants,
        database_bytes=size,
        growth_bytes_per_day=growth,
        projected_bytes=projected,
        horizon_days=policy.horizon_days,
        connections=view.total_connections if view is not None else None,
        max_connections=view.max_connections if view is not None else None,
        capacity_bytes=policy.capacity_bytes or None,
        days_until_full=days,
        full=bool(reasons),
        full_reasons=reasons,
    )


def recommend(server: ServerFill, fleet: Iterable[ServerFill]) -> str | None:
    """What to do about a server that is full or projected to fill (None otherwise): rebalance when other
    servers take tenants, else add a server; drain it to empty it for good."""
    if not server.full and not server.projected_to_fill:
        return None
    why = "; ".join(server.full_reasons) if server.full else f"projected full in {server.days_until_full:.1f} days"
    return advice(server.name, why, [s.name for s in fleet if s.name != server.name and s.takes_tenants])


def advice(name: str, why: str, others: Sequence[str]) -> str:
    """The recommendation for server ``name`` that fills (``why``), given the servers that take tenants."""
    if others:
        step = (
            f"rebalance (`cardvault servers rebalance --apply` moves tenants to {', '.join(others)}), or drain it "
            f"(`cardvault servers drain {name}`) to empty it"
        )
    else:
        step = "add a server (`cardvault servers add NAME DSN`): no other server takes tenants; then rebalance"
    return f"server {name}: {why}: {step}"


def fill_servers(
    servers: Sequence[Server],
    loads: Sequence[TenantLoad],
    policy: FillPolicy,
    views: Mapping[uuid.UUID, ServerView] | None = None,
) -> list[ServerFill]:
    """Every server's fill from its tenants' loads, with its recommendation."""
    by_server: dict[uuid.UUID, list[TenantLoad]] = {}
    for load in loads:
        by_server.setdefault(load.server_id, []).append(load)
    fills = [_fill(s, by_server.get(s.id, []), policy, (views or {}).get(s.id)) for s in servers]
    for fill in fills:
        fill.recommendation = recommend(fill, fills)
    return fills


async def tenant_loads(conn: AsyncConn, *, growth: bool = True) -> list[TenantLoad]:
    """Every placed tenant's bytes (newest recorded) and growth (``growth=False``: 0, no fit is made)."""
    return [
        TenantLoad(
            tenant_id=row["id"],
            slug=row["slug"],
            status=TenantStatus(row["status"]),
            server_id=row["server_id"],
            database_bytes=round(row["database_bytes"]),
            growth_bytes_per_day=float(row["slope"]),
        )
        for row in await repository.tenant_loads(conn, days=TREND_WINDOW_DAYS, growth=growth)
    ]


def with_view(loads: Sequence[TenantLoad], database_of: Mapping[uuid.UUID, str], view: ServerView) -> None:
    """Replace the recorded bytes of ``loads`` by what their server reads now, and set their connections."""
    for load in loads:
        name = database_of.get(load.tenant_id)
        if name is None:
            continue
        if name in view.sizes:
            load.database_bytes = view.sizes[name]
        load.connections = view.connections.get(name, 0)


async def fleet_fill(conn: AsyncConn, policy: FillPolicy) -> list[ServerFill]:
    """Every server's fill from the control database alone (the history; no server is contacted). Growth
    is fitted only when a byte capacity is set (nothing else needs it)."""
    servers = await fleet_repository.list_servers(conn)
    loads = await tenant_loads(conn, growth=policy.limits_bytes)
    return fill_servers(servers, loads, policy)
