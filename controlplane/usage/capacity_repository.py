"""SQL of capacity planning: trend fits and series over ``tenant_usage_metrics``, and server fill.

Every metric query takes the metric names it reads (``%(metrics)s``); the window is ``%(days)s`` days.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from controlplane.db import AsyncConn
from controlplane.usage.quota_repository import EFFECTIVE_QUOTAS

#: Hour and day buckets start at UTC midnight whatever the session time zone.
_BUCKET_ORIGIN = "2000-01-01 00:00:00+00"

#: x of every trend: days since the epoch (float8 all the way, as in ``day_number``).
_X = "date_part('epoch', m.recorded_at) / 86400"
#: The window of the metrics trends are fitted on.
_WINDOW = "m.metric_name = ANY(%(metrics)s) AND m.recorded_at >= now() - make_interval(days => %(days)s)"

_FLEET_FITS = sql.SQL(
    """
    WITH fits AS (
        SELECT m.tenant_id, m.metric_name,
               regr_slope(m.metric_value, {x}) AS slope, regr_intercept(m.metric_value, {x}) AS intercept,
               regr_r2(m.metric_value, {x}) AS r2, regr_count(m.metric_value, {x}) AS points
          FROM tenant_usage_metrics m
         WHERE {window}
         GROUP BY m.tenant_id, m.metric_name
    )
    SELECT f.tenant_id, t.slug, t.subscription_tier AS tier, t.server_id, f.metric_name,
           f.slope, f.intercept, f.r2, f.points, q.usage, q.quota_type, q.effective_limit AS quota_limit
      FROM fits f
      JOIN tenants t ON t.id = f.tenant_id
      LEFT JOIN ({effective}) q ON q.tenant_id = f.tenant_id AND q.quota_type = f.metric_name
     WHERE t.status NOT IN ('provisioning', 'deleting')
    """
).format(x=sql.SQL(_X), window=sql.SQL(_WINDOW), effective=EFFECTIVE_QUOTAS)

_TREND_POINTS = sql.SQL(
    """
    SELECT m.metric_name, m.recorded_at AS at, m.metric_value AS y
      FROM tenant_usage_metrics m
     WHERE m.tenant_id = %(tenant)s AND {window}
     ORDER BY m.metric_name, m.recorded_at
    """
).format(window=sql.SQL(_WINDOW))

# Averages per bucket (mean time, mean value), for display.
_HISTORY = sql.SQL(
    """
    SELECT m.metric_name, to_timestamp(avg(date_part('epoch', m.recorded_at))) AS at, avg(m.metric_value) AS y
      FROM tenant_usage_metrics m
     WHERE m.tenant_id = %(tenant)s AND {window}
     GROUP BY m.metric_name, date_bin(%(bucket)s, m.recorded_at, {origin}::timestamptz)
     ORDER BY 1, 2
    """
).format(window=sql.SQL(_WINDOW), origin=sql.Literal(_BUCKET_ORIGIN))

_SERVERS = """
    SELECT s.id, s.name, s.status, count(t.id) AS tenants, coalesce(sum(x.metric_value), 0)::float8 AS database_bytes
      FROM db_servers s
      LEFT JOIN tenants t ON t.server_id = s.id AND t.status <> 'provisioning'
      LEFT JOIN LATERAL (
            SELECT u.metric_value FROM tenant_usage_metrics u
             WHERE u.tenant_id = t.id AND u.metric_name = 'database_bytes'
             ORDER BY u.recorded_at DESC LIMIT 1) x ON TRUE
     GROUP BY s.id, s.name, s.status
     ORDER BY s.name
"""


async def fit_rows(conn: AsyncConn, metrics: Sequence[str], days: int) -> list[dict[str, Any]]:
    """Per tenant (not provisioning or deleting) and metric: the least-squares fit of its points in the
    window (``slope``, ``intercept``, ``r2``, ``points``; all NULL for fewer than two distinct times), the
    tenant's slug, tier and server, and for quota metrics ``usage`` and effective ``quota_limit``."""
    cur = await conn.execute(_FLEET_FITS, {"metrics": list(metrics), "days": days})
    return list(await cur.fetchall())


async def _series(
    conn: AsyncConn, query: sql.Composed, metrics: Sequence[str], params: dict[str, Any]
) -> dict[str, list[tuple[datetime, float]]]:
    cur = await conn.execute(query, {"metrics": list(metrics), **params})
    out: dict[str, list[tuple[datetime, float]]] = {name: [] for name in metrics}
    for row in await cur.fetchall():
        out[row["metric_name"]].append((row["at"], float(row["y"])))
    return out


async def trend_series(
    conn: AsyncConn, tenant_id: uuid.UUID, metrics: Sequence[str], *, days: int
) -> dict[str, list[tuple[datetime, float]]]:
    """The tenant's recorded points per metric over the last ``days``, oldest first."""
    return await _series(conn, _TREND_POINTS, metrics, {"tenant": tenant_id, "days": days})


async def history_series(
    conn: AsyncConn, tenant_id: uuid.UUID, metrics: Sequence[str], *, days: int, bucket: timedelta
) -> dict[str, list[tuple[datetime, float]]]:
    """The tenant's points per metric over ``days``, averaged per ``bucket``, oldest first."""
    return await _series(conn, _HISTORY, metrics, {"tenant": tenant_id, "days": days, "bucket": bucket})


async def latest_values(conn: AsyncConn, tenant_id: uuid.UUID, metrics: Sequence[str]) -> dict[str, float]:
    """The newest recorded value of each metric of the tenant (one index probe each)."""
    cur = await conn.execute(
        """
        SELECT m.name, x.metric_value
          FROM unnest(%s::text[]) AS m (name)
          CROSS JOIN LATERAL (
                SELECT u.metric_value FROM tenant_usage_metrics u
                 WHERE u.tenant_id = %s AND u.metric_name = m.name
                 ORDER BY u.recorded_at DESC LIMIT 1) x
        """,
        (list(metrics), tenant_id),
    )
    return {r["name"]: float(r["metric_value"]) for r in await cur.fetchall()}


async def server_rows(conn: AsyncConn) -> list[dict[str, Any]]:
    """Every server with its tenants (not provisioning) and the sum of their latest ``database_bytes``."""
    cur = await conn.execute(_SERVERS)
    return list(await cur.fetchall())


async def db_now(conn: AsyncConn) -> datetime:
    """The database's ``now()`` (the start of the transaction)."""
    cur = await conn.execute("SELECT now() AS now")
    row = await cur.fetchone()
    assert row is not None
    now: datetime = row["now"]
    return now
