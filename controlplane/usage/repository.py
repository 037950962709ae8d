"""All SQL on the usage tables: ``tenant_usage_metrics``, ``tenant_storage_usage``, ``tenant_usage_scans``,
and the measured side of ``tenant_quotas`` (``current_usage``). Callers own the transaction.

Every write takes whole columns (``unnest`` of arrays), so a cycle over any number of tenants costs
a fixed handful of statements. Rows of a tenant deleted meanwhile are dropped, not refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from controlplane.db import AsyncConn
from controlplane.registry.models import QuotaType
from controlplane.usage.models import BACKUPS_STORAGE_TYPE, StorageUsage

#: Buckets of downsampled history start at UTC midnight / the full hour whatever the session time zone.
_BUCKET_ORIGIN = "2000-01-01 00:00:00+00"
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
#: Width of one downsampling statement in the daily window (the hourly window goes a day at a time),
#: so no statement sorts more than about a day of raw points.
_DAILY_SLICE = timedelta(days=7)


class MetricPoint(NamedTuple):
    tenant_id: uuid.UUID
    name: str
    value: float


class StorageRow(NamedTuple):
    tenant_id: uuid.UUID
    storage_type: str
    bytes_used: int
    file_count: int


class ScanRow(NamedTuple):
    tenant_id: uuid.UUID
    database_bytes: int
    #: JSON text: ``[{"table", "total_bytes", "row_estimate"}, ...]`` and ``{"cards": n, ...}``.
    tables_json: str
    counters_json: str
    scanned_at: datetime


class QuotaUsage(NamedTuple):
    tenant_id: uuid.UUID
    quota: QuotaType
    usage: int


# -- one collection cycle ---------------------------------------------------------------------------


async def insert_metrics(conn: AsyncConn, recorded_at: datetime, points: Sequence[MetricPoint]) -> int:
    """Append history points, all recorded at ``recorded_at``; the number written."""
    if not points:
        return 0
    cur = await conn.execute(
        """
        INSERT INTO tenant_usage_metrics (tenant_id, metric_name, metric_value, recorded_at)
        SELECT v.tenant_id, v.metric_name, v.metric_value, %s
          FROM unnest(%s::uuid[], %s::text[], %s::float8[]) AS v (tenant_id, metric_name, metric_value)
         WHERE EXISTS (SELECT 1 FROM tenants t WHERE t.id = v.tenant_id)
        """,
        (recorded_at, [p.tenant_id for p in points], [p.name for p in points], [p.value for p in points]),
    )
    return cur.rowcount


async def upsert_storage(conn: AsyncConn, updated_at: datetime, rows: Sequence[StorageRow]) -> None:
    """Set ``tenant_storage_usage`` for these (tenant, storage type) pairs (each at most once)."""
    if not rows:
        return
    await conn.execute(
        """
        INSERT INTO tenant_storage_usage (tenant_id, storage_type, bytes_used, file_count, updated_at)
        SELECT v.tenant_id, v.storage_type, v.bytes_used, v.file_count, %s
          FROM unnest(%s::uuid[], %s::text[], %s::bigint[], %s::bigint[])
               AS v (tenant_id, storage_type, bytes_used, file_count)
         WHERE EXISTS (SELECT 1 FROM tenants t WHERE t.id = v.tenant_id)
        ON CONFLICT (tenant_id, storage_type) DO UPDATE
           SET bytes_used = EXCLUDED.bytes_used, file_count = EXCLUDED.file_count, updated_at = EXCLUDED.updated_at
        """,
        (
            updated_at,
            [r.tenant_id for r in rows],
            [r.storage_type for r in rows],
            [r.bytes_used for r in rows],
            [r.file_count for r in rows],
        ),
    )


async def upsert_scans(conn: AsyncConn, rows: Sequence[ScanRow]) -> None:
    """Remember each tenant's last table scan (one row per tenant)."""
    if not rows:
        return
    await conn.execute(
        """
        INSERT INTO tenant_usage_scans (tenant_id, database_bytes, tables, counters, scanned_at)
        SELECT v.tenant_id, v.database_bytes, v.tables::jsonb, v.counters::jsonb, v.scanned_at
          FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::text[], %s::timestamptz[])
               AS v (tenant_id, database_bytes, tables, counters, scanned_at)
         WHERE EXISTS (SELECT 1 FROM tenants t WHERE t.id = v.tenant_id)
        ON CONFLICT (tenant_id) DO UPDATE
           SET database_bytes = EXCLUDED.database_bytes, tables = EXCLUDED.tables,
               counters = EXCLUDED.counters, scanned_at = EXCLUDED.scanned_at
        """,
        (
            [r.tenant_id for r in rows],
            [r.database_bytes for r in rows],
            [r.tables_json for r in rows],
            [r.counters_json for r in rows],
            [r.scanned_at for r in rows],
        ),
    )


