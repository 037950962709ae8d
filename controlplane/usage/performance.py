"""A tenant's performance over time: hourly requests, error rates and latency estimates.

Read from ``tenant_request_stats`` (what every replica's ``TenantRequests.flush`` added); the latest
(at most 30 s) of each replica's counts are not there yet. Latency percentiles are estimated from the
histogram buckets the way Prometheus' ``histogram_quantile`` does: linear within the bucket the rank
falls in, and the highest finite bound when it falls in the +Inf bucket.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec

from controlplane.db import AsyncConn
from controlplane.usage import request_stats_repository as repository
from controlplane.usage.request_stats import BOUNDS, CLASSES

#: Hours a performance view covers at most (the retention of ``tenant_request_stats``).
MAX_HOURS = repository.RETENTION_HOURS


class PerformancePoint(msgspec.Struct, kw_only=True):
    hour: datetime
    requests: int
    #: Requests by status class (``2xx`` .. ``5xx``).
    by_class: dict[str, int]
    #: Share of requests answered 5xx / 4xx (null without requests).
    error_rate: float | None
    client_error_rate: float | None
    mean_seconds: float | None
    p50_seconds: float | None
    p95_seconds: float | None


class TenantPerformance(msgspec.Struct, kw_only=True):
    tenant_id: uuid.UUID
    slug: str
    hours: int
    #: The latency histogram's bucket bounds (seconds): estimates cannot be finer than these.
    bucket_bounds: list[float]
    #: One point per hour of the window, oldest first (hours without requests included, as zeros).
    points: list[PerformancePoint]
    #: The whole window at once.
    total: PerformancePoint


def quantile(q: float, buckets: Sequence[int]) -> float | None:
    """The ``q`` quantile estimated from per-bucket counts over ``BOUNDS`` (+Inf last); None if empty."""
    count = sum(buckets)
    if count == 0:
        return None
    rank = q * count
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i >= len(BOUNDS):  # the +Inf bucket: the highest finite bound, as Prometheus does
                return BOUNDS[-1]
            lower = BOUNDS[i - 1] if i > 0 else 0.0
            return lower + (BOUNDS[i] - lower) * (rank - seen) / n
        seen += n
    return BOUNDS[-1]


def point(hour: datetime, classes: Sequence[int], buckets: Sequence[int], duration_sum: float) -> PerformancePoint:
    requests = sum(classes)
    return PerformancePoint(
        hour=hour,
        requests=requests,
        by_class=dict(zip(CLASSES, classes, strict=True)),
        error_rate=classes[3] / requests if requests else None,
        client_error_rate=classes[2] / requests if requests else None,
        mean_seconds=duration_sum / requests if requests else None,
        p50_seconds=quantile(0.5, buckets),
        p95_seconds=quantile(0.95, buckets),
    )


async def tenant_performance(conn: AsyncConn, tenant_id: uuid.UUID, slug: str, hours: int) -> TenantPerformance:
    """The tenant's last ``hours`` hours (the current one included), one point per hour."""
    current, rows = await repository.hours(conn, tenant_id, hours)
    by_hour = {r.hour: r for r in rows}
    empty_buckets = [0] * (len(BOUNDS) + 1)
    points = []
    classes, buckets, duration_sum = [0, 0, 0, 0], [0] * (len(BOUNDS) + 1), 0.0
    for back in range(hours - 1, -1, -1):
        hour = current - timedelta(hours=back)
        row = by_hour.get(hour)
        if row is None:
            points.append(point(hour, [0, 0, 0, 0], empty_buckets, 0.0))
            continue
        points.append(point(hour, row.classes, row.buckets, row.duration_sum))
        classes = [a + b for a, b in zip(classes, row.classes, strict=True)]
        buckets = [a + b for a, b in zip(buckets, row.buckets, strict=False)]
        duration_sum += row.duration_sum
    start = current - timedelta(hours=hours - 1)
    return TenantPerformance(
        tenant_id=tenant_id,
        slug=slug,
        hours=hours,
        bucket_bounds=list(BOUNDS),
        points=points,
        total=point(start, classes, buckets, duration_sum),
    )
