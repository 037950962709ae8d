"""Where tenants should go: the targets of a drain and the proposals of a rebalance (pure functions over
``controlplane.usage.fill``'s server fills and tenant loads; ``fleet_moves.FleetMoves`` reads them and
queues the moves).

**Weight.** A tenant's weight is its share of the fleet's projected bytes plus its share of the fleet's
tenant connections: ``w = projected_bytes / all projected bytes + connections / all connections`` (the second
term is 0 when no tenant is connected). A server's load is the sum of its tenants' weights. Projected bytes
are the bytes now plus the growth trend over the horizon (``fill``), so a small tenant that grows fast
weighs like the large tenant it will become.

**Room.** A server takes a tenant only when it is active and not full, and the move leaves it within every
limit: at most ``CARDVAULT_SERVER_MAX_TENANTS`` tenants afterwards, projected bytes
at most ``CARDVAULT_SERVER_FULL_RATIO`` of ``CARDVAULT_SERVER_CAPACITY_BYTES``, connections at most that ratio
of its ``max_connections`` (limits that are not set, or not known, do not apply). So no proposal ever
targets a draining or full server, and none leaves a server over its capacity.

**Drain** (``drain_targets``): the movable tenants of the source, heaviest first, each to the server with
room whose load is lowest at that point (the loads are updated as tenants are assigned, so they spread).

**Rebalance** (``propose``), among active servers only (a draining one is emptied by its drain): repeatedly
take the most loaded server that has a movable tenant and, for each of its tenants, the least loaded server
with room for it; the move whose weight is nearest half the gap between the two loads is proposed, if it
narrows the gap (weight below the gap). It stops after ``limit`` proposals, when no move narrows a gap, or
when the gap is at most ``TOLERANCE`` of the mean load and the heaviest server is not full (a fleet that is
nearly even is left alone: every move costs a short write freeze). A full server gives first, before
heavier servers that are not full, and whatever the tolerance.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from controlplane.fleet.models import ServerStatus
from controlplane.moves.service import MOVABLE_STATUSES
from controlplane.usage.fill import FillPolicy, ServerFill, TenantLoad

#: A fleet whose heaviest and lightest loads differ by at most this share of the mean load is balanced.
TOLERANCE = 0.1


class Proposal(msgspec.Struct, kw_only=True):
    """One move a rebalance proposes (and, applied, queues)."""

    slug: str
    tenant_id: uuid.UUID
    from_server: str
    to_server: str
    database_bytes: int
    projected_bytes: int
    connections: int
    #: The tenant's weight (share of projected bytes plus share of connections).
    weight: float
    #: The two servers' loads before and after the move.
    from_load: tuple[float, float]
    to_load: tuple[float, float]


@dataclass
class _Server:
    fill: ServerFill
    tenants: int
    projected: float
    connections: int
    load: float = 0.0
    members: list[TenantLoad] = field(default_factory=list)


class Fleet:
    """The servers and tenants being planned on, changed as moves are assigned."""

    def __init__(self, servers: Sequence[ServerFill], loads: Sequence[TenantLoad], policy: FillPolicy) -> None:
        self.policy = policy
        self.servers = {
            s.id: _Server(fill=s, tenants=s.tenants, projected=float(s.projected_bytes), connections=s.connections or 0)
            for s in servers
        }
        placed = [t for t in loads if t.server_id in self.servers]
        bytes_total = sum(t.projected(policy.horizon_days) for t in placed) or 1.0
        connections_total = sum(t.connections for t in placed)
        self.weight = {
            t.tenant_id: t.projected(policy.horizon_days) / bytes_total
            + (t.connections / connections_total if connections_total else 0.0)
            for t in placed
        }
        for tenant in placed:
            server = self.servers[tenant.server_id]
            server.members.append(tenant)
            server.load += self.weight[tenant.tenant_id]

    def room(self, server: _Server, tenant: TenantLoad) -> bool:
        """Whether ``server`` may take ``tenant`` (see the module docstring)."""
        fill, policy = server.fill, self.policy
        if not fill.takes_tenants or fill.id == tenant.server_id:
            return False
        if policy.max_tenants and server.tenants + 1 > policy.max_tenants:
            return False
        projected = server.projected + tenant.projected(policy.horizon_days)
        if policy.limits_bytes and projected > policy.full_ratio * policy.capacity_bytes:
            return False
        return not (
            fill.max_connections and server.connections + tenant.connections > policy.full_ratio * fill.max_connections
        )

    def assign(self, tenant: TenantLoad, target: _Server) -> tuple[tuple[float, float], tuple[float, float]]:
        """Record ``tenant`` on ``target``: the two loads (before, after)."""
        source = self.servers[tenant.server_id]
        weight, projected = self.weight[tenant.tenant_id], tenant.projected(self.policy.horizon_days)
        before = (source.load, target.load)
        source.members.remove(tenant)
        target.members.append(tenant)
        source.load -= weight
        target.load += weight
        source.tenants, target.tenants = source.tenants - 1, target.tenants + 1
        source.projected, target.projected = source.projected - projected, target.projected + projected
        source.connections -= tenant.connections
        target.connections += tenant.connections
        tenant.server_id = target.fill.id
        return (before[0], source.load), (before[1], target.load)

    def proposal(self, tenant: TenantLoad, target: _Server) -> Proposal:
        source_name = self.servers[tenant.server_id].fill.name
        from_load, to_load = self.assign(tenant, target)
        return Proposal(
            slug=tenant.slug,
            tenant_id=tenant.tenant_id,
            from_server=source_name,
            to_server=target.fill.name,
            database_bytes=tenant.database_bytes,
            projected_bytes=round(tenant.projected(self.policy.horizon_days)),
            connections=tenant.connections,
            weight=round(self.weight[tenant.tenant_id], 6),
            from_load=(round(from_load[0], 6), round(from_load[1], 6)),
            to_load=(round(to_load[0], 6), round(to_load[1], 6)),
        )


def _movable(server: _Server) -> list[TenantLoad]:
    return [t for t in server.members if t.status in MOVABLE_STATUSES]


def drain_targets(fleet: Fleet, source: uuid.UUID) -> list[tuple[TenantLoad, str | None]]:
    """Each tenant of ``source`` with the server it goes to (None: not movable, or no server has room)."""
    server = fleet.servers[source]
    out: list[tuple[TenantLoad, str | None]] = []
    for tenant in sorted(server.members, key=lambda t: (-fleet.weight[t.tenant_id], t.slug)):
        if tenant.status not in MOVABLE_STATUSES:
            out.append((tenant, None))
            continue
        targets = [s for s in fleet.servers.values() if fleet.room(s, tenant)]
        target = min(targets, key=lambda s: (s.load, s.fill.name), default=None)
        if target is None:
            out.append((tenant, None))
            continue
        fleet.assign(tenant, target)
        out.append((tenant, target.fill.name))
    return out


def propose(fleet: Fleet, *, limit: int) -> list[Proposal]:
    """The rebalance's moves, in order (see the module docstring); ``fleet`` ends as they leave it."""
    active = [s for s in fleet.servers.values() if s.fill.status is ServerStatus.ACTIVE and s.fill.reachable]
    proposals: list[Proposal] = []
    while len(proposals) < limit and len(active) > 1:
        mean = sum(s.load for s in active) / len(active)
        sources = sorted((s for s in active if _movable(s)), key=lambda s: (not s.fill.full, -s.load, s.fill.name))
        best: tuple[float, TenantLoad, _Server] | None = None
        for source in sources:
            for tenant in _movable(source):
                targets = [s for s in active if fleet.room(s, tenant)]
                target = min(targets, key=lambda s: (s.load, s.fill.name), default=None)
                if target is None:
                    continue
                gap, weight = source.load - target.load, fleet.weight[tenant.tenant_id]
                if not (0 < weight < gap) or (gap <= TOLERANCE * mean and not source.fill.full):
                    continue
                score = abs(gap / 2 - weight)
                if best is None or (score, tenant.slug) < (best[0], best[1].slug):
                    best = (score, tenant, target)
            if best is not None:
                break  # the heaviest server that can give a tenant gives one
        if best is None:
            break
        proposals.append(fleet.proposal(best[1], best[2]))
    return proposals
