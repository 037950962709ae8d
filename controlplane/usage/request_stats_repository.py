"""SQL of ``tenant_request_stats``: per tenant and hour, requests by status class and a latency histogram."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import msgspec

from controlplane.db import AsyncConn

#: Hours of statistics kept; older rows are dropped by the flush.
RETENTION_HOURS = 24 * 31


class HourRow(msgspec.Struct, frozen=True):
    hour: datetime
    classes: list[int]  # 2xx, 3xx, 4xx, 5xx
    buckets: list[int]  # per latency bucket, not cumulative; the last is +Inf
    duration_sum: float


async def add(
    conn: AsyncConn,
    tenant_id: uuid.UUID,
    hour: int,
    classes: Sequence[int],
    buckets: Sequence[int],
    duration_sum: float,
) -> None:
    """Add to the tenant's statistics of the hour starting at ``hour`` (Unix time); a tenant deleted
    meanwhile is skipped."""
    await conn.execute(
        """
        INSERT INTO tenant_request_stats AS s
               (tenant_id, hour, requests_2xx, requests_3xx, requests_4xx, requests_5xx,
                duration_sum, duration_buckets)
        SELECT %s, to_timestamp(%s), %s, %s, %s, %s, %s, %s::bigint[]
         WHERE EXISTS (SELECT 1 FROM tenants WHERE id = %s)
            ON CONFLICT (tenant_id, hour) DO UPDATE SET
               requests_2xx = s.requests_2xx + EXCLUDED.requests_2xx,
               requests_3xx = s.requests_3xx + EXCLUDED.requests_3xx,
               requests_4xx = s.requests_4xx + EXCLUDED.requests_4xx,
               requests_5xx = s.requests_5xx + EXCLUDED.requests_5xx,
               duration_sum = s.duration_sum + EXCLUDED.duration_sum,
               duration_buckets = ARRAY(
                   SELECT coalesce(a, 0) + coalesce(b, 0)
                     FROM unnest(s.duration_buckets, EXCLUDED.duration_buckets) WITH ORDINALITY AS t(a, b, i)
                    ORDER BY i)
        """,
        (tenant_id, hour, *classes, duration_sum, list(buckets), tenant_id),
    )


async def prune(conn: AsyncConn) -> int:
    """Drop the rows older than ``RETENTION_HOURS``; how many."""
    cur = await conn.execute(
        "DELETE FROM tenant_request_stats WHERE hour < now() - make_interval(hours => %s)", (RETENTION_HOURS,)
    )
    return cur.rowcount


async def hours(conn: AsyncConn, tenant_id: uuid.UUID, count: int) -> tuple[datetime, list[HourRow]]:
    """The database's current hour start, and the tenant's rows of the last ``count`` hours (including
    the current one), oldest first."""
    cur = await conn.execute("SELECT date_trunc('hour', now()) AS hour")
    row = await cur.fetchone()
    assert row is not None
    current: datetime = row["hour"]
    cur = await conn.execute(
        """
        SELECT hour, requests_2xx, requests_3xx, requests_4xx, requests_5xx, duration_buckets, duration_sum
          FROM tenant_request_stats
         WHERE tenant_id = %s AND hour > %s - make_interval(hours => %s)
         ORDER BY hour
        """,
        (tenant_id, current, count),
    )
    return current, [
        HourRow(
            r["hour"],
            [r["requests_2xx"], r["requests_3xx"], r["requests_4xx"], r["requests_5xx"]],
            list(r["duration_buckets"]),
            float(r["duration_sum"]),
        )
        for r in await cur.fetchall()
    ]