async def set_quota_usage(conn: AsyncConn, rows: Sequence[QuotaUsage]) -> int:
    """``tenant_quotas.current_usage`` for these quotas; only rows whose usage changed are written."""
    if not rows:
        return 0
    cur = await conn.execute(
        """
        UPDATE tenant_quotas q
           SET current_usage = v.usage, updated_at = now()
          FROM unnest(%s::uuid[], %s::text[], %s::bigint[]) AS v (tenant_id, quota_type, usage)
         WHERE q.tenant_id = v.tenant_id AND q.quota_type = v.quota_type AND q.current_usage <> v.usage
        """,
        ([r.tenant_id for r in rows], [r.quota.value for r in rows], [r.usage for r in rows]),
    )
    return cur.rowcount


async def add_api_calls(conn: AsyncConn, tenant_id: uuid.UUID, hour: int, calls: int) -> None:
    """Add ``calls`` to the tenant's count for the hour starting at ``hour`` (Unix time); a tenant
    deleted meanwhile is skipped."""
    await conn.execute(
        "INSERT INTO tenant_api_calls (tenant_id, hour, calls)"
        " SELECT %s, to_timestamp(%s), %s WHERE EXISTS (SELECT 1 FROM tenants WHERE id = %s)"
        " ON CONFLICT (tenant_id, hour) DO UPDATE SET calls = tenant_api_calls.calls + EXCLUDED.calls",
        (tenant_id, hour, calls, tenant_id),
    )


async def set_api_call_usage(conn: AsyncConn, hour: datetime) -> int:
    """Every tenant's ``api_calls_per_hour`` usage: its calls counted for the hour starting at ``hour``."""
    cur = await conn.execute(
        """
        UPDATE tenant_quotas q
           SET current_usage = v.calls, updated_at = now()
          FROM (SELECT q2.tenant_id, coalesce(sum(c.calls), 0) AS calls
                  FROM tenant_quotas q2
                  LEFT JOIN tenant_api_calls c ON c.tenant_id = q2.tenant_id AND c.hour = %s
                 WHERE q2.quota_type = %s
                 GROUP BY q2.tenant_id) v
         WHERE q.tenant_id = v.tenant_id AND q.quota_type = %s AND q.current_usage <> v.calls
        """,
        (hour, QuotaType.API_CALLS_PER_HOUR.value, QuotaType.API_CALLS_PER_HOUR.value),
    )
    return cur.rowcount


# -- bytes served ----------------------------------------------------------------------------------

#: A ``bytes_served`` history point is written at most this often per tenant (the total, every flush).
BYTES_SERVED_POINT_EVERY = timedelta(minutes=5)


class ServedCount(NamedTuple):
    tenant_id: uuid.UUID
    bytes: int
    requests: int


