"""Draining a server of its tenants, and rebalancing the fleet, by moves (``MoveService.move``).

- ``drain(server)`` (``cardvault servers evacuate``): the server stops taking tenants (status
  ``draining``), then every tenant on it is moved, one at a time, to the active server with the fewest
  tenants that has room (``CARDVAULT_SERVER_MAX_TENANTS``); at most ``limit`` moves per call, so a large
  server is drained in bounded rounds. Tenants that cannot be moved (provisioning, deleting, broken) are
  reported and stay.
- ``proposals()`` (``cardvault servers rebalance``): moves that even out the bytes of tenant databases
  across the servers, measured on the servers now: repeatedly the heaviest server's tenant whose size is
  nearest half the gap goes to the lightest active server with room, while that narrows the gap (at most
  ``limit`` proposals). ``rebalance(apply=True)`` performs them in order.
"""

from __future__ import annotations

import logging
import uuid

import msgspec

from controlplane.errors import CardVaultError, ServerUnavailable
from controlplane.fleet import repository as fleet_repository
from controlplane.fleet.models import Server, ServerStatus
from controlplane.moves import catalog
from controlplane.moves.service import MOVABLE_STATUSES, MoveService
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.registry.models import Tenant

log = logging.getLogger(__name__)

#: Moves one ``drain`` or ``rebalance`` makes at most unless told otherwise.
DEFAULT_LIMIT = 20


class Outcome(msgspec.Struct, kw_only=True):
    """One tenant of a drain or rebalance: moved (with its write freeze), or why not."""

    slug: str
    from_server: str
    to_server: str | None
    freeze_ms: float | None = None
    error: str | None = None


class Proposal(msgspec.Struct, kw_only=True):
    slug: str
    from_server: str
    to_server: str
    database_bytes: int


class Balancer:
    """Drains and rebalances through ``MoveService`` (so every move is refused, recorded and settled alike)."""

    def __init__(self, platform: Platform, moves: MoveService) -> None:
        self._p = platform
        self._moves = moves

    async def drain(self, server: str, *, limit: int = DEFAULT_LIMIT, requested_by: str | None = None) -> list[Outcome]:
        async with self._p.control.connection() as conn:
            source = await self._p.fleet.set_status(conn, server, ServerStatus.DRAINING)
            tenants = await registry.list_tenants(conn, server_id=source.id)
        outcomes: list[Outcome] = []
        moved = 0
        for tenant in tenants:
            if tenant.status not in MOVABLE_STATUSES:
                outcomes.append(_stays(tenant, f"not moved: the tenant is {tenant.status.value}"))
                continue
            if moved >= limit:
                outcomes.append(_stays(tenant, f"not moved: this round's limit of {limit} moves was reached"))
                continue
            target = await self._least_loaded(exclude=source.id)
            if target is None:
                outcomes.append(_stays(tenant, "not moved: no other active server has room"))
                continue
            outcomes.append(await self._move(tenant, target.name, requested_by))
            moved += 1
        return outcomes

    async def proposals(self, *, limit: int = DEFAULT_LIMIT) -> list[Proposal]:
        async with self._p.control.connection() as conn:
            servers = {s.id: s for s in await fleet_repository.list_servers(conn)}
            tenants = await registry.list_tenants(conn)
            sizes: dict[uuid.UUID, dict[str, int]] = {}
            for server in servers.values():
                try:
                    async with self._p.fleet.admin(conn, server.id) as admin:
                        sizes[server.id] = await catalog.tenant_database_sizes(admin)
                except ServerUnavailable as exc:
                    log.warning("rebalance leaves server %s out: %s", server.name, exc.detail)
        placed = {t.slug: t.server_id for t in tenants if t.server_id in sizes and t.status in MOVABLE_STATUSES}
        size_of = {t.slug: sizes[t.server_id].get(t.database_name, 0) for t in tenants if t.slug in placed}
        load = {sid: sum(size_of[s] for s, at in placed.items() if at == sid) for sid in sizes}
        count = {sid: sum(1 for t in tenants if t.server_id == sid) for sid in sizes}
        room = self._p.settings.moves.server_max_tenants
        proposals: list[Proposal] = []
        while len(proposals) < limit:
            targets = [
                sid for sid in sizes if servers[sid].status is ServerStatus.ACTIVE and (not room or count[sid] < room)
            ]
            heavy = max(sizes, key=lambda sid: load[sid], default=None)
            light = min((sid for sid in targets if sid != heavy), key=lambda sid: load[sid], default=None)
            if heavy is None or light is None:
                break
            gap = load[heavy] - load[light]
            candidates = [s for s, at in placed.items() if at == heavy and 0 < size_of[s] < gap]
            if not candidates:
                break
            slug = min(candidates, key=lambda s: (abs(gap / 2 - size_of[s]), s))
            proposals.append(
                Proposal(slug=slug, from_server=servers[heavy].name, to_server=servers[light].name,
                         database_bytes=size_of[slug])
            )  # fmt: skip
            placed[slug] = light
            load[heavy], load[light] = load[heavy] - size_of[slug], load[light] + size_of[slug]
            count[heavy], count[light] = count[heavy] - 1, count[light] + 1
        return proposals

    async def rebalance(self, *, limit: int = DEFAULT_LIMIT, requested_by: str | None = None) -> list[Outcome]:
        """Perform the proposals, in order (one that is refused or fails does not stop the others)."""
        outcomes = []
        for proposal in await self.proposals(limit=limit):
            tenant = await self._moves.tenant(proposal.slug)
            outcomes.append(await self._move(tenant, proposal.to_server, requested_by))
        return outcomes

    async def _least_loaded(self, *, exclude: uuid.UUID) -> Server | None:
        room = self._p.settings.moves.server_max_tenants
        async with self._p.control.connection() as conn:
            servers = await fleet_repository.list_servers(conn)
        candidates = [
            s for s in servers if s.id != exclude and s.status is ServerStatus.ACTIVE and (not room or s.tenants < room)
        ]
        return min(candidates, key=lambda s: (s.tenants, s.name), default=None)

    async def _move(self, tenant: Tenant, to: str, requested_by: str | None) -> Outcome:
        try:
            move = await self._moves.move(tenant.slug, to, requested_by=requested_by)
        except CardVaultError as exc:
            return Outcome(slug=tenant.slug, from_server=tenant.server_name, to_server=to, error=exc.detail)
        return Outcome(slug=tenant.slug, from_server=tenant.server_name, to_server=to, freeze_ms=move.freeze_ms)


def _stays(tenant: Tenant, why: str) -> Outcome:
    return Outcome(slug=tenant.slug, from_server=tenant.server_name, to_server=None, error=why)
