"""Admin HTTP face of quotas and capacity: alerts, limit overrides, storage expansions, usage, capacity.

- ``POST /admin/usage/collect``: one usage collection now, then an alert evaluation.
- ``GET /admin/alerts``: quota alert events (open / resolved / all), newest first, keyset pages.
- ``PUT /admin/tenants/{slug}/quotas``: override limits (audited ``tenant.quotas.update``).
- ``POST /admin/tenants/{slug}/quotas/storage-expansion``: temporary extra storage (audited
  ``tenant.storage.expand``).
- ``GET /admin/tenants/{slug}/usage``: one tenant's quotas, history, projections, open alerts, image bytes served.
- ``GET /admin/capacity``: quotas projected to be reached soon, upgrade recommendations, servers.

After a limit change or an expansion the tenant's alerts are re-evaluated at once (through the app's
``QuotaAlerts`` in ``app.state``, so ``/metrics`` follows).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from controlplane.audit.routes import audited
from controlplane.db import AsyncConn
from controlplane.errors import Conflict, InvalidState, TenantNotFound, ValidationFailed
from controlplane.http.admin import admin_principal
from controlplane.http.state import API_CALLS_STATE_KEY, QUOTA_ALERTS_STATE_KEY, USAGE_STATE_KEY
from controlplane.paging import InvalidCursor
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.registry.models import SLUG_PATTERN, TIER_QUOTAS, QuotaType, Tenant, TenantStatus, Tier
from controlplane.usage import alerts, capacity, capacity_repository, quotas, repository, trends
from controlplane.usage.alerts import THRESHOLDS, Alert, AlertState, QuotaAlerts
from controlplane.usage.api_calls import ApiCalls
from controlplane.usage.models import CollectionStats
from controlplane.usage.quotas import MAX_LIMIT, Expansion, QuotaStatus
from controlplane.usage.service import UsageService

_NO_NUL = r"^[^\x00]*$"
_NOT_CHANGEABLE = (TenantStatus.PROVISIONING, TenantStatus.DELETING)


class AlertPage(msgspec.Struct):
    items: list[Alert]
    next_cursor: str | None


class QuotaLimits(msgspec.Struct, forbid_unknown_fields=True):
    #: ``{quota_type: limit}``; null = unlimited. Quotas not named keep their limits.
    limits: dict[str, Annotated[int, msgspec.Meta(ge=0, le=MAX_LIMIT)] | None]


class TenantQuotas(msgspec.Struct):
    slug: str
    quotas: list[QuotaStatus]


class StorageExpansion(msgspec.Struct, forbid_unknown_fields=True):
    extra_bytes: Annotated[int, msgspec.Meta(gt=0, le=MAX_LIMIT)]
    hours: Annotated[int, msgspec.Meta(ge=1, le=720)]
    reason: Annotated[str, msgspec.Meta(min_length=3, max_length=500, pattern=_NO_NUL)]


class ExpansionResult(msgspec.Struct):
    expansion: Expansion
    quota: QuotaStatus


class TenantRef(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    slug: str
    name: str
    tier: Tier
    status: TenantStatus
    server: str


class HistoryPoint(msgspec.Struct):
    at: datetime
    value: float


class BytesServedView(msgspec.Struct, kw_only=True):
    """Card image bytes the tenant was served (bodies sent; 304s send none), from every replica's flush."""

    total: int
    requests: int
    #: Over the view's ``history_days`` (to the last history point, at most five minutes old).
    in_window: int


class TenantUsageView(msgspec.Struct, kw_only=True):
    tenant: TenantRef
    generated_at: datetime
    quotas: list[QuotaStatus]
    expansions: list[Expansion]
    history_days: int
    bucket_seconds: int
    #: Per metric, averaged per bucket, oldest first.
    history: dict[str, list[HistoryPoint]]
    window_days: int
    projections: list[trends.Projection]
    recommendation: trends.Recommendation | None
    alerts: list[Alert]
    bytes_served: BytesServedView


async def _tenant(conn: AsyncConn, slug: str) -> Tenant:
    tenant = await registry.get_by_slug(conn, slug) if SLUG_PATTERN.fullmatch(slug) else None
    if tenant is None:
        raise TenantNotFound(f"no tenant with slug {slug!r}", slug=slug)
    return tenant


async def _locked(conn: AsyncConn, slug: str) -> Tenant:
    """The tenant row locked for the caller's transaction, if its quotas may change now."""
    tenant = await registry.lock_for_update(conn, (await _tenant(conn, slug)).id)
    if tenant is None:  # removed meanwhile
        raise TenantNotFound(f"no tenant with slug {slug!r}", slug=slug)
    if tenant.status in _NOT_CHANGEABLE:
        raise InvalidState(f"tenant {tenant.slug!r} is {tenant.status.value}", status=tenant.status.value)
    return tenant


def _with_tier(statuses: list[QuotaStatus], tier: Tier) -> list[QuotaStatus]:
    return [msgspec.structs.replace(s, tier_limit=TIER_QUOTAS[tier].get(s.quota)) for s in statuses]


