"""``create_app(settings)``: the Litestar application with its routes, dependencies and lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide

from controlplane.accounts.login_routes import (
    ADMIN_LOGIN_HANDLERS,
    AUTH_ROUTER,
    TENANT_AUTH_ROUTER,
    accept_invitation,
    logout,
    refresh,
    token,
)
from controlplane.accounts.routes import ACCOUNT_HANDLERS
from controlplane.audit.routes import ADMIN_AUDIT_HANDLERS, TENANT_AUDIT_HANDLERS
from controlplane.auth.batched_limit import BatchedLimiter
from controlplane.auth.passwords import Passwords
from controlplane.auth.principal_events import PrincipalEvents
from controlplane.auth.ratelimit import RateLimiter, counter_from_url
from controlplane.auth.service import Authenticator, hash_secret
from controlplane.auth.sessions import refresh_key
from controlplane.auth.tokens import KeyRing, TokenSigner
from controlplane.backups.admin_routes import ADMIN_BACKUP_HANDLERS
from controlplane.backups.restore import RestoreService
from controlplane.backups.restore_routes import ADMIN_RESTORE_HANDLERS
from controlplane.backups.routes import TENANT_BACKUP_HANDLERS
from controlplane.backups.schedule import BackupScheduler
from controlplane.backups.service import BackupService
from controlplane.billing.admin_routes import ADMIN_BILLING_USAGE_HANDLERS
from controlplane.billing.inbox import Inbox
from controlplane.billing.metering import Metering
from controlplane.billing.providers import provider_for
from controlplane.billing.routes import (
    ADMIN_BILLING_HANDLERS,
    TENANT_BILLING_HANDLERS,
    billing_portal_link,
    stripe_webhook,
)
from controlplane.billing.service import BillingService
from controlplane.cards.routes import TENANT_API_HANDLERS, request_vaults
from controlplane.http import probes
from controlplane.http.admin import admin_guard
from controlplane.http.context import stamp_headers
from controlplane.http.errors import EXCEPTION_HANDLERS
from controlplane.http.openapi import openapi_config
from controlplane.http.replica_routing import REPLICA_READS, REPLICA_READS_STATE_KEY
from controlplane.http.state import (
    ADMIN_TOKEN_HASH_STATE_KEY,
    API_CALLS_STATE_KEY,
    AUTH_STATE_KEY,
    BACKUPS_STATE_KEY,
    BASE_DOMAIN_STATE_KEY,
    BILLING_INBOX_STATE_KEY,
    BILLING_STATE_KEY,
    BYTES_SERVED_STATE_KEY,
    HYGIENE_STATE_KEY,
    MAIL_STATE_KEY,
    METRICS_STATE_KEY,
    METRICS_TOKEN_HASH_STATE_KEY,
    MOVE_QUEUE_STATE_KEY,
    PLATFORM_STATE_KEY,
    PRIVACY_STATE_KEY,
    QUOTA_ALERTS_STATE_KEY,
    RESTORES_STATE_KEY,
    SIGNUPS_STATE_KEY,
    SSO_STATE_KEY,
    TENANT_CACHE_STATE_KEY,
    TENANT_POOLS_STATE_KEY,
    TENANT_REQUESTS_STATE_KEY,
    TENANT_SLUG_PARAM,
    TENANTS_STATE_KEY,
    USAGE_STATE_KEY,
    VAULTS_STATE_KEY,
)
from controlplane.http.tenant_api import (
    authenticate_tenant,
    pin_tenant,
    refuse_new_tenants,
    tenant_dependencies,
    tenant_request_dependencies,
)
from controlplane.hygiene.delivery_routes import (
    PUBLIC_DELIVERY_HANDLERS,
    TENANT_DELIVERY_HANDLERS,
    delivery_dependencies,
)
from controlplane.hygiene.routes import ADMIN_HYGIENE_HANDLERS
from controlplane.hygiene.service import StorageHygiene
from controlplane.importer.routes import ADMIN_IMPORT_HANDLERS
from controlplane.importer.single_tenant import ensure_default_tenant
from controlplane.mail.sender import MailSender
from controlplane.maintenance.routes import MAINTENANCE_HANDLERS
from controlplane.maintenance.service import HealthMonitor
from controlplane.metrics.requests import HttpMetrics, instrument
from controlplane.metrics.routes import ADMIN_METRICS_HANDLERS, METRICS_HANDLERS
from controlplane.metrics.service import CardVaultMetrics
from controlplane.migrations.routes import migration_status
from controlplane.moves.routes import ADMIN_MOVE_HANDLERS
from controlplane.moves.service import MoveService
from controlplane.onboarding.routes import SIGNUP_HANDLERS, TENANT_ONBOARDING_HANDLERS
from controlplane.onboarding.service import Signups
from controlplane.platform import Platform
from controlplane.privacy.admin_routes import ADMIN_PRIVACY_HANDLERS
from controlplane.privacy.routes import TENANT_PRIVACY_HANDLERS
from controlplane.privacy.service import Privacy
from controlplane.provisioning.pgbouncer_routes import ADMIN_PGBOUNCER_HANDLERS
from controlplane.provisioning.reconciler import Reconciler
from controlplane.provisioning.replica_routes import ADMIN_REPLICA_HANDLERS
from controlplane.provisioning.routes import TenantsController, reconcile
from controlplane.provisioning.server_routes import ServersController
from controlplane.provisioning.service import TenantService
from controlplane.routing.stack import TenantRouting
from controlplane.scheduler.jobs import Jobs
from controlplane.scheduler.service import Scheduler
from controlplane.settings import Settings
from controlplane.sso.oidc import Discovery
from controlplane.sso.routes import ADMIN_SSO_HANDLERS, SSO_AUTH_ROUTER, TENANT_SSO_HANDLERS
from controlplane.sso.service import Sso
from controlplane.tasks.definitions import Services
from controlplane.tasks.fanout import Fanout
from controlplane.tasks.moves import MoveTasks
from controlplane.tasks.queue import TaskQueue
from controlplane.usage.alerts import QuotaAlerts
from controlplane.usage.api_calls import ApiCalls
from controlplane.usage.bytes_served import BytesServed
from controlplane.usage.performance_routes import ADMIN_PERFORMANCE_HANDLERS
from controlplane.usage.request_stats import TenantRequests
from controlplane.usage.routes import ADMIN_USAGE_HANDLERS
from controlplane.usage.service import UsageService
from controlplane.web.pages import WEB_KEYS_STATE_KEY, WebKeys
from controlplane.web.routes import web_routers
from controlplane.web.templating import template_config


def _platform(state: State) -> Platform:
    platform: Platform = state[PLATFORM_STATE_KEY]
    return platform


def _tenants(state: State) -> TenantService:
    service: TenantService = state[TENANTS_STATE_KEY]
    return service


def create_app(settings: Settings) -> Litestar:
    admin_token = settings.security.admin_token
    # CARDVAULT_MULTI_TENANT=0: one tenant at /api, pinned (no /t/{slug}, signup or tenant creation).
    single = not settings.multi_tenant
    pinned = [pin_tenant(settings.default_tenant)] if single else []
    # /metrics: in-memory state only (snapshot, pools, cache, jobs) plus HTTP request counts.
    metrics = CardVaultMetrics(
        per_table=settings.usage.metrics_per_table,
        tenant_series=settings.usage.metrics_tenant_series,
        collection_interval=settings.usage.interval or None,
        server_capacity_bytes=settings.moves.server_capacity_bytes,
        server_max_tenants=settings.moves.server_max_tenants,
    )
    # Per-tenant request classes and latency (persisted hourly; in /metrics unless per-table series are off).
    tenant_requests = TenantRequests(per_tenant=settings.usage.metrics_per_table)
    http_metrics = HttpMetrics(tenants=tenant_requests)
    metrics.register(http_metrics)
    metrics.bind(requests=tenant_requests)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with Platform.open(settings) as platform:
            tenants = TenantService(platform)
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
            # With Redis, API calls reach the shared count in batches (no round trip per call); the login
            # throttle keeps counting every failure there.
            call_limiter = BatchedLimiter(counter) if settings.auth.redis_url else limiter
            api_calls = ApiCalls(call_limiter, platform.control, ceiling=settings.billing.quota_ceiling)
            usage = UsageService(platform)
            await usage.load()  # the last persisted values: /metrics is not empty after a restart
            alerts = QuotaAlerts(platform.control)
            await alerts.refresh()
            # Registry cache, PgBouncer configuration, read replicas and the tenant pools.
            routing = await TenantRouting.start(platform)
            cache, pools, replicas = routing.cache, routing.pools, routing.replicas
            # A change made here is forgotten by the cache at once (other processes' by notification).
            tenants.on_change(cache.invalidate)
            metrics.register(replicas.monitor)
            # Accounts changes reach every instance's principal cache at once (it may then keep them longer).
            principal_events = PrincipalEvents(settings.database, auth)
            await principal_events.start()
            health = HealthMonitor(platform, cache, concurrency=settings.usage.concurrency)
            mail = MailSender(platform.control, settings.mail)
            billing_provider = provider_for(settings.billing)  # None with CARDVAULT_BILLING=none
            metering = Metering(platform, billing_provider) if billing_provider is not None else None
            billing = BillingService(platform, tenants, billing_provider)
            inbox = Inbox(platform, billing)
            backups = BackupService(platform)
            backup_jobs = BackupScheduler(backups)
            restores = RestoreService(platform, tenants, backups)
            await backup_jobs.refresh()  # /metrics knows the backups' standing from the start
            hygiene = StorageHygiene(platform)
            bytes_served = BytesServed()
            privacy = Privacy(platform)
            # Per-tenant fan-out work (usage, backups, overage reports, queued schema upgrades) goes through
            # the queue every process works from.
            queue = TaskQueue(settings)
            await queue.open()
            app.state[MOVE_QUEUE_STATE_KEY] = MoveTasks(queue.app)  # drains and rebalances queue moves
            jobs = Jobs(
                platform,
                Reconciler(platform, tenants),
                reload_keys,
                api_calls,
                usage,
                alerts,
                health,
                mail=mail,
                metering=metering,
                billing=billing,
                inbox=inbox,
                backups=backup_jobs,
                restores=restores,
                moves=MoveService(platform, tenants),
                privacy=privacy,
                hygiene=hygiene,
                bytes_served=bytes_served,
                tenant_requests=tenant_requests,
                fanout=Fanout(platform, queue, usage, backup_jobs),
            )
            jobs.schedule(scheduler)
            metrics.bind(backups=backup_jobs)
            metrics.bind(hygiene=hygiene, served=bytes_served)
            metrics.bind(
                pools=pools, cache=cache, jobs=scheduler, snapshot=lambda: usage.snapshot, quotas=alerts, health=health
            )
            tenants.on_provisioned(metrics.observe_provisioning)
            app.state[PLATFORM_STATE_KEY] = platform
            app.state[TENANTS_STATE_KEY] = tenants
            app.state[TENANT_CACHE_STATE_KEY] = cache
            app.state[TENANT_POOLS_STATE_KEY] = pools
            app.state[REPLICA_READS_STATE_KEY] = replicas
            # Single-tenant mode: no subdomains (every /api request is the default tenant).
            app.state[BASE_DOMAIN_STATE_KEY] = None if single else (settings.http.base_domain or None)
            app.state[AUTH_STATE_KEY] = auth
            app.state[API_CALLS_STATE_KEY] = api_calls
            app.state[USAGE_STATE_KEY] = usage
            app.state[QUOTA_ALERTS_STATE_KEY] = alerts
            app.state[MAIL_STATE_KEY] = mail
            app.state[BILLING_STATE_KEY] = billing
            app.state[BILLING_INBOX_STATE_KEY] = inbox
            app.state[BACKUPS_STATE_KEY] = backups
            app.state[RESTORES_STATE_KEY] = restores
            app.state[SSO_STATE_KEY] = Sso(platform, auth, pools, Discovery())
            app.state[SIGNUPS_STATE_KEY] = Signups(platform, tenants, auth, pools, checkout=billing)
            app.state[PRIVACY_STATE_KEY] = privacy
            app.state[HYGIENE_STATE_KEY] = hygiene
            app.state[BYTES_SERVED_STATE_KEY] = bytes_served
            app.state[TENANT_REQUESTS_STATE_KEY] = tenant_requests
            if single:
                await ensure_default_tenant(tenants, settings.default_tenant)
            if settings.tasks.worker:
                queue.start_worker(Services(platform, usage.collector, backups, billing=billing_provider))
            scheduler.start()
            try:
                yield
            finally:
                await scheduler.stop()
                await queue.close()  # running tasks get a grace period; cut short, they are retried elsewhere
                await backups.stop()  # backups running here stay `running`: the next leader's job retries them
                await privacy.stop()  # exports made here are given back (pending) for another replica
                await tenants.spares.stop()  # a refill started after a claim finishes its spare first
                await principal_events.stop()
                await routing.stop()
                try:
                    await jobs.flush_api_calls()
                    await jobs.flush_bytes_served()
                    await jobs.flush_tenant_requests()
                finally:
                    await counter.close()
                    if billing_provider is not None:
                        await billing_provider.aclose()  # the SDK's HTTP connections of this loop

    admin = Router(
        path="/",
        route_handlers=[
            TenantsController,
            ServersController,
            *ADMIN_PGBOUNCER_HANDLERS,
            *ADMIN_REPLICA_HANDLERS,
            reconcile,
            migration_status,
            *ADMIN_METRICS_HANDLERS,
            *ADMIN_AUDIT_HANDLERS,
            *ADMIN_LOGIN_HANDLERS,
            *MAINTENANCE_HANDLERS,
            *ADMIN_USAGE_HANDLERS,
            *ADMIN_PERFORMANCE_HANDLERS,
            *ADMIN_BILLING_USAGE_HANDLERS,
            *ADMIN_BILLING_HANDLERS,
            *ADMIN_BACKUP_HANDLERS,
            *ADMIN_RESTORE_HANDLERS,
            *ADMIN_MOVE_HANDLERS,
            *ADMIN_PRIVACY_HANDLERS,
            *ADMIN_IMPORT_HANDLERS,
            *ADMIN_SSO_HANDLERS,
            *ADMIN_HYGIENE_HANDLERS,
        ],
        guards=[admin_guard, *([refuse_new_tenants] if single else [])],
        security=[{"bearer": []}],
    )
    # The tenant API, reachable by path (/t/{slug}/api), or by subdomain or X-Tenant header (/api).
    tenant_api = [
        Router(
            path=path,
            route_handlers=[
                *TENANT_API_HANDLERS,
                *TENANT_DELIVERY_HANDLERS,
                *TENANT_AUDIT_HANDLERS,
                *ACCOUNT_HANDLERS,
                *TENANT_ONBOARDING_HANDLERS,
                *TENANT_BILLING_HANDLERS,
                *TENANT_BACKUP_HANDLERS,
                *TENANT_PRIVACY_HANDLERS,
                *TENANT_SSO_HANDLERS,
            ],
            dependencies={
                **tenant_request_dependencies(),
                **tenant_dependencies(),  # ``tenant``: whose image bytes are counted
                **delivery_dependencies(settings),
            },
            request_max_body_size=settings.http.max_image_bytes + 64 * 1024,
            middleware=pinned,
            before_request=authenticate_tenant,  # who and which tenant, before anything else
            security=[{"bearer": []}],
            opt=REPLICA_READS,  # its reads may be served by a read replica (http.replica_routing)
        )
        for path in (("/api",) if single else (f"/t/{{{TENANT_SLUG_PARAM}:str}}/api", "/api"))
    ]
    # Tenant logins at /t/{slug}/auth/* (where invitation mails point), and signup; single-tenant mode adds
    # /api/auth/* for the default tenant (/auth/* stays the platform's) and has no signup.
    single_auth = Router("/api/auth", route_handlers=[token, refresh, logout, accept_invitation], middleware=pinned)
    tenant_logins = (
        [single_auth, TENANT_AUTH_ROUTER] if single else [TENANT_AUTH_ROUTER, SSO_AUTH_ROUTER, *SIGNUP_HANDLERS]
    )
    app = Litestar(
        route_handlers=[
            admin,
            *tenant_api,
            AUTH_ROUTER,
            *tenant_logins,
            # Stripe's webhook and the dunning mails' billing link are public: mounted only with Stripe on.
            *([stripe_webhook, billing_portal_link] if settings.billing.provider == "stripe" else []),
            # Signed file links: public, outside the tenant API's authentication (mounted in both modes).
            Router("/", route_handlers=PUBLIC_DELIVERY_HANDLERS, dependencies=delivery_dependencies(settings)),
            probes.live,
            probes.ready,
            *METRICS_HANDLERS,  # /metrics and /metrics/tenants
            *web_routers(settings),  # the dashboard and the tenant app (after the APIs: /api, /auth stay theirs)
        ],
        template_config=template_config(),
        dependencies={
            "platform": Provide(_platform, sync_to_thread=False),
            "tenants": Provide(_tenants, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        state=State(
            {
                ADMIN_TOKEN_HASH_STATE_KEY: hash_secret(admin_token) if admin_token else None,
                WEB_KEYS_STATE_KEY: WebKeys(settings.security.secret_key),
                METRICS_STATE_KEY: metrics,
                VAULTS_STATE_KEY: request_vaults(settings),  # how the /cards routes open their CardVault
                METRICS_TOKEN_HASH_STATE_KEY: (
                    hash_secret(settings.security.metrics_token) if settings.security.metrics_token else None
                ),
            }
        ),
        openapi_config=openapi_config(),
    )
    instrument(app, http_metrics, on_start=stamp_headers)  # metrics and our response headers
    return app