async def add_bytes_served(conn: AsyncConn, counts: Sequence[ServedCount]) -> int:
    """Add to each tenant's ``tenant_bytes_served`` total and record the new total as a ``bytes_served``
    history point (a cumulative count, so downsampling keeps it exact; at most one point per tenant every
    ``BYTES_SERVED_POINT_EVERY``). Tenants deleted meanwhile are skipped; the number of tenants added to."""
    if not counts:
        return 0
    cur = await conn.execute(
        """
        WITH added AS (
            INSERT INTO tenant_bytes_served AS s (tenant_id, bytes, requests)
            SELECT v.tenant_id, v.bytes, v.requests
              FROM unnest(%(ids)s::uuid[], %(bytes)s::bigint[], %(requests)s::bigint[])
                   AS v (tenant_id, bytes, requests)
             WHERE EXISTS (SELECT 1 FROM tenants t WHERE t.id = v.tenant_id)
             ORDER BY v.tenant_id
            ON CONFLICT (tenant_id) DO UPDATE
               SET bytes = s.bytes + EXCLUDED.bytes, requests = s.requests + EXCLUDED.requests, updated_at = now()
            RETURNING s.tenant_id, s.bytes
        ), points AS (
            INSERT INTO tenant_usage_metrics (tenant_id, metric_name, metric_value, recorded_at)
            SELECT a.tenant_id, 'bytes_served', a.bytes, clock_timestamp()
              FROM added a
             WHERE NOT EXISTS (SELECT 1 FROM tenant_usage_metrics m
                                WHERE m.tenant_id = a.tenant_id AND m.metric_name = 'bytes_served'
                                  AND m.recorded_at > clock_timestamp() - %(every)s)
        )
        SELECT count(*) AS added FROM added
        """,
        {
            "ids": [c.tenant_id for c in counts],
            "bytes": [c.bytes for c in counts],
            "requests": [c.requests for c in counts],
            "every": BYTES_SERVED_POINT_EVERY,
        },
    )
    row = await cur.fetchone()
    return int(row["added"]) if row else 0


async def bytes_served(conn: AsyncConn, tenant_id: uuid.UUID, since: datetime) -> tuple[int, int, int]:
    """The tenant's (bytes served, requests) in total, and the bytes served since ``since``: the total less
    the last history point at or before ``since`` (0 when counting began later)."""
    cur = await conn.execute(
        """
        SELECT coalesce(s.bytes, 0) AS total, coalesce(s.requests, 0) AS requests,
               coalesce((SELECT m.metric_value FROM tenant_usage_metrics m
                          WHERE m.tenant_id = %(id)s AND m.metric_name = 'bytes_served' AND m.recorded_at <= %(since)s
                          ORDER BY m.recorded_at DESC LIMIT 1), 0) AS before
          FROM (SELECT 1) one LEFT JOIN tenant_bytes_served s ON s.tenant_id = %(id)s
        """,
        {"id": tenant_id, "since": since},
    )
    row = await cur.fetchone()
    assert row is not None
    total = int(row["total"])
    return total, int(row["requests"]), max(0, total - int(row["before"]))


# -- start-up ---------------------------------------------------------------------------------------


async def load_scans(conn: AsyncConn) -> list[dict[str, Any]]:
    """Every tenant's last table scan: tenant_id, database_bytes, tables, counters (decoded), scanned_at."""
    cur = await conn.execute("SELECT tenant_id, database_bytes, tables, counters, scanned_at FROM tenant_usage_scans")
    return list(await cur.fetchall())


async def load_storage(conn: AsyncConn) -> dict[uuid.UUID, dict[str, StorageUsage]]:
    """What the collector last measured of each tenant's stored files (kinds others record, such as
    ``backups``, are not the tenant's files: they never count in its ``storage_bytes``)."""
    cur = await conn.execute(
        "SELECT tenant_id, storage_type, bytes_used, file_count FROM tenant_storage_usage WHERE storage_type <> %s",
        (BACKUPS_STORAGE_TYPE,),
    )
    out: dict[uuid.UUID, dict[str, StorageUsage]] = {}
    for r in await cur.fetchall():
        out.setdefault(r["tenant_id"], {})[r["storage_type"]] = StorageUsage(
            bytes=int(r["bytes_used"]), files=int(r["file_count"])
        )
    return out


async def latest_metrics(conn: AsyncConn, names: Sequence[str]) -> dict[tuple[uuid.UUID, str], tuple[float, datetime]]:
    """The newest point of each (tenant, metric) in ``names``: one index probe each, not a history scan."""
    cur = await conn.execute(
        """
        SELECT t.id AS tenant_id, m.name AS metric_name, x.metric_value, x.recorded_at
          FROM tenants t
         CROSS JOIN unnest(%s::text[]) AS m (name)
         CROSS JOIN LATERAL (
               SELECT u.metric_value, u.recorded_at FROM tenant_usage_metrics u
                WHERE u.tenant_id = t.id AND u.metric_name = m.name
                ORDER BY u.recorded_at DESC LIMIT 1) x
        """,
        (list(names),),
    )
    return {
        (r["tenant_id"], r["metric_name"]): (float(r["metric_value"]), r["recorded_at"]) for r in await cur.fetchall()
    }