async def _after_change(request: Request[Any, Any, Any], tenant_id: uuid.UUID) -> None:
    """Re-evaluate the tenant's alerts now, and drop this instance's cached API call limit."""
    calls: ApiCalls = request.app.state[API_CALLS_STATE_KEY]
    calls.forget(tenant_id)
    evaluator: QuotaAlerts = request.app.state[QUOTA_ALERTS_STATE_KEY]
    await evaluator.evaluate(tenant_id=tenant_id)


def _snapshot_servers(state: State) -> dict[str, capacity.SnapshotServer] | None:
    usage: UsageService = state[USAGE_STATE_KEY]
    snapshot = usage.snapshot
    if not snapshot.servers:
        return None
    return {
        name: capacity.SnapshotServer(
            tenants=s.tenants,
            database_bytes=s.database_bytes,
            connections=s.connections,
            max_connections=s.max_connections,
        )
        for name, s in snapshot.servers.items()
    }


@get("/admin/alerts", tags=["usage"], summary="Quota alert events, newest first (keyset pages)")
async def list_alerts(
    platform: NamedDependency[Platform],
    # "state" is a reserved parameter name in Litestar (the app state): renamed, same query key.
    alert_state: Annotated[AlertState, QueryParameter(name="state")] = AlertState.OPEN,
    tenant: Annotated[str | None, QueryParameter(min_length=1, max_length=63, pattern=_NO_NUL)] = None,
    quota: FromQuery[QuotaType | None] = None,
    threshold: Annotated[int | None, QueryParameter(description="80 or 100")] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=32, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
) -> AlertPage:
    if threshold is not None and threshold not in THRESHOLDS:
        raise ValidationFailed(f"threshold must be one of {', '.join(map(str, THRESHOLDS))}")
    before: int | None = None
    if cursor is not None:
        if not cursor.isascii() or not cursor.isdigit() or not 0 < int(cursor) < 2**63:
            raise InvalidCursor("cursor must be the next_cursor of a previous page")
        before = int(cursor)
    async with platform.control.connection() as conn:
        tenant_id = (await _tenant(conn, tenant)).id if tenant is not None else None
        items = await alerts.list_alerts(
            conn,
            state=alert_state,
            tenant_id=tenant_id,
            quota=quota,
            threshold=threshold,
            before_id=before,
            limit=limit + 1,
        )
    more = len(items) > limit
    items = items[:limit]
    return AlertPage(items=items, next_cursor=str(items[-1].id) if more else None)


@put("/admin/tenants/{slug:str}/quotas", tags=["tenants"], summary="Override quota limits (null = unlimited)")
async def update_quotas(
    request: Request[Any, Any, Any],
    slug: FromPath[str],
    data: JSONBody[QuotaLimits],
    platform: NamedDependency[Platform],
) -> TenantQuotas:
    return await set_quota_limits(request, platform, slug, data)


async def set_quota_limits(
    request: Request[Any, Any, Any], platform: Platform, slug: str, data: QuotaLimits
) -> TenantQuotas:
    """Override a tenant's quota limits as a super-admin (audited ``tenant.quotas.update``); the admin API's
    and the dashboard's."""
    async with audited(request, "tenant.quotas.update", slug=slug) as audit:
        limits = quotas.parse_limits(data.limits)
        audit.details["limits"] = {q.value: v for q, v in limits.items()}
        async with platform.control.connection() as conn, conn.transaction():
            tenant = await _locked(conn, slug)  # one change at a time, tier changes included
            before = {q.quota_type: q.quota_limit for q in await registry.get_quotas(conn, tenant.id)}
            await quotas.set_limits(conn, tenant.id, limits)
        audit.details["previous"] = {q.value: before.get(q) for q in limits}
        await _after_change(request, tenant.id)
        async with platform.control.connection() as conn:
            statuses = await quotas.quota_status(conn, tenant.id)
        return TenantQuotas(slug=tenant.slug, quotas=_with_tier(statuses, tenant.subscription_tier))


@post(
    "/admin/tenants/{slug:str}/quotas/storage-expansion",
    tags=["tenants"],
    summary="Emergency storage: extra bytes on top of the limit for some hours",
)
async def expand_storage(
    request: Request[Any, Any, Any],
    slug: FromPath[str],
    data: JSONBody[StorageExpansion],
    platform: NamedDependency[Platform],
) -> ExpansionResult:
    return await add_storage_expansion(request, platform, slug, data)


