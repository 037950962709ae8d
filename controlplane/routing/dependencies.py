"""Litestar glue for tenant resolution: the ``tenant`` dependency of every tenant API handler.

The only module of ``routing/`` that knows HTTP. Wiring (in ``create_app``):

- lifespan: ``cache = TenantCache(platform)``, ``await cache.start()``, then
  ``app.state[TENANT_CACHE_STATE_KEY] = cache`` and ``app.state[BASE_DOMAIN_STATE_KEY] = <base domain or
  None>``; on the way out ``await cache.stop()`` (before the platform closes);
- ``dependencies=tenant_dependencies()`` on the app or on the tenant API router;
- tenant API routes mounted under both ``/t/{tenant_slug:str}/api`` and ``/api``; handlers take
  ``tenant: NamedDependency[TenantContext]`` (Litestar 2.23+ deprecates dependencies inferred from a
  bare annotation).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from controlplane.cards.service import QuotaLimits
from controlplane.db import AsyncConn
from controlplane.errors import ServerUnavailable, TenantUnavailable
from controlplane.platform import Platform
from controlplane.pools.service import TenantPools
from controlplane.registry import repository as registry
from controlplane.registry.models import QuotaType
from controlplane.routing.cache import TenantCache
from controlplane.routing.models import TenantContext
from controlplane.routing.resolver import admit, resolve, resolve_slug

#: ``app.state`` key of the ``TenantCache``.
TENANT_CACHE_STATE_KEY = "tenant_cache"
#: ``app.state`` key of the ``TenantPools``.
TENANT_POOLS_STATE_KEY = "tenant_pools"
#: ``app.state`` key of the base domain for ``{slug}.{base_domain}`` hosts (None: no subdomain routing).
BASE_DOMAIN_STATE_KEY = "base_domain"
#: Path parameter that carries the slug in ``/t/{tenant_slug:str}/api/...``.
TENANT_SLUG_PARAM = "tenant_slug"
#: Header that names the tenant with ``/api/...``.
TENANT_HEADER = "x-tenant"


def provide_tenant_cache(state: State) -> TenantCache:
    """The app's ``TenantCache`` (dependency ``tenant_cache``)."""
    cache: TenantCache = state[TENANT_CACHE_STATE_KEY]
    return cache


async def provide_tenant(request: Request[Any, Any, Any], tenant_cache: NamedDependency[TenantCache]) -> TenantContext:
    """The active tenant the request is for (dependency ``tenant``), or the error saying why not."""
    path_slug = request.path_params.get(TENANT_SLUG_PARAM)
    slug = resolve_slug(
        path_slug if isinstance(path_slug, str) else None,
        request.headers.get("host"),
        request.headers.get(TENANT_HEADER),
        request.app.state.get(BASE_DOMAIN_STATE_KEY),
    )
    return await resolve(tenant_cache, slug)


async def provide_tenant_db(
    state: State, tenant: NamedDependency[TenantContext], tenant_cache: NamedDependency[TenantCache]
) -> AsyncIterator[AsyncConn]:
    """A pooled connection to the tenant's own database as its own role (dependency ``tenant_db``).

    Committed when the handler returns, rolled back when it raises: the request owns the transaction.
    """
    pools: TenantPools = state[TENANT_POOLS_STATE_KEY]
    try:
        async with pools.connection(tenant.id) as conn:
            yield conn
    except TenantUnavailable:  # no connection, or it was lost under the request
        await _recheck(tenant_cache, tenant)
        raise


async def _recheck(cache: TenantCache, tenant: TenantContext) -> None:
    """Raise what the registry says now if the tenant may no longer be served as ``tenant`` says.

    A suspend, delete or rename locks the tenant's role out (or moves its slug) before every replica's
    cache has heard of it: a request in that window must get 423, 410 or 404, not 503.
    """
    try:
        current = await cache.current(tenant.id)
    except ServerUnavailable:
        return  # the registry cannot be asked either: the 503 stands
    admit(current, tenant.slug)


def provide_quota_limits(state: State, tenant: NamedDependency[TenantContext]) -> QuotaLimits:
    """Dependency ``quota_limits``: looks one of the tenant's limits up in the registry when called.

    Lazy, so that reads never touch the control database; only a create that checks a quota does.
    """
    platform: Platform = state.platform

    async def limit_of(quota: QuotaType) -> int | None:
        async with platform.control.connection() as conn:
            return await registry.get_quota_limit(conn, tenant.id, quota)

    return limit_of


def tenant_dependencies() -> dict[str, Provide]:
    """``tenant_cache``, ``tenant``, ``tenant_db`` and ``quota_limits`` for the tenant API router."""
    return {
        "tenant_cache": Provide(provide_tenant_cache, sync_to_thread=False),
        "tenant": Provide(provide_tenant),
        "tenant_db": Provide(provide_tenant_db),
        "quota_limits": Provide(provide_quota_limits, sync_to_thread=False),
    }
