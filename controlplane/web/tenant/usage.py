"""The workspace's usage (``{base}/usage``): each quota as a bar, the growth of storage and cards with a
projection to their limits, and the days until each limit is reached.

Every member may see it (``settings:read``): it shows counts and limits, nothing of anyone's data. The
numbers are the platform's own, read as the admin usage view reads them
(``GET /admin/tenants/{slug}/usage``): the quotas with their effective limits (``usage.quotas``), the
usage history and trend points (``usage.capacity``) and the projections fitted on them (``usage.trends``),
always for the request's own tenant only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.response import Template
from markupsafe import Markup

from controlplane.auth.models import Permission
from controlplane.context import TenantRequest
from controlplane.http.state import PLATFORM_STATE_KEY
from controlplane.http.tenant_api import requires
from controlplane.platform import Platform
from controlplane.registry.models import TIER_QUOTAS, QuotaType
from controlplane.usage import capacity, capacity_repository, quotas, trends
from controlplane.web.charts import Limit, Series, line_chart
from controlplane.web.pages import page
from controlplane.web.templating import human_bytes, human_number

#: Days of history the growth charts show.
HISTORY_DAYS = 30
#: A projection is drawn to the limit when it is this many days away or fewer; otherwise along the trend
#: for ``HISTORY_DAYS`` (as far ahead as the history reaches back).
PROJECTION_DAYS = 90
#: The quotas as the page names them, in the order it shows them.
_LABELS = {
    QuotaType.CARDS: "Cards",
    QuotaType.STORAGE_BYTES: "Storage",
    QuotaType.USERS: "Users",
    QuotaType.API_CALLS_PER_HOUR: "API calls this hour",
}
#: The quota each chart's metric counts against, and how its values read.
_CHARTS: Sequence[tuple[str, QuotaType, Callable[[float], str]]] = (
    ("storage_bytes", QuotaType.STORAGE_BYTES, human_bytes),
    ("cards", QuotaType.CARDS, human_number),
)


@dataclasses.dataclass(frozen=True)
class QuotaRow:
    """One quota as the page shows it."""

    label: str
    used: str
    limit: str
    used_value: int
    limit_value: int | None
    tier_limit: str
    expansion: str | None
    days_until: float | None


def _fmt(quota: QuotaType) -> Callable[[float], str]:
    return human_bytes if quota is QuotaType.STORAGE_BYTES else human_number


def projection_points(
    projection: trends.Projection, now: datetime, *, within_days: int = PROJECTION_DAYS
) -> list[tuple[datetime, float]]:
    """The dashed line from now: to the limit when it is reached within ``within_days``, else along the
    trend for ``HISTORY_DAYS``; none without a growing trend (or a current value)."""
    current, slope = projection.current, projection.slope_per_day
    if current is None or slope is None or slope <= 0:
        return []
    days = projection.days_until
    if days is not None and 0 < days <= within_days and projection.limit is not None:
        return [(now, current), (now + timedelta(days=days), float(projection.limit))]
    return [(now, current), (now + timedelta(days=HISTORY_DAYS), current + slope * HISTORY_DAYS)]


def growth_chart(
    title: str,
    history: Sequence[tuple[datetime, float]],
    projection: trends.Projection,
    now: datetime,
    fmt: Callable[[float], str],
) -> Markup:
    series = [Series(title, history, area=True)]
    ahead = projection_points(projection, now)
    if ahead:
        series.append(Series(f"{title}: projection", ahead, css="projection"))
    limits = [Limit(f"limit {fmt(projection.limit)}", projection.limit)] if projection.limit is not None else []
    return line_chart(f"{title} over the last {HISTORY_DAYS} days, projected", series, limits=limits, fmt=fmt)


def quota_rows(
    statuses: Sequence[quotas.QuotaStatus], tier_limits: Mapping[QuotaType, int | None], days: Mapping[QuotaType, Any]
) -> list[QuotaRow]:
    rows = []
    order = list(_LABELS)  # the quotas people count on first; one the page does not know of last
    for status in sorted(statuses, key=lambda s: order.index(s.quota) if s.quota in order else len(order)):
        fmt = _fmt(status.quota)
        tier_limit = tier_limits.get(status.quota)
        rows.append(
            QuotaRow(
                label=_LABELS.get(status.quota, status.quota.value),
                used=fmt(status.usage),
                limit="unlimited" if status.effective_limit is None else fmt(status.effective_limit),
                used_value=status.usage,
                limit_value=status.effective_limit,
                tier_limit="unlimited" if tier_limit is None else fmt(tier_limit),
                expansion=fmt(status.expansion) if status.expansion else None,
                days_until=days.get(status.quota),
            )
        )
    return rows


@get("/usage", name="tenant_ui_usage", opt=requires(Permission.SETTINGS_READ))
async def usage_page(request: Request[Any, Any, Any], tenant_request: NamedDependency[TenantRequest]) -> Template:
    platform: Platform = request.app.state[PLATFORM_STATE_KEY]
    tenant = tenant_request.tenant
    async with platform.control.connection() as conn:
        now = await capacity_repository.db_now(conn)
        statuses = await quotas.quota_status(conn, tenant.id)
        history = await capacity.history(
            conn, tenant.id, days=HISTORY_DAYS, bucket=capacity.history_bucket(HISTORY_DAYS)
        )
        points = await capacity.trend_points(conn, tenant.id)
        current = await capacity.latest_values(conn, tenant.id)
    by_quota = {s.quota: s for s in statuses}
    for metric, quota in trends.METRIC_QUOTAS.items():
        if quota in by_quota:
            current[metric] = float(by_quota[quota].usage)
    projections = trends.projections(points, current, {s.quota: s.effective_limit for s in statuses}, now)
    by_metric = {p.metric: p for p in projections}
    days = {p.quota: p.days_until for p in projections if p.quota is not None}
    charts = [
        (_LABELS[quota], growth_chart(_LABELS[quota], history.get(metric, []), by_metric[metric], now, fmt))
        for metric, quota, fmt in _CHARTS
    ]
    return page(
        request,
        "tenant/usage.html",
        principal=tenant_request.principal,
        title="Usage",
        tier=tenant.tier.value,
        quotas=quota_rows(statuses, TIER_QUOTAS[tenant.tier], days),
        charts=charts,
        generated_at=now,
    )


HANDLERS: list[Any] = [usage_page]