async def add_storage_expansion(
    request: Request[Any, Any, Any], platform: Platform, slug: str, data: StorageExpansion
) -> ExpansionResult:
    """Emergency storage on top of a tenant's limit for some hours (audited ``tenant.storage.expand``); the
    admin API's and the dashboard's."""
    reason = data.reason.strip()
    details = {"extra_bytes": data.extra_bytes, "hours": data.hours, "reason": reason}
    async with audited(request, "tenant.storage.expand", slug=slug, entity="quota_expansion", details=details) as audit:
        if len(reason) < 3:
            raise ValidationFailed("reason must say why (at least 3 characters)")
        async with platform.control.connection() as conn, conn.transaction():
            tenant = await _locked(conn, slug)
            limit = await registry.get_quota_limit(conn, tenant.id, QuotaType.STORAGE_BYTES)
            if limit is None:
                raise Conflict(f"tenant {slug!r} has unlimited storage; nothing to expand", quota="storage_bytes")
            expansion = await quotas.add_expansion(
                conn,
                tenant.id,
                quota=QuotaType.STORAGE_BYTES,
                extra=data.extra_bytes,
                hours=data.hours,
                reason=reason,
                created_by=admin_principal(request).subject,
            )
        audit.entity_id = expansion.id
        audit.details["expires_at"] = expansion.expires_at.isoformat()
        await _after_change(request, tenant.id)
        async with platform.control.connection() as conn:
            statuses = _with_tier(await quotas.quota_status(conn, tenant.id), tenant.subscription_tier)
        storage = next(s for s in statuses if s.quota is QuotaType.STORAGE_BYTES)
        return ExpansionResult(expansion=expansion, quota=storage)


@get(
    "/admin/tenants/{slug:str}/usage",
    tags=["usage"],
    summary="One tenant's quotas, usage history, projections and open alerts",
)
async def tenant_usage(
    slug: FromPath[str],
    platform: NamedDependency[Platform],
    days: Annotated[int, QueryParameter(ge=1, le=capacity.MAX_HISTORY_DAYS, description="history window")] = 30,
) -> TenantUsageView:
    bucket = capacity.history_bucket(days)
    async with platform.control.connection() as conn:
        tenant = await _tenant(conn, slug)
        now = await capacity_repository.db_now(conn)
        statuses = _with_tier(await quotas.quota_status(conn, tenant.id), tenant.subscription_tier)
        expansions = await quotas.active_expansions(conn, tenant.id)
        history = await capacity.history(conn, tenant.id, days=days, bucket=bucket)
        points = await capacity.trend_points(conn, tenant.id)
        latest = await capacity.latest_values(conn, tenant.id)
        open_alerts = await alerts.list_alerts(conn, state=AlertState.OPEN, tenant_id=tenant.id, limit=100)
        served, responses, recent = await repository.bytes_served(conn, tenant.id, now - timedelta(days=days))
    by_quota = {s.quota: s for s in statuses}
    current = dict(latest)
    for metric, quota in trends.METRIC_QUOTAS.items():
        if quota in by_quota:
            current[metric] = float(by_quota[quota].usage)
    limits = {s.quota: s.effective_limit for s in statuses}
    projections = trends.projections(points, current, limits, now)
    growth = {
        quota: (by_quota[quota].usage, trends.trend(points[metric]))
        for metric, quota in trends.METRIC_QUOTAS.items()
        if quota in by_quota
    }
    return TenantUsageView(
        tenant=TenantRef(
            id=tenant.id,
            slug=tenant.slug,
            name=tenant.name,
            tier=tenant.subscription_tier,
            status=tenant.status,
            server=tenant.server_name,
        ),
        generated_at=now,
        quotas=statuses,
        expansions=expansions,
        history_days=days,
        bucket_seconds=int(bucket.total_seconds()),
        history={m: [HistoryPoint(at, value) for at, value in series] for m, series in history.items()},
        window_days=trends.TREND_WINDOW_DAYS,
        projections=projections,
        recommendation=trends.recommend(tenant.subscription_tier, growth),
        alerts=open_alerts,
        bytes_served=BytesServedView(total=served, requests=responses, in_window=recent),
    )


@get(
    "/admin/capacity",
    tags=["usage"],
    summary="Quotas projected to be reached within `days`, upgrade recommendations, server fill",
)
async def capacity_overview(
    request: Request[Any, Any, Any],
    platform: NamedDependency[Platform],
    days: Annotated[int, QueryParameter(ge=1, le=365, description="projection horizon")] = 30,
    capacity_bytes: Annotated[
        int | None,
        QueryParameter(ge=1, le=MAX_LIMIT, description="bytes one server can hold (CARDVAULT_SERVER_CAPACITY_BYTES)"),
    ] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000, description="rows per list")] = 100,
) -> capacity.CapacityReport:
    async with platform.control.connection() as conn:
        return await capacity.capacity_report(
            conn,
            horizon_days=days,
            limit=limit,
            capacity_bytes=capacity_bytes or platform.settings.moves.server_capacity_bytes or None,
            snapshot=_snapshot_servers(request.app.state),
        )


@post(
    "/admin/usage/collect",
    status_code=200,
    tags=["usage"],
    summary="Run one usage collection now, then evaluate quota alerts (full=true: scan every tenant)",
)
async def collect_usage(request: Request[Any, Any, Any], full: FromQuery[bool] = False) -> CollectionStats:
    usage: UsageService = request.app.state[USAGE_STATE_KEY]
    evaluator: QuotaAlerts = request.app.state[QUOTA_ALERTS_STATE_KEY]
    stats = await usage.collect(full=full)
    await evaluator.evaluate()
    return stats


#: Handlers of ``/admin`` (behind ``admin_guard``).
ADMIN_USAGE_HANDLERS = [collect_usage, list_alerts, update_quotas, expand_storage, tenant_usage, capacity_overview]
