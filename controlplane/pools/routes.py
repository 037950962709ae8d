"""Admin API: ``GET /admin/pools``, the tenant pools and the registry cache at a glance."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.datastructures import State

from controlplane.pools.models import PoolStats
from controlplane.pools.service import TenantPools
from controlplane.routing.cache import TenantCache
from controlplane.routing.dependencies import TENANT_CACHE_STATE_KEY, TENANT_POOLS_STATE_KEY


@get("/admin/pools", tags=["operations"], summary="Tenant pool and registry cache statistics")
async def pool_stats(state: State) -> dict[str, Any]:
    pools: TenantPools = state[TENANT_POOLS_STATE_KEY]
    cache: TenantCache = state[TENANT_CACHE_STATE_KEY]
    stats: PoolStats = pools.stats()
    lookups = stats.hits + stats.misses
    return {
        "pools": stats,
        "pool_hit_ratio": stats.hits / lookups if lookups else None,
        "registry_cache": cache.snapshot(),
    }
