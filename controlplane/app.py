"""``create_app(settings)``: the Litestar application with its routes, dependencies and lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from controlplane.cards.routes import TENANT_API_HANDLERS
from controlplane.errors import ConfigError
from controlplane.fleet.routes import ServersController
from controlplane.http import health
from controlplane.http.auth import admin_guard
from controlplane.http.errors import EXCEPTION_HANDLERS
from controlplane.migrations.routes import migration_status
from controlplane.platform import Platform
from controlplane.pools.routes import pool_stats
from controlplane.pools.service import TenantPools
from controlplane.provisioning.reconciler import Reconciler
from controlplane.provisioning.routes import TenantsController, reconcile
from controlplane.provisioning.service import TenantService
from controlplane.routing.cache import TenantCache
from controlplane.routing.dependencies import (
    BASE_DOMAIN_STATE_KEY,
    TENANT_CACHE_STATE_KEY,
    TENANT_POOLS_STATE_KEY,
    TENANT_SLUG_PARAM,
    tenant_api_dependencies,
)
from controlplane.scheduler.service import Scheduler
from controlplane.settings import Settings


def _platform(state: State) -> Platform:
    platform: Platform = state.platform
    return platform


def _tenants(state: State) -> TenantService:
    service: TenantService = state.tenants
    return service


def create_app(settings: Settings) -> Litestar:
    if not settings.security.admin_token:
        raise ConfigError("CARDVAULT_ADMIN_TOKEN is not set")

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with Platform.open(settings) as platform:
            tenants = TenantService(platform)
            reconciler = Reconciler(platform, tenants)
            scheduler = Scheduler(platform)

            async def reconcile_job() -> str:
                report = await reconciler.run(fix=True)
                return f"{len(report.findings)} finding(s)"

            scheduler.add_leader_job("reconcile", reconcile_job, settings.provisioning.reconcile_interval)
            cache = TenantCache(platform)
            pools = TenantPools(settings.pools, settings.database, cache.credentials)
            # Any registry change to a tenant (here or on another replica) closes its pool.
            cache.on_invalidate(pools.invalidate)
            tenants.on_change(cache.invalidate)
            await cache.start()
            app.state.platform = platform
            app.state.tenants = tenants
            app.state.scheduler = scheduler
            app.state[TENANT_CACHE_STATE_KEY] = cache
            app.state[TENANT_POOLS_STATE_KEY] = pools
            app.state[BASE_DOMAIN_STATE_KEY] = settings.http.base_domain or None
            scheduler.start()
            try:
                yield
            finally:
                await scheduler.stop()
                await cache.stop()
                await pools.close()

    admin = Router(
        path="/",
        route_handlers=[TenantsController, ServersController, reconcile, migration_status, pool_stats],
        guards=[admin_guard],
        security=[{"adminToken": []}],
    )
    # The tenant API, reachable by path (/t/{slug}/api), or by subdomain or X-Tenant header (/api).
    tenant_api = [
        Router(
            path=path,
            route_handlers=TENANT_API_HANDLERS,
            dependencies=tenant_api_dependencies(settings),
            request_max_body_size=settings.http.max_image_bytes + 64 * 1024,
        )
        for path in (f"/t/{{{TENANT_SLUG_PARAM}:str}}/api", "/api")
    ]
    return Litestar(
        route_handlers=[admin, *tenant_api, health.live, health.ready],
        dependencies={
            "platform": Provide(_platform, sync_to_thread=False),
            "tenants": Provide(_tenants, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        state=State({"admin_token": settings.security.admin_token}),
        openapi_config=OpenAPIConfig(
            title="CardVault control plane",
            version="0.1.0",
            path="/schema",
            components=Components(
                security_schemes={
                    "adminToken": SecurityScheme(type="http", scheme="bearer", description="CARDVAULT_ADMIN_TOKEN")
                }
            ),
        ),
    )
