"""Capacity planning from the usage history: trends per tenant, at-risk quotas, upgrades, server fill dates.

A **trend** (``trends.Trend``) is the least-squares line through a tenant's recorded points of one metric
(``database_bytes``, ``storage_bytes``, ``cards``, ``users``) over the last ``TREND_WINDOW_DAYS`` days of
``tenant_usage_metrics``. Every point counts once: the last week, which the
collectors keep at full resolution, is denser than the hourly points compaction leaves of older days,
so recent growth weighs more, which suits a projection.

- Fleet-wide (``fleet_fits``): PostgreSQL's ``regr_slope`` / ``regr_intercept`` / ``regr_r2`` fit every
  tenant and metric in one hash aggregation over the window (no sort: one group per tenant and metric).
- One tenant (``trend_points`` + the pure ``trend``): the same points, fitted in Python. The two agree
  (a test checks).

The usage view's history (``history``) is the same table averaged per bucket, for display.

Projections and recommendations are ``trends``'. Servers: tenants, database bytes and connections (from the collectors'
snapshot when there is one, else from the latest history), growth = sum of their tenants'
``database_bytes`` slopes, and a fill date when a capacity is given (the route defaults it to
``CARDVAULT_SERVER_CAPACITY_BYTES``); a server projected to fill within the horizon gets a recommendation
(rebalance, drain, add a server: ``fill.advice``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import msgspec

from controlplane.db import AsyncConn
from controlplane.registry.models import QuotaType, Tier
from controlplane.usage import capacity_repository as repository
from controlplane.usage.fill import advice
from controlplane.usage.trends import (
    METRICS,
    TREND_WINDOW_DAYS,
    Recommendation,
    Trend,
    days_until,
    projected_at,
    recommend,
)

#: Most days of history the usage view returns (the collectors keep 400 by default).
MAX_HISTORY_DAYS = 400
#: Points per metric the usage view's history aims at (the bucket grows with the window).
HISTORY_POINTS = 200


def history_bucket(days: int) -> timedelta:
    """Bucket width of the usage view's history: whole hours, about ``HISTORY_POINTS`` per metric."""
    return timedelta(hours=max(1, math.ceil(days * 24 / HISTORY_POINTS)))


def _fit(row: Mapping[str, Any]) -> Trend | None:
    if row["slope"] is None:  # one point, or all at one moment
        return None
    return Trend(
        slope_per_day=float(row["slope"]),
        intercept=float(row["intercept"]),
        r2=float(row["r2"]) if row["r2"] is not None else 1.0,
        points=int(row["points"]),
    )


async def fleet_fits(conn: AsyncConn, *, days: int = TREND_WINDOW_DAYS) -> list[dict[str, Any]]:
    """Per tenant (not provisioning or deleting) and metric: slug, tier, server_id, metric_name, ``trend``
    (a ``Trend`` or None), and for quota metrics ``usage`` and effective ``quota_limit`` (else None)."""
    out = []
    for row in await repository.fit_rows(conn, METRICS, days):
        item = dict(row)
        item["trend"] = _fit(row)
        out.append(item)
    return out


async def trend_points(
    conn: AsyncConn, tenant_id: uuid.UUID, *, days: int = TREND_WINDOW_DAYS
) -> dict[str, list[tuple[datetime, float]]]:
    """The tenant's recorded points per metric over the trend window, oldest first."""
    return await repository.trend_series(conn, tenant_id, METRICS, days=days)


async def history(
    conn: AsyncConn, tenant_id: uuid.UUID, *, days: int, bucket: timedelta
) -> dict[str, list[tuple[datetime, float]]]:
    """The tenant's history per metric over ``days``, averaged per ``bucket``, oldest first."""
    return await repository.history_series(conn, tenant_id, METRICS, days=days, bucket=bucket)


async def latest_values(conn: AsyncConn, tenant_id: uuid.UUID) -> dict[str, float]:
    """The newest recorded value of each metric of the tenant (one index probe each)."""
    return await repository.latest_values(conn, tenant_id, METRICS)


# -- reports -----------------------------------------------------------------------------------------


class AtRisk(msgspec.Struct, kw_only=True):
    """A tenant's quota projected to be reached within the horizon."""

    tenant_id: uuid.UUID
    slug: str
    tier: Tier
    quota: QuotaType
    usage: int
    limit: int
    slope_per_day: float | None
    r2: float | None
    days_until: float
    projected_at: datetime | None


class TenantRecommendation(msgspec.Struct, kw_only=True):
    tenant_id: uuid.UUID
    slug: str
    recommendation: Recommendation


class ServerCapacity(msgspec.Struct, kw_only=True):
    name: str
    status: str
    tenants: int
    database_bytes: int
    #: Client connections and ``max_connections`` (only from the collectors' snapshot).
    connections: int | None
    max_connections: int | None
    #: ``snapshot`` (the collectors' last cycle on this instance) or ``history`` (latest recorded sizes).
    source: str
    #: Sum of the tenants' ``database_bytes`` slopes.
    growth_bytes_per_day: float
    capacity_bytes: int | None
    days_until_full: float | None
    projected_full_at: datetime | None
    #: When the server is projected to fill within the horizon: rebalance, drain, or add a server
    #: (``fill.advice``).
    recommendation: str | None = None


