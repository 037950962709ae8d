"""Usage trends and what they foretell: least-squares lines, days until a limit, tier upgrades.

Pure functions over ``(moment, value)`` points; ``capacity`` reads the points and the fleet-wide fits
from the control database. ``x`` of every line is days since the Unix epoch, so ``intercept`` is the
line's value at 1970-01-01 UTC and ``slope_per_day`` is per day.

``days_until`` a limit from the current usage at the trend's slope is None when the trend is flat or
shrinking or the quota unlimited, and 0 when already reached. ``recommend`` names the next tier when a
quota is projected to reach the limit of the tenant's **tier** within ``RECOMMEND_WITHIN_DAYS``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import msgspec

from controlplane.registry.models import TIER_QUOTAS, QuotaType, Tier

#: The metrics trends are computed for.
METRICS = ("database_bytes", "storage_bytes", "cards", "users")
#: The quota each metric is limited by (``database_bytes`` has none).
METRIC_QUOTAS: dict[str, QuotaType] = {
    "storage_bytes": QuotaType.STORAGE_BYTES,
    "cards": QuotaType.CARDS,
    "users": QuotaType.USERS,
}
#: Days of history a trend is fitted over.
TREND_WINDOW_DAYS = 30
#: An upgrade is recommended when a tier limit is projected to be reached within this many days.
RECOMMEND_WITHIN_DAYS = 14
#: Projections further out than this are reported without a date.
_MAX_PROJECTION_DAYS = 36_500.0
_SECONDS_PER_DAY = 86_400.0


class Trend(msgspec.Struct, frozen=True, kw_only=True):
    """A least-squares line: ``value = intercept + slope_per_day * days_since_epoch``."""

    slope_per_day: float
    intercept: float
    #: Coefficient of determination (1.0 for a perfectly straight, or flat, history).
    r2: float
    points: int

    def at(self, moment: datetime) -> float:
        """The line's value at ``moment``."""
        return self.intercept + self.slope_per_day * day_number(moment)


def day_number(moment: datetime) -> float:
    """Days since the Unix epoch (the ``x`` of every trend)."""
    return moment.timestamp() / _SECONDS_PER_DAY


def trend(points: Sequence[tuple[datetime, float]]) -> Trend | None:
    """The least-squares line through ``points``; None for fewer than 2 points or all at one moment.

    Same definitions as PostgreSQL's ``regr_*``: ``r2`` is 1.0 when every value is equal.
    """
    n = len(points)
    if n < 2:
        return None
    xs = [day_number(at) for at, _ in points]
    ys = [float(value) for _, value in points]
    mean_x, mean_y = math.fsum(xs) / n, math.fsum(ys) / n
    sxx = math.fsum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return None
    sxy = math.fsum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    syy = math.fsum((y - mean_y) ** 2 for y in ys)
    slope = sxy / sxx
    r2 = 1.0 if syy == 0 else min(1.0, sxy * sxy / (sxx * syy))
    return Trend(slope_per_day=slope, intercept=mean_y - slope * mean_x, r2=r2, points=n)


def days_until(line: Trend | None, current: float, limit: int | None) -> float | None:
    """Days until ``current`` grows to ``limit`` at the trend's slope.

    0 when already reached; None when unlimited, without a trend, or flat or shrinking.
    """
    if limit is None:
        return None
    if current >= limit:
        return 0.0
    if line is None or not line.slope_per_day > 0:
        return None
    days = (limit - current) / line.slope_per_day
    return days if math.isfinite(days) else None


def projected_at(now: datetime, days: float | None) -> datetime | None:
    """``now + days``, or None when there is no projection or it is a century away or more."""
    if days is None or days >= _MAX_PROJECTION_DAYS:
        return None
    return now + timedelta(days=days)


def next_tier(tier: Tier) -> Tier | None:
    """The tier after ``tier`` in ``Tier`` order (None for the top one)."""
    order = list(Tier)
    index = order.index(tier)
    return order[index + 1] if index + 1 < len(order) else None


class Recommendation(msgspec.Struct, kw_only=True):
    tier: Tier
    #: The lowest higher tier whose limits are not reached within the window (the top tier if none);
    #: None when already on the top tier (custom limits are the way out).
    next_tier: Tier | None
    #: The quotas projected to reach the tier's limit within the window, soonest first.
    quotas: list[QuotaType]
    #: Days until the first of them is reached.
    days_until: float
    reason: str


def recommend(
    tier: Tier,
    growth: Mapping[QuotaType, tuple[float, Trend | None]],
    *,
    within_days: float = RECOMMEND_WITHIN_DAYS,
) -> Recommendation | None:
    """An upgrade when a quota (current usage, trend) is projected to reach ``tier``'s limit in time."""
    hits: dict[QuotaType, float] = {}
    for quota, (current, line) in growth.items():
        days = days_until(line, current, TIER_QUOTAS[tier].get(quota))
        if days is not None and days <= within_days:
            hits[quota] = days
    if not hits:
        return None
    quotas = sorted(hits, key=lambda q: (hits[q], q.value))
    higher: list[Tier] = []
    candidate = next_tier(tier)
    while candidate is not None:
        higher.append(candidate)
        candidate = next_tier(candidate)
    target: Tier | None = higher[-1] if higher else None
    for option in higher:
        later = (days_until(growth[q][1], growth[q][0], TIER_QUOTAS[option].get(q)) for q in quotas)
        if all(days is None or days > within_days for days in later):
            target = option
            break
    soonest = hits[quotas[0]]
    names = ", ".join(q.value for q in quotas)
    if target is None:
        reason = f"{names} projected to reach the {tier.value} limit in {soonest:.1f} day(s); already on the top tier"
    else:
        reason = f"{names} projected to reach the {tier.value} limit in {soonest:.1f} day(s)"
    return Recommendation(tier=tier, next_tier=target, quotas=quotas, days_until=soonest, reason=reason)


class Projection(msgspec.Struct, kw_only=True):
    """One metric of one tenant: its trend and when it reaches its quota."""

    metric: str
    quota: QuotaType | None
    #: Current usage (the quota's, else the newest recorded value).
    current: float | None
    #: Effective limit (None: unlimited, or no quota for the metric).
    limit: int | None
    slope_per_day: float | None
    r2: float | None
    points: int
    days_until: float | None
    projected_at: datetime | None


def projections(
    points: Mapping[str, Sequence[tuple[datetime, float]]],
    current: Mapping[str, float],
    limits: Mapping[QuotaType, int | None],
    now: datetime,
) -> list[Projection]:
    """Each metric's trend (Python ``trend``) and when it reaches its quota's limit."""
    out = []
    for metric in METRICS:
        line = trend(points.get(metric, ()))
        quota = METRIC_QUOTAS.get(metric)
        value = current.get(metric)
        limit = limits.get(quota) if quota is not None else None
        days = days_until(line, value, limit) if value is not None else None
        out.append(
            Projection(
                metric=metric,
                quota=quota,
                current=value,
                limit=limit,
                slope_per_day=line.slope_per_day if line else None,
                r2=line.r2 if line else None,
                points=len(points.get(metric, ())),
                days_until=days,
                projected_at=projected_at(now, days),
            )
        )
    return out
