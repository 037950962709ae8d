"""``create_app(settings)``: the Litestar application with its routes, dependencies and lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from controlplane.accounts.routes import ACCOUNT_HANDLERS
from controlplane.audit.routes import ADMIN_AUDIT_HANDLERS, TENANT_AUDIT_HANDLERS
from controlplane.auth.passwords import Passwords
from controlplane.auth.ratelimit import RateLimiter, counter_from_url
from controlplane.auth.routes import AUTH_ROUTER, TENANT_AUTH_ROUTER
from controlplane.auth.service import Authenticator, hash_secret
from controlplane.auth.sessions import refresh_key
from controlplane.auth.tokens import KeyRing, TokenSigner
from controlplane.cards.routes import TENANT_API_HANDLERS
from controlplane.fleet.routes import ServersController
from controlplane.http import health
from controlplane.http.auth import ADMIN_TOKEN_HASH_STATE_KEY, admin_guard
from controlplane.http.context import before_send
from controlplane.http.errors import EXCEPTION_HANDLERS
from controlplane.http.metrics import (
    METRICS_STATE_KEY,
    METRICS_TOKEN_HASH_STATE_KEY,
    HttpMetrics,
    instrument,
    metrics_endpoint,
)
from controlplane.migrations.routes import migration_status
from controlplane.platform import Platform
from controlplane.pools.routes import pool_stats
from controlplane.pools.service import TenantPools
from controlplane.provisioning.reconciler import Reconciler
from controlplane.provisioning.routes import TenantsController, reconcile
from controlplane.provisioning.service import TenantService
from controlplane.routing.cache import TenantCache
from controlplane.routing.dependencies import (
    API_CALLS_STATE_KEY,
    AUTH_STATE_KEY,
    BASE_DOMAIN_STATE_KEY,
    TENANT_CACHE_STATE_KEY,
    TENANT_POOLS_STATE_KEY,
    TENANT_SLUG_PARAM,
    tenant_api_dependencies,
    tenant_auth_middleware,
)
from controlplane.scheduler.service import Scheduler
from controlplane.settings import Settings
from controlplane.usage.alerts import QuotaAlerts, delete_resolved_alerts
from controlplane.usage.api_calls import ApiCalls
from controlplane.usage.metrics import CardVaultMetrics
from controlplane.usage.operations import HealthMonitor, run_maintenance_window
from controlplane.usage.operations_routes import OPERATIONS_HANDLERS
from controlplane.usage.quotas import delete_expired_expansions
from controlplane.usage.routes import ADMIN_USAGE_HANDLERS, QUOTA_ALERTS_STATE_KEY
from controlplane.usage.service import USAGE_STATE_KEY, UsageService

#: Seconds between re-reads of the signing keys (a rotation elsewhere is picked up within this).
KEY_REFRESH_INTERVAL = 60.0
#: Seconds between maintenance-window runs (each tenant's window is one UTC hour a day).
MAINTENANCE_INTERVAL = 3600.0
#: Seconds between flushes of counted API calls into the registry.
API_CALLS_FLUSH_INTERVAL = 30.0
#: Seconds between clean-ups of expired storage expansions and old resolved alerts.
QUOTA_CLEANUP_INTERVAL = 86400.0


def _platform(state: State) -> Platform:
    platform: Platform = state.platform
    return platform


def _tenants(state: State) -> TenantService:
    service: TenantService = state.tenants
    return service


def create_app(settings: Settings) -> Litestar:
    admin_token = settings.security.admin_token
    # /metrics: in-memory state only (snapshot, pools, cache, jobs) plus HTTP request counts.
    metrics = CardVaultMetrics(
        per_table=settings.usage.metrics_per_table, collection_interval=settings.usage.interval or None
    )
    http_metrics = HttpMetrics()
    metrics.register(http_metrics)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with Platform.open(settings) as platform:
            tenants = TenantService(platform)
            reconciler = Reconciler(platform, tenants)
            scheduler = Scheduler(platform)
            async with platform.control.connection() as conn:
                keys = await KeyRing.load(conn, platform.box)

            async def reload_keys() -> None:
                async with platform.control.connection() as conn:
                    await keys.refresh(conn, platform.box)

            counter = counter_from_url(settings.auth.redis_url or None)
            limiter = RateLimiter(counter)
            auth = Authenticator(
                settings.auth,
                TokenSigner(keys, reload_keys),
                Passwords(settings.auth),
                limiter,
                refresh_key=refresh_key(settings.security.secret_key),
                control=platform.control,
            )
            api_calls = ApiCalls(limiter, platform.control)

            async def reconcile_job() -> str:
                report = await reconciler.run(fix=True)
                return f"{len(report.findings)} finding(s)"

            async def keys_job() -> str:
                await reload_keys()
                return "signing keys reloaded"

            async def flush_api_calls() -> str:
                async with platform.control.connection() as conn:
                    return f"{await api_calls.flush(conn)} tenant-hour(s) flushed"

            scheduler.add_leader_job("reconcile", reconcile_job, settings.provisioning.reconcile_interval)
            scheduler.add_instance_job("reload_signing_keys", keys_job, KEY_REFRESH_INTERVAL)
            scheduler.add_instance_job("flush_api_calls", flush_api_calls, API_CALLS_FLUSH_INTERVAL)

            async def maintenance_window() -> str:
                results = await run_maintenance_window(platform, datetime.now(UTC).hour, concurrency=2)
                failed = sum(not r.ok for r in results)
                return f"vacuumed {len(results) - failed} tenant database(s), {failed} failed"

            scheduler.add_leader_job("maintenance_window", maintenance_window, MAINTENANCE_INTERVAL)
            usage = UsageService(platform)
            await usage.load()  # the last persisted values: /metrics is not empty after a restart
            alerts = QuotaAlerts(platform.control)
            await alerts.refresh()

            async def collect_usage() -> str:
                # Quotas are evaluated on what this collection just measured.
                return f"{await usage.collect_job()}; {await alerts.job()}"

            async def quota_cleanup() -> str:
                async with platform.control.connection() as conn:
                    expansions = await delete_expired_expansions(conn)
                    resolved = await delete_resolved_alerts(conn)
                return f"{expansions} expired expansion(s), {resolved} old resolved alert(s) deleted"

            scheduler.add_leader_job("collect_usage", collect_usage, settings.usage.interval)
            scheduler.add_instance_job("refresh_quota_alerts", alerts.refresh_job, settings.usage.interval)
            scheduler.add_leader_job("quota_cleanup", quota_cleanup, QUOTA_CLEANUP_INTERVAL)
            scheduler.add_leader_job("compact_usage_history", usage.compact_job, settings.usage.compact_interval)
            scheduler.add_instance_job("refresh_usage", usage.refresh_job, settings.usage.interval)
            cache = TenantCache(platform)
            pools = TenantPools(settings.pools, settings.database, cache.credentials)
            # Any registry change to a tenant (here or on another replica) closes its pool.
            cache.on_invalidate(pools.invalidate)
            tenants.on_change(cache.invalidate)
            await cache.start()
            health = HealthMonitor(platform, cache, concurrency=settings.usage.concurrency)
            scheduler.add_leader_job("tenant_health", health.job, settings.usage.health_interval)
            metrics.bind(
                pools=pools, cache=cache, jobs=scheduler, snapshot=lambda: usage.snapshot, quotas=alerts, health=health
            )
            tenants.on_provisioned(metrics.observe_provisioning)
            app.state.platform = platform
            app.state.tenants = tenants
            app.state.scheduler = scheduler
            app.state[TENANT_CACHE_STATE_KEY] = cache
            app.state[TENANT_POOLS_STATE_KEY] = pools
            app.state[BASE_DOMAIN_STATE_KEY] = settings.http.base_domain or None
            app.state[AUTH_STATE_KEY] = auth
            app.state[API_CALLS_STATE_KEY] = api_calls
            app.state[USAGE_STATE_KEY] = usage
            app.state[QUOTA_ALERTS_STATE_KEY] = alerts
            scheduler.start()
            try:
                yield
            finally:
                await scheduler.stop()
                await cache.stop()
                await pools.close()
                try:
                    await flush_api_calls()
                finally:
                    await counter.close()

    admin = Router(
        path="/",
        route_handlers=[
            TenantsController,
            ServersController,
            reconcile,
            migration_status,
            pool_stats,
            *ADMIN_AUDIT_HANDLERS,
            *OPERATIONS_HANDLERS,
            *ADMIN_USAGE_HANDLERS,
        ],
        guards=[admin_guard],
        security=[{"bearer": []}],
    )
    # The tenant API, reachable by path (/t/{slug}/api), or by subdomain or X-Tenant header (/api).
    tenant_api = [
        Router(
            path=path,
            route_handlers=[*TENANT_API_HANDLERS, *TENANT_AUDIT_HANDLERS, *ACCOUNT_HANDLERS],
            dependencies=tenant_api_dependencies(settings),
            request_max_body_size=settings.http.max_image_bytes + 64 * 1024,
            middleware=[tenant_auth_middleware],
            security=[{"bearer": []}],
        )
        for path in (f"/t/{{{TENANT_SLUG_PARAM}:str}}/api", "/api")
    ]
    app = Litestar(
        route_handlers=[
            admin,
            *tenant_api,
            AUTH_ROUTER,
            TENANT_AUTH_ROUTER,
            health.live,
            health.ready,
            metrics_endpoint,
        ],
        dependencies={
            "platform": Provide(_platform, sync_to_thread=False),
            "tenants": Provide(_tenants, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        before_send=[before_send],
        lifespan=[lifespan],
        state=State(
            {
                ADMIN_TOKEN_HASH_STATE_KEY: hash_secret(admin_token) if admin_token else None,
                METRICS_STATE_KEY: metrics,
                METRICS_TOKEN_HASH_STATE_KEY: (
                    hash_secret(settings.security.metrics_token) if settings.security.metrics_token else None
                ),
            }
        ),
        openapi_config=OpenAPIConfig(
            title="CardVault control plane",
            version="0.1.0",
            path="/schema",
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        bearer_format="JWT",
                        description="An access JWT from POST /auth/token (platform) or /t/{slug}/auth/token "
                        "(tenant), a tenant API key (cvk_...), or CARDVAULT_ADMIN_TOKEN for /admin/*",
                    )
                }
            ),
        ),
    )
    instrument(app, http_metrics)
    return app
