"""Litestar glue for tenant resolution: which tenant a request is for, and its ``CardVault``.

The only module of ``routing/`` that knows HTTP. Wiring (in ``create_app``): the lifespan puts the
``TenantCache``, the ``TenantPools`` and the base domain into ``app.state`` under the keys below; the
tenant API routers, mounted at both ``/t/{tenant_slug:str}/api`` and ``/api``, get
``tenant_api_dependencies(settings)``; other routes that need only the tenant use
``tenant_dependencies()``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from controlplane.cards.service import CardVault, QuotaLimits
from controlplane.errors import ServerUnavailable, TenantUnavailable
from controlplane.platform import Platform
from controlplane.pools.service import TenantPools
from controlplane.registry import repository as registry
from controlplane.registry.models import QuotaType
from controlplane.routing.cache import TenantCache
from controlplane.routing.models import TenantContext
from controlplane.routing.resolver import admit, resolve, resolve_slug
from controlplane.settings import Settings
from controlplane.storage.local import LocalStorage

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
    return await _resolve(request, tenant_cache)


async def _resolve(request: Request[Any, Any, Any], cache: TenantCache) -> TenantContext:
    path_slug = request.path_params.get(TENANT_SLUG_PARAM)
    slug = resolve_slug(
        path_slug if isinstance(path_slug, str) else None,
        request.headers.get("host"),
        request.headers.get(TENANT_HEADER),
        request.app.state.get(BASE_DOMAIN_STATE_KEY),
    )
    return await resolve(cache, slug)


def quota_limits_for(platform: Platform, tenant_id: uuid.UUID) -> QuotaLimits:
    """Looks one of the tenant's limits up in the registry when called.

    Lazy, so that reads never touch the control database; only a create that checks a quota does.
    """

    async def limit_of(quota: QuotaType) -> int | None:
        async with platform.control.connection() as conn:
            return await registry.get_quota_limit(conn, tenant_id, quota)

    return limit_of


def tenant_api_dependencies(settings: Settings) -> dict[str, Provide]:
    """``vault`` for the tenant API routes, in one step: resolve the tenant, take a pooled connection to
    its own database (as its own role), and open its ``CardVault`` on it.

    One dependency rather than a chain of six: Litestar's dependency resolution is a large share of
    a hot read's cost. The request owns the transaction: committed when the handler returns, rolled
    back when it raises.
    """
    storage = LocalStorage(settings.data_dir / "storage")
    max_image_bytes = settings.http.max_image_bytes

    async def provide_vault(request: Request[Any, Any, Any]) -> AsyncIterator[CardVault]:
        state = request.app.state
        cache: TenantCache = state[TENANT_CACHE_STATE_KEY]
        tenant = await _resolve(request, cache)
        pools: TenantPools = state[TENANT_POOLS_STATE_KEY]
        try:
            async with pools.connection(tenant.id) as conn:
                yield CardVault(
                    conn,
                    tenant.id,
                    storage=storage,
                    quota_limits=quota_limits_for(state.platform, tenant.id),
                    max_image_bytes=max_image_bytes,
                )
        except TenantUnavailable:  # no connection, or it was lost under the request
            await _recheck(cache, tenant)
            raise

    return {"vault": Provide(provide_vault)}


async def _recheck(cache: TenantCache, tenant: TenantContext) -> None:
    """Raise what the registry says now if the tenant may no longer be served as ``tenant`` says.

    Another replica's suspend, delete or rename locks the tenant's role out (or moves its slug) before
    this replica's cache has heard of it: a request in that window gets 423, 410 or 404, not 503.
    Only failed requests pay for it (one registry read).
    """
    try:
        current = await cache.current(tenant.id)
    except ServerUnavailable:
        return  # the registry cannot be asked either: the 503 stands
    admit(current, tenant.slug)


def tenant_dependencies() -> dict[str, Provide]:
    """``tenant_cache`` and ``tenant``, for routes that need the tenant but not its database."""
    return {
        "tenant_cache": Provide(provide_tenant_cache, sync_to_thread=False),
        "tenant": Provide(provide_tenant),
    }
