"""The tenant connection stack of a serving process, wired and started in order, stopped in reverse.

``TenantCache`` (registry entries, invalidated by LISTEN/NOTIFY), ``PgBouncers`` (configuration of the
PgBouncers in front of servers, re-rendered after every tenant change), ``ReplicaReads`` (which read
replica may serve a tenant's read) and ``TenantPools`` (the LRU of per-tenant pools, replica pools
included, under one connection budget). A registry change to a tenant, made here or by another process,
reaches each of them through the cache's invalidation callbacks.
"""

from __future__ import annotations

import dataclasses

from controlplane.fleet.pgbouncer import PgBouncers
from controlplane.platform import Platform
from controlplane.pools.models import STATEMENT_TIMEOUT
from controlplane.pools.service import TenantPools
from controlplane.routing.cache import TenantCache
from controlplane.routing.replica_monitor import ReplicaMonitor
from controlplane.routing.replica_reads import ReplicaReads


@dataclasses.dataclass(frozen=True)
class TenantRouting:
    cache: TenantCache
    pools: TenantPools
    replicas: ReplicaReads
    pgbouncers: PgBouncers

    @classmethod
    async def start(cls, platform: Platform) -> TenantRouting:
        settings = platform.settings
        pgbouncers = PgBouncers(
            platform.control, platform.box, settings.pools, settings.database, statement_timeout=STATEMENT_TIMEOUT
        )
        cache = TenantCache(platform, pgbouncers=pgbouncers)
        # Tenant reads may go to a server's read replicas: their pools share the LRU and the budget.
        replicas = ReplicaReads(ReplicaMonitor(platform, settings.replicas), cache.credentials)
        pools = TenantPools(settings.pools, settings.database, replicas.conninfo_for)
        replicas.bind(pools)
        # A registry change to a tenant closes its pool once, when the change's notification arrives.
        for forget in (replicas.invalidate, pools.invalidate, pgbouncers.on_invalidate):
            cache.on_invalidate(forget)
        await cache.start()
        await replicas.monitor.start()
        await pgbouncers.sync()
        return cls(cache, pools, replicas, pgbouncers)

    async def stop(self) -> None:
        await self.cache.stop()
        await self.replicas.monitor.stop()
        await self.pgbouncers.close()
        await self.pools.close()
