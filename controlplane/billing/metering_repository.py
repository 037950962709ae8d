"""All SQL of the overage ledger (``billing_usage_reports``), and the reads metering makes of usage
(``tenant_usage_metrics``, ``tenant_api_calls``), quotas (``tenant_quotas``, ``quota_expansions``) and
billing (``tenant_billing``, ``billing_meters``), each its own read-only query. Callers own transactions.

Overage is computed in one statement for every tenant, meter and day asked for:

- ``cards``: the day's peak of the ``cards`` history points minus the cards limit;
- ``storage_gb``: the day's peak of ``storage_bytes`` (stored files, the number the tenant API
  enforces) over the storage limit, in started GiB;
- ``api_calls``: per hour of the day, calls over the hourly limit (``tenant_api_calls``), summed.

The limit of a day is the tenant's configured limit plus the expansions that covered any part of it
(an unlimited quota bills nothing). Only tenants with a provider customer are computed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg import sql

from controlplane.db import AsyncConn

Row = dict[str, Any]

_GIB = 1024**3
_BIGINT_MAX = 2**63 - 1

_OVERAGE = sql.SQL(
    """
    WITH days AS (
        SELECT d AS period_start, d + interval '24 hours' AS period_end
          FROM unnest(%(days)s::timestamptz[]) AS d
    ),
    limits AS (
        SELECT q.tenant_id, q.quota_type, d.period_start, d.period_end,
               LEAST(q.quota_limit::numeric + coalesce(x.extra, 0), {cap})::bigint AS quota_limit
          FROM tenant_quotas q
          JOIN tenant_billing b ON b.tenant_id = q.tenant_id AND b.customer_id IS NOT NULL
         CROSS JOIN days d
          LEFT JOIN LATERAL (
               SELECT sum(e.extra) AS extra FROM quota_expansions e
                WHERE e.tenant_id = q.tenant_id AND e.quota_type = q.quota_type
                  AND e.created_at < d.period_end AND e.expires_at > d.period_start) x ON true
         WHERE q.quota_limit IS NOT NULL
           AND q.quota_type IN ('cards', 'storage_bytes', 'api_calls_per_hour') {tenant_filter}
    ),
    levels AS (
        SELECT l.*, p.peak AS usage
          FROM limits l
         CROSS JOIN LATERAL (
               SELECT max(u.metric_value)::bigint AS peak FROM tenant_usage_metrics u
                WHERE u.tenant_id = l.tenant_id AND u.metric_name = l.quota_type
                  AND u.recorded_at >= l.period_start AND u.recorded_at < l.period_end) p
         WHERE l.quota_type IN ('cards', 'storage_bytes') AND p.peak IS NOT NULL
    ),
    calls AS (
        SELECT l.*, c.calls AS usage, c.excess
          FROM limits l
         CROSS JOIN LATERAL (
               SELECT sum(a.calls)::bigint AS calls, sum(GREATEST(a.calls - l.quota_limit, 0))::bigint AS excess
                 FROM tenant_api_calls a
                WHERE a.tenant_id = l.tenant_id AND a.hour >= l.period_start AND a.hour < l.period_end) c
         WHERE l.quota_type = 'api_calls_per_hour' AND c.calls IS NOT NULL
    ),
    overage AS (
        SELECT tenant_id, 'cards' AS meter, period_start, period_end, usage, quota_limit,
               usage - quota_limit AS quantity
          FROM levels WHERE quota_type = 'cards'
        UNION ALL
        SELECT tenant_id, 'storage_gb', period_start, period_end, usage, quota_limit,
               ceil(GREATEST(usage - quota_limit, 0)::numeric / {gib})::bigint
          FROM levels WHERE quota_type = 'storage_bytes'
        UNION ALL
        SELECT tenant_id, 'api_calls', period_start, period_end, usage, quota_limit, excess
          FROM calls
    )
    SELECT tenant_id, meter, period_start, period_end, usage, quota_limit, quantity
      FROM overage WHERE quantity > 0
     ORDER BY tenant_id, meter, period_start
    """
)

_OVERAGE_QUERIES = {
    one: _OVERAGE.format(
        cap=sql.Literal(_BIGINT_MAX),
        gib=sql.Literal(_GIB),
        tenant_filter=sql.SQL("AND q.tenant_id = %(tenant)s" if one else ""),
    )
    for one in (False, True)
}


async def overage(conn: AsyncConn, days: Sequence[datetime], *, tenant_id: uuid.UUID | None = None) -> list[Row]:
    """The billable overage (quantity > 0) of every tenant with a customer (or only ``tenant_id``) on each
    UTC day starting at ``days``: tenant_id, meter, period_start, period_end, usage, quota_limit, quantity."""
    if not days:
        return []
    cur = await conn.execute(_OVERAGE_QUERIES[tenant_id is not None], {"days": list(days), "tenant": tenant_id})
    return list(await cur.fetchall())


async def insert_reports(conn: AsyncConn, rows: Sequence[Row], *, next_attempt_at: datetime) -> list[Row]:
    """Add ledger rows (keys of ``overage`` plus ``identifier``); a period already in the ledger is left
    as it is. The rows actually added."""
    if not rows:
        return []
    cur = await conn.execute(
        """
        INSERT INTO billing_usage_reports
               (tenant_id, meter, period_start, period_end, identifier, quantity, usage, quota_limit, next_attempt_at)
        SELECT v.*, %s
          FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::text[],
                      %s::bigint[], %s::bigint[], %s::bigint[])
               AS v (tenant_id, meter, period_start, period_end, identifier, quantity, usage, quota_limit)
         WHERE EXISTS (SELECT 1 FROM tenants t WHERE t.id = v.tenant_id)
        ON CONFLICT DO NOTHING
        RETURNING id, tenant_id, meter, period_start, quantity, identifier
        """,
        (
            next_attempt_at,
            [r["tenant_id"] for r in rows],
            [r["meter"] for r in rows],
            [r["period_start"] for r in rows],
            [r["period_end"] for r in rows],
            [r["identifier"] for r in rows],
            [r["quantity"] for r in rows],
            [r["usage"] for r in rows],
            [r["quota_limit"] for r in rows],
        ),
    )
    return list(await cur.fetchall())


# -- reporting --------------------------------------------------------------------------------------


async def claim_next(conn: AsyncConn, now: datetime, tenant_id: uuid.UUID | None = None) -> Row | None:
    """The oldest due row that can be sent (its tenant has a customer, its meter was synced), of every
    tenant or only ``tenant_id``, locked for the caller's transaction; rows another transaction holds are
    skipped, never waited for."""
    cur = await conn.execute(
        """
        SELECT r.id, r.tenant_id, r.meter, r.period_start, r.period_end, r.identifier, r.quantity, r.attempts,
               b.customer_id, m.event_name
          FROM billing_usage_reports r
          JOIN tenant_billing b ON b.tenant_id = r.tenant_id AND b.customer_id IS NOT NULL
          JOIN billing_meters m ON m.meter = r.meter
         WHERE r.reported_at IS NULL AND r.failed_at IS NULL AND r.next_attempt_at <= %(now)s
           AND (%(tenant)s::uuid IS NULL OR r.tenant_id = %(tenant)s)
         ORDER BY r.period_start, r.id
         LIMIT 1
           FOR UPDATE OF r SKIP LOCKED
        """,
        {"now": now, "tenant": tenant_id},
    )
    return await cur.fetchone()


async def due_tenants(conn: AsyncConn, now: datetime) -> list[uuid.UUID]:
    """The tenants with due rows that can be sent (what ``claim_next`` would find), by id."""
    cur = await conn.execute(
        """
        SELECT DISTINCT r.tenant_id
          FROM billing_usage_reports r
          JOIN tenant_billing b ON b.tenant_id = r.tenant_id AND b.customer_id IS NOT NULL
          JOIN billing_meters m ON m.meter = r.meter
         WHERE r.reported_at IS NULL AND r.failed_at IS NULL AND r.next_attempt_at <= %s
         ORDER BY r.tenant_id
        """,
        (now,),
    )
    return [r["tenant_id"] for r in await cur.fetchall()]


async def mark_reported(conn: AsyncConn, report_id: int, now: datetime) -> None:
    await conn.execute(
        "UPDATE billing_usage_reports SET reported_at = %s, attempts = attempts + 1 WHERE id = %s",
        (now, report_id),
    )


async def mark_attempt_failed(
    conn: AsyncConn, report_id: int, *, error: str, next_attempt_at: datetime, failed_at: datetime | None
) -> None:
    await conn.execute(
        """
        UPDATE billing_usage_reports
           SET attempts = attempts + 1, last_error = %s, next_attempt_at = %s, failed_at = %s
         WHERE id = %s
        """,
        (error, next_attempt_at, failed_at, report_id),
    )


async def unsendable_count(conn: AsyncConn, now: datetime, tenant_id: uuid.UUID | None = None) -> int:
    """Due rows (of every tenant or only ``tenant_id``) that cannot be sent yet: the tenant has no customer
    or the meter was never synced."""
    cur = await conn.execute(
        """
        SELECT count(*) AS n FROM billing_usage_reports r
         WHERE r.reported_at IS NULL AND r.failed_at IS NULL AND r.next_attempt_at <= %(now)s
           AND (%(tenant)s::uuid IS NULL OR r.tenant_id = %(tenant)s)
           AND (NOT EXISTS (SELECT 1 FROM tenant_billing b
                             WHERE b.tenant_id = r.tenant_id AND b.customer_id IS NOT NULL)
                OR NOT EXISTS (SELECT 1 FROM billing_meters m WHERE m.meter = r.meter))
        """,
        {"now": now, "tenant": tenant_id},
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def retry(conn: AsyncConn, report_id: int, now: datetime) -> Row | None:
    """Make a failed or pending (unsent) row due now; None if there is no such row (or it was reported)."""
    cur = await conn.execute(
        """
        UPDATE billing_usage_reports SET failed_at = NULL, next_attempt_at = %s
         WHERE id = %s AND reported_at IS NULL
        RETURNING id
        """,
        (now, report_id),
    )
    return await cur.fetchone()


# -- reading the ledger -----------------------------------------------------------------------------

_STATES = {
    "pending": sql.SQL("r.reported_at IS NULL AND r.failed_at IS NULL"),
    "reported": sql.SQL("r.reported_at IS NOT NULL"),
    "failed": sql.SQL("r.reported_at IS NULL AND r.failed_at IS NOT NULL"),
}


async def report_rows(
    conn: AsyncConn,
    *,
    tenant_id: uuid.UUID | None,
    meter: str | None,
    state: str | None,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[Row]:
    """Ledger rows with the tenant's slug, newest period first (ties: highest id first), filtered by every
    argument that is not None; ``after``: the (period_start, id) of the previous page's last row."""
    where: list[sql.Composable] = [sql.SQL("TRUE")]
    params: list[Any] = []
    if tenant_id is not None:
        where.append(sql.SQL("r.tenant_id = %s"))
        params.append(tenant_id)
    if meter is not None:
        where.append(sql.SQL("r.meter = %s"))
        params.append(meter)
    if state is not None:
        where.append(_STATES[state])
    if after is not None:
        where.append(sql.SQL("(r.period_start, r.id) < (%s, %s)"))
        params.extend(after)
    query = sql.SQL(
        """
        SELECT r.*, t.slug FROM billing_usage_reports r JOIN tenants t ON t.id = r.tenant_id
         WHERE {} ORDER BY r.period_start DESC, r.id DESC LIMIT %s
        """
    ).format(sql.SQL(" AND ").join(where))
    cur = await conn.execute(query, [*params, limit])
    return list(await cur.fetchall())


async def tenant_reports(conn: AsyncConn, tenant_id: uuid.UUID, first: datetime, last: datetime) -> list[Row]:
    """The tenant's ledger rows of the periods starting in [first, last]: meter, period_start, quantity,
    reported_at."""
    cur = await conn.execute(
        """
        SELECT meter, period_start, quantity, reported_at FROM billing_usage_reports
         WHERE tenant_id = %s AND period_start >= %s AND period_start <= %s
        """,
        (tenant_id, first, last),
    )
    return list(await cur.fetchall())


async def billing_period(conn: AsyncConn, tenant_id: uuid.UUID) -> Row | None:
    """The tenant's customer, subscription period end and the billing interval of its price (``month`` or
    ``year``; None if the price is not in the catalogue), or None without a billing record."""
    cur = await conn.execute(
        """
        SELECT b.customer_id, b.current_period_end, p.billing_interval
          FROM tenant_billing b LEFT JOIN billing_prices p ON p.price_id = b.price_id
         WHERE b.tenant_id = %s
        """,
        (tenant_id,),
    )
    return await cur.fetchone()
