"""Where a tenant read goes: a usable replica of the tenant's server, or its primary.

Replica connections come from the same ``TenantPools`` as the primary ones, under the same budget and
LRU: a (tenant, replica) pair is one more LRU entry, keyed by ``uuid5(tenant id, replica id)``, whose
DSN (``conninfo_for``) is the tenant's own role, password and database at the replica's address (a
physical replica has the same roles). Every other key is a tenant id and gets the tenant's primary DSN,
as before. When the registry cache invalidates a tenant (a suspend, a move, its server's replicas
changed), its replica pools are dropped with its primary pool and the monitor re-reads the list.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from controlplane.context import TenantContext
from controlplane.errors import TenantUnavailable
from controlplane.fleet.replicas import tenant_dsn
from controlplane.pools.service import TenantPools
from controlplane.routing.replica_monitor import ReplicaMonitor


class ReplicaRoute(NamedTuple):
    """A read sent to a replica: the pool key to take its connection with, and which replica."""

    key: uuid.UUID
    replica_id: uuid.UUID


class _Pair(NamedTuple):
    tenant_id: uuid.UUID
    replica_id: uuid.UUID


class ReplicaReads:
    """Routes tenant reads to replicas (``route``) and gives ``TenantPools`` their DSNs (``conninfo_for``).

    ``bind(pools)`` once the pools exist (they are built with ``conninfo_for``); the app registers
    ``invalidate`` with the registry cache next to ``pools.invalidate``.
    """

    def __init__(self, monitor: ReplicaMonitor, credentials: Callable[[uuid.UUID], Awaitable[str]]) -> None:
        self.monitor = monitor
        self._credentials = credentials
        self._pairs: dict[uuid.UUID, _Pair] = {}  # replica pool key -> (tenant, replica)
        self._keys: dict[uuid.UUID, set[uuid.UUID]] = {}  # tenant id -> its replica pool keys
        self._pools: TenantPools | None = None

    def bind(self, pools: TenantPools) -> None:
        self._pools = pools

    def route(self, tenant: TenantContext, min_lsn: int | None) -> ReplicaRoute | None:
        """The replica to serve a read of ``tenant`` from (replayed at least to ``min_lsn`` when given),
        or None: the primary serves it."""
        state = self.monitor.usable(tenant.server_id, min_lsn)
        if state is None:
            return None
        replica_id = state.replica.id
        key = uuid.uuid5(tenant.id, replica_id.hex)
        if key not in self._pairs:
            self._pairs[key] = _Pair(tenant.id, replica_id)
            self._keys.setdefault(tenant.id, set()).add(key)
        return ReplicaRoute(key, replica_id)

    def has_replicas(self, tenant: TenantContext) -> bool:
        """Whether the tenant's server lists replicas (its writes then answer their WAL position)."""
        return self.monitor.has_replicas(tenant.server_id)

    def failed(self, route: ReplicaRoute, reason: str) -> None:
        """A read could not use the replica: later reads avoid it until the monitor finds it well."""
        self.monitor.suspect(route.replica_id, reason)

    def served(self, route: ReplicaRoute) -> None:
        self.monitor.served(route.replica_id)

    async def conninfo_for(self, key: uuid.UUID) -> str:
        """``TenantPools``' DSN source: a replica pool's tenant DSN at the replica, else the primary's."""
        pair = self._pairs.get(key)
        if pair is None:
            return await self._credentials(key)
        target = self.monitor.target(pair.replica_id)
        if target is None:
            raise TenantUnavailable("the read replica is no longer registered", retry_after=1)
        return tenant_dsn(await self._credentials(pair.tenant_id), target.dsn)

    async def invalidate(self, tenant_id: uuid.UUID) -> None:
        """Drop the tenant's replica pools (the registry changed it or its server) and re-check replicas."""
        keys = self._keys.pop(tenant_id, set())
        for key in keys:
            self._pairs.pop(key, None)
            if self._pools is not None:
                await self._pools.invalidate(key)
        self.monitor.wake()