# -- history retention ------------------------------------------------------------------------------


async def oldest_metric(conn: AsyncConn) -> datetime | None:
    cur = await conn.execute("SELECT min(recorded_at) AS oldest FROM tenant_usage_metrics")
    row = await cur.fetchone()
    return row["oldest"] if row else None


async def delete_metrics_before(conn: AsyncConn, cutoff: datetime, *, batch: int = 10_000) -> int:
    """Delete history older than ``cutoff``, ``batch`` rows per statement; the number deleted."""
    deleted = 0
    while True:
        cur = await conn.execute(
            """
            DELETE FROM tenant_usage_metrics
             WHERE id IN (SELECT id FROM tenant_usage_metrics WHERE recorded_at < %s LIMIT %s)
            """,
            (cutoff, batch),
        )
        deleted += cur.rowcount
        if cur.rowcount < batch:
            return deleted


async def downsample_metrics(conn: AsyncConn, start: datetime, end: datetime, bucket: timedelta) -> int:
    """In ``[start, end)`` keep only the last point of each tenant, metric and ``bucket``; the number deleted.

    Idempotent: a slice already downsampled has one point per bucket and loses nothing more.
    """
    cur = await conn.execute(
        """
        DELETE FROM tenant_usage_metrics m
         USING (SELECT id, row_number() OVER (
                       PARTITION BY tenant_id, metric_name, date_bin(%(bucket)s, recorded_at, %(origin)s::timestamptz)
                       ORDER BY recorded_at DESC, id DESC) AS rank
                  FROM tenant_usage_metrics
                 WHERE recorded_at >= %(start)s AND recorded_at < %(end)s) r
         WHERE m.id = r.id AND r.rank > 1
        """,
        {"bucket": bucket, "origin": _BUCKET_ORIGIN, "start": start, "end": end},
    )
    return cur.rowcount


def _floor(moment: datetime, unit: timedelta) -> datetime:
    """``moment`` (UTC) rounded down to the hour or day."""
    moment = moment.astimezone(UTC)
    if unit == DAY:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(minute=0, second=0, microsecond=0)


def history_plan(
    now: datetime, oldest: datetime, *, raw: float, hourly: float, daily: float
) -> tuple[datetime, list[tuple[datetime, datetime, timedelta]]]:
    """How ``compact_metrics`` cuts the history: (delete before, [(slice start, slice end, bucket), ...]).

    Window edges fall on UTC hour / day boundaries so every bucket lies whole in one slice; points
    newer than ``now - raw`` (rounded down to the hour) are left alone.
    """
    raw_cutoff = _floor(now - timedelta(seconds=raw), HOUR)
    hourly_cutoff = _floor(now - timedelta(seconds=hourly), DAY)
    drop_cutoff = _floor(now - timedelta(seconds=daily), DAY)
    slices: list[tuple[datetime, datetime, timedelta]] = []
    start = max(_floor(oldest, DAY), drop_cutoff)
    while start < hourly_cutoff:
        end = min(start + _DAILY_SLICE, hourly_cutoff)
        slices.append((start, end, DAY))
        start = end
    while start < raw_cutoff:
        end = min(start + DAY, raw_cutoff)
        slices.append((start, end, HOUR))
        start = end
    return drop_cutoff, slices


async def compact_metrics(conn: AsyncConn, now: datetime, *, raw: float, hourly: float, daily: float) -> int:
    """Keep raw points for ``raw`` seconds, then the last point per tenant, metric and hour up to
    ``hourly`` seconds, then per day up to ``daily`` seconds; delete the rest. The number deleted.

    One statement per slice (autocommit: each commits alone, nothing is held for the whole run).
    """
    oldest = await oldest_metric(conn)
    if oldest is None:
        return 0
    drop_before, slices = history_plan(now, oldest, raw=raw, hourly=hourly, daily=daily)
    deleted = await delete_metrics_before(conn, drop_before)
    for start, end, bucket in slices:
        deleted += await downsample_metrics(conn, start, end, bucket)
    return deleted
