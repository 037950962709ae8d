"""The tenant detail page of the super-admin dashboard: ``GET /admin/ui/tenants/{slug}``.

One page answers "how is this tenant doing, and what can I do about it": the registry row, quotas,
storage by kind, tables, the storage growth chart with its projection, request performance, pools,
backups, billing and the platform audit, then the action forms (``tenant_actions`` posts them).

Everything is read with the same services and repositories the admin API's routes use (usage and
quotas, ``usage.performance``, backups, billing, audit), so the page and ``/admin/tenants/{slug}/...``
never disagree. The two slow, live checks (a fresh connection as the tenant's role, and
``pg_stat_statements`` on its server) are on ``GET .../diagnostics``, which the page pulls in with htmx
after it loads; without JavaScript the page links to it (a full page then).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from litestar import Request, get
from litestar.params import FromPath, FromQuery
from litestar.response import Template
from markupsafe import Markup

from controlplane.audit import service as audit
from controlplane.backups import repository as backup_repository
from controlplane.backups.models import BackupStatus
from controlplane.backups.service import BackupService
from controlplane.billing.service import BillingService
from controlplane.errors import CardVaultError
from controlplane.http.admin import admin_principal
from controlplane.http.state import (
    BACKUPS_STATE_KEY,
    BILLING_STATE_KEY,
    PLATFORM_STATE_KEY,
    TENANT_CACHE_STATE_KEY,
    TENANT_POOLS_STATE_KEY,
    TENANTS_STATE_KEY,
    USAGE_STATE_KEY,
)
from controlplane.maintenance import service as maintenance
from controlplane.platform import Platform
from controlplane.pools.service import TenantPools
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import TIER_QUOTAS, QuotaType, Tenant, Tier
from controlplane.usage import capacity, capacity_repository, quotas, trends
from controlplane.usage.collector import DIRECTORY
from controlplane.usage.performance import TenantPerformance, tenant_performance
from controlplane.usage.service import UsageService
from controlplane.web.charts import Limit, Series, line_chart
from controlplane.web.pages import is_htmx, page
from controlplane.web.sessions import ADMIN_UI_PATH
from controlplane.web.templating import human_bytes, when

#: Days of usage history the growth chart shows, and how far ahead its projection reaches at most.
HISTORY_DAYS = 30
PROJECTION_DAYS = 30
#: Hours of request performance the charts show.
PERFORMANCE_HOURS = 48
#: Rows of the backups, audit and slow query lists.
BACKUPS_SHOWN = 10
AUDIT_SHOWN = 15
SLOW_QUERIES_SHOWN = 10

#: The fixed messages of ``?done=<code>`` after a successful action (never text from the URL).
DONE_MESSAGES = {
    "suspended": "{slug} suspended",
    "resumed": "{slug} resumed",
    "tier": "{slug}'s tier changed",
    "quotas": "{slug}'s quotas saved",
    "expanded": "Extra storage granted to {slug}",
    "analyze": "ANALYZE of {slug} finished",
    "vacuum": "VACUUM of {slug} finished",
    "backup": "Backup of {slug} started: it runs in the background",
    "restored": "{slug} restored from the backup",
}

#: How each quota reads on the page, and whether its numbers are bytes.
QUOTA_LABELS = {
    QuotaType.STORAGE_BYTES: "Storage",
    QuotaType.CARDS: "Cards",
    QuotaType.USERS: "Users",
    QuotaType.API_CALLS_PER_HOUR: "API calls this hour",
}
METRIC_LABELS = {"database_bytes": "Database", "storage_bytes": "Storage", "cards": "Cards", "users": "Users"}


def tenant_url(slug: str) -> str:
    return f"{ADMIN_UI_PATH}/tenants/{slug}"


async def find_tenant(request: Request[Any, Any, Any], slug: str) -> Tenant:
    """The tenant (``TenantNotFound``, a 404 page, for an unknown or malformed slug)."""
    tenants: TenantService = request.app.state[TENANTS_STATE_KEY]
    return await tenants.get(slug)


def growth_chart(
    history: list[tuple[datetime, float]], line: trends.Trend | None, current: float, limit: int | None, now: datetime
) -> Markup:
    """Storage bytes over the history, a dashed projection from now along the trend (to the limit, or
    ``PROJECTION_DAYS`` ahead) and the effective limit as a line."""
    series = [Series("Storage used", history, area=True)]
    if line is not None and line.slope_per_day > 0:
        days = trends.days_until(line, current, limit)
        ahead = min(days, PROJECTION_DAYS) if days else PROJECTION_DAYS
        series.append(
            Series(
                "Projection",
                [(now, current), (now + timedelta(days=ahead), current + line.slope_per_day * ahead)],
                css="projection",
            )
        )
    limits = [Limit("Quota", float(limit))] if limit is not None else []
    return line_chart("Storage used over time", series, limits=limits, fmt=human_bytes)


def performance_charts(perf: TenantPerformance) -> dict[str, Markup]:
    """Requests by status class, error rates (percent) and latency (milliseconds) per hour."""
    points = perf.points
    by_class = [
        Series(name, [(p.hour, float(p.by_class.get(name, 0))) for p in points], css=css)
        for name, css in (("2xx", "series"), ("4xx", "series-2"), ("5xx", "series-bad"))
    ]
    rates = [
        Series("5xx rate", [(p.hour, 100 * p.error_rate) for p in points if p.error_rate is not None], "series-bad"),
        Series(
            "4xx rate",
            [(p.hour, 100 * p.client_error_rate) for p in points if p.client_error_rate is not None],
            "series-2",
        ),
    ]
    latency = [
        Series("p50", [(p.hour, 1000 * p.p50_seconds) for p in points if p.p50_seconds is not None]),
        Series("p95", [(p.hour, 1000 * p.p95_seconds) for p in points if p.p95_seconds is not None], "series-bad"),
    ]
    no_requests = f"No requests in the last {perf.hours} hours"
    return {
        "requests_chart": line_chart("Requests per hour by status class", by_class, empty=no_requests),
        "errors_chart": line_chart(
            "Error rate per hour (percent)", rates, fmt=lambda v: f"{v:.0f}%", empty=no_requests
        ),
        "latency_chart": line_chart(
            "Latency per hour (milliseconds)", latency, fmt=lambda v: f"{v:,.0f} ms", empty=no_requests
        ),
    }


async def _usage_section(platform: Platform, tenant: Tenant) -> dict[str, Any]:
    """Quotas, growth and projections as ``GET /admin/tenants/{slug}/usage`` computes them; the
    performance, retained backups and the platform audit of the tenant."""
    bucket = capacity.history_bucket(HISTORY_DAYS)
    async with platform.control.connection() as conn:
        now = await capacity_repository.db_now(conn)
        statuses = await quotas.quota_status(conn, tenant.id)
        expansions = await quotas.active_expansions(conn, tenant.id)
        history = await capacity.history(conn, tenant.id, days=HISTORY_DAYS, bucket=bucket)
        points = await capacity.trend_points(conn, tenant.id)
        latest = await capacity.latest_values(conn, tenant.id)
        perf = await tenant_performance(conn, tenant.id, tenant.slug, PERFORMANCE_HOURS)
        retained = await backup_repository.retained(conn, [tenant.id])
        query = audit.audit_query(audit.PLATFORM_LISTING, tenant_slug=tenant.slug, limit=AUDIT_SHOWN)
        audit_page = await audit.platform_page(conn, query)
    by_quota = {s.quota: s for s in statuses}
    current = dict(latest)
    for metric, quota in trends.METRIC_QUOTAS.items():
        if quota in by_quota:
            current[metric] = float(by_quota[quota].usage)
    projections = trends.projections(points, current, {s.quota: s.effective_limit for s in statuses}, now)
    storage = by_quota.get(QuotaType.STORAGE_BYTES)
    chart = growth_chart(
        history.get("storage_bytes", []),
        trends.trend(points.get("storage_bytes", [])),
        float(storage.usage) if storage else current.get("storage_bytes", 0.0),
        storage.effective_limit if storage else None,
        now,
    )
    return {
        "history_days": HISTORY_DAYS,
        "quotas": sorted(statuses, key=lambda s: list(QUOTA_LABELS).index(s.quota)),
        "tier_limits": TIER_QUOTAS[tenant.subscription_tier],
        "expansions": expansions,
        "projections": projections,
        "growth_chart": chart,
        "performance": perf,
        **performance_charts(perf),
        "backup_bytes": retained[0].size if retained else 0,
        "backup_count": retained[0].number if retained else 0,
        "audit_entries": audit_page.items,
    }


async def detail_context(request: Request[Any, Any, Any], tenant: Tenant) -> dict[str, Any]:
    """Everything the detail page shows of ``tenant``."""
    state = request.app.state
    platform: Platform = state[PLATFORM_STATE_KEY]
    usage: UsageService = state[USAGE_STATE_KEY]
    pools: TenantPools = state[TENANT_POOLS_STATE_KEY]
    backups: BackupService = state[BACKUPS_STATE_KEY]
    billing: BillingService = state[BILLING_STATE_KEY]
    measured = usage.snapshot.tenants.get(tenant.id)
    recent_backups = await backups.list_for_tenant(tenant, BACKUPS_SHOWN)
    restorable = [b for b in recent_backups if b.status is BackupStatus.SUCCEEDED]
    return {
        "tenant": tenant,
        "slug": tenant.slug,
        "url": tenant_url(tenant.slug),
        "measured": measured,
        "files": sorted(
            ((kind, s) for kind, s in measured.storage.items() if kind != DIRECTORY), key=lambda kv: -kv[1].bytes
        )
        if measured
        else [],
        "tables": sorted(measured.tables, key=lambda t: -t.total_bytes) if measured else [],
        "pool_open": pools.is_open(tenant.id),
        "pool_stats": pools.stats(),
        "backups": recent_backups,
        "restorable": restorable,
        "backup_options": [(str(b.id), f"{when(b.created_at)} ({human_bytes(b.bytes)})") for b in restorable],
        "billing": await billing.overview(tenant.id),
        "maintenance_hour": maintenance.maintenance_hour(tenant),
        "tiers": [(t.value, t.value.title()) for t in Tier],
        "quota_labels": QUOTA_LABELS,
        "metric_labels": METRIC_LABELS,
        **await _usage_section(platform, tenant),
    }


async def render_detail(
    request: Request[Any, Any, Any],
    slug: str,
    *,
    flash: str | None = None,
    flash_error: str | None = None,
    form: dict[str, str] | None = None,
    status_code: int = 200,
) -> Template:
    """The detail page; ``tenant_actions`` re-renders it with ``flash_error`` and the values posted
    (``form``) when an action is refused."""
    tenant = await find_tenant(request, slug)
    return page(
        request,
        "admin/tenant_detail.html",
        principal=admin_principal(request),
        title=f"Tenant {tenant.slug}",
        flash=flash,
        flash_error=flash_error,
        form=form or {},
        status_code=status_code,
        **await detail_context(request, tenant),
    )


@get("/tenants/{slug:str}", name="admin_ui_tenant_detail", summary="One tenant: usage, performance, actions")
async def tenant_detail(
    request: Request[Any, Any, Any], slug: FromPath[str], done: FromQuery[str | None] = None
) -> Template:
    message = DONE_MESSAGES.get(done or "")
    return await render_detail(request, slug, flash=message.format(slug=slug) if message else None)


@get("/tenants/{slug:str}/diagnostics", name="admin_ui_tenant_diagnostics", summary="Health check and slow queries")
async def tenant_diagnostics(request: Request[Any, Any, Any], slug: FromPath[str]) -> Template:
    """The live checks: the page's htmx fragment, or a page of its own without JavaScript."""
    tenant = await find_tenant(request, slug)
    platform: Platform = request.app.state[PLATFORM_STATE_KEY]
    health = await maintenance.check_health(platform, request.app.state[TENANT_CACHE_STATE_KEY], tenant)
    slow, slow_error = [], None
    try:
        slow = await maintenance.slow_queries(platform, tenant, SLOW_QUERIES_SHOWN)
    except CardVaultError as exc:  # pg_stat_statements missing on the server: say how to enable it
        slow_error = exc.detail
    context: dict[str, Any] = {"slug": tenant.slug, "url": tenant_url(tenant.slug), "health": health, "slow": slow}
    template = "admin/tenant_diagnostics.html" if is_htmx(request) else "admin/tenant_diagnostics_page.html"
    return page(
        request,
        template,
        principal=admin_principal(request),
        title=f"Diagnostics of {tenant.slug}",
        slow_error=slow_error,
        **context,
    )


HANDLERS: list[Any] = [tenant_detail, tenant_diagnostics]