class CapacityReport(msgspec.Struct, kw_only=True):
    generated_at: datetime
    window_days: int
    horizon_days: int
    #: Quotas projected to be reached within ``horizon_days``, soonest first (at most ``limit``).
    at_risk: list[AtRisk]
    at_risk_total: int
    recommendations: list[TenantRecommendation]
    servers: list[ServerCapacity]
    #: Why fill dates are missing, if they are.
    capacity_note: str | None


class SnapshotServer(msgspec.Struct, frozen=True, kw_only=True):
    """What the report takes from the collectors' snapshot for one server."""

    tenants: int
    database_bytes: int
    connections: int
    max_connections: int


async def capacity_report(
    conn: AsyncConn,
    *,
    horizon_days: int,
    limit: int,
    capacity_bytes: int | None = None,
    snapshot: Mapping[str, SnapshotServer] | None = None,
) -> CapacityReport:
    """The fleet view: at-risk quotas, upgrade recommendations, servers (see the module doc)."""
    now = await repository.db_now(conn)
    fits = await fleet_fits(conn)
    at_risk: list[AtRisk] = []
    growth: dict[uuid.UUID, dict[QuotaType, tuple[float, Trend | None]]] = {}
    tenants: dict[uuid.UUID, tuple[str, Tier]] = {}
    server_growth: dict[uuid.UUID, float] = {}
    for row in fits:
        line: Trend | None = row["trend"]
        tenant_id, tier = row["tenant_id"], Tier(row["tier"])
        tenants[tenant_id] = (row["slug"], tier)
        if row["metric_name"] == "database_bytes":
            if line is not None:
                server_growth[row["server_id"]] = server_growth.get(row["server_id"], 0.0) + line.slope_per_day
            continue
        if row["quota_type"] is None:
            continue
        quota, usage = QuotaType(row["quota_type"]), int(row["usage"])
        growth.setdefault(tenant_id, {})[quota] = (usage, line)
        days = days_until(line, usage, row["quota_limit"])
        if days is not None and days <= horizon_days:
            at_risk.append(
                AtRisk(
                    tenant_id=tenant_id,
                    slug=row["slug"],
                    tier=tier,
                    quota=quota,
                    usage=usage,
                    limit=int(row["quota_limit"]),
                    slope_per_day=line.slope_per_day if line else None,
                    r2=line.r2 if line else None,
                    days_until=days,
                    projected_at=projected_at(now, days),
                )
            )
    at_risk.sort(key=lambda r: (r.days_until, r.slug, r.quota.value))
    recommendations = []
    for tenant_id, quotas in growth.items():
        slug, tier = tenants[tenant_id]
        found = recommend(tier, quotas)
        if found is not None:
            recommendations.append(TenantRecommendation(tenant_id=tenant_id, slug=slug, recommendation=found))
    recommendations.sort(key=lambda r: (r.recommendation.days_until, r.slug))
    servers = [
        _server(row, snapshot or {}, server_growth.get(row["id"], 0.0), capacity_bytes, now)
        for row in await repository.server_rows(conn)
    ]
    for server in servers:
        if server.days_until_full is not None and server.days_until_full <= horizon_days:
            others = [s.name for s in servers if s.name != server.name and s.status == "active"]
            server.recommendation = advice(server.name, f"projected full in {server.days_until_full:.1f} days", others)
    return CapacityReport(
        generated_at=now,
        window_days=TREND_WINDOW_DAYS,
        horizon_days=horizon_days,
        at_risk=at_risk[:limit],
        at_risk_total=len(at_risk),
        recommendations=recommendations[:limit],
        servers=servers,
        capacity_note=None
        if capacity_bytes is not None
        else "server capacity unknown: pass capacity_bytes to project fill dates",
    )


def _server(
    row: Mapping[str, Any],
    snapshot: Mapping[str, SnapshotServer],
    growth: float,
    capacity_bytes: int | None,
    now: datetime,
) -> ServerCapacity:
    seen = snapshot.get(row["name"])
    size = seen.database_bytes if seen else int(row["database_bytes"])
    days = None
    if capacity_bytes is not None:
        days = (
            0.0
            if size >= capacity_bytes
            else days_until(Trend(slope_per_day=growth, intercept=0.0, r2=1.0, points=0), size, capacity_bytes)
        )
    return ServerCapacity(
        name=row["name"],
        status=row["status"],
        tenants=seen.tenants if seen else int(row["tenants"]),
        database_bytes=size,
        connections=seen.connections if seen else None,
        max_connections=seen.max_connections if seen else None,
        source="snapshot" if seen else "history",
        growth_bytes_per_day=growth,
        capacity_bytes=capacity_bytes,
        days_until_full=days,
        projected_full_at=projected_at(now, days),
    )
