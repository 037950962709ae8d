"""SQL of quotas as the platform manages them: effective limits (``tenant_quotas`` plus live
``quota_expansions``), the enforced limits of tenants paying for overage (``tenant_billing``), expansions,
and quota alert events (``quota_alerts``). Callers own transactions.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from psycopg import sql

from controlplane.db import AsyncConn
from controlplane.registry.models import QuotaType

Row = dict[str, Any]

_BIGINT_MAX = 2**63 - 1


def _effective(one: bool) -> sql.Composed:
    """Every quota (of one tenant: ``%(tenant)s``) with its configured limit, usage, active expansion
    and effective limit (NULL: unlimited). Sums are numeric, capped to bigint."""
    return sql.SQL(
        """
        WITH expansion AS (
            SELECT tenant_id, quota_type, sum(extra) AS extra
              FROM quota_expansions
             WHERE expires_at > now() {expansion_filter}
             GROUP BY tenant_id, quota_type
        )
        SELECT q.tenant_id, q.quota_type, q.quota_limit, q.current_usage AS usage,
               LEAST(coalesce(x.extra, 0), {cap})::bigint AS extra,
               -- LEAST ignores NULLs: an unlimited quota must stay NULL, not become the cap
               CASE WHEN q.quota_limit IS NOT NULL
                    THEN LEAST(q.quota_limit + coalesce(x.extra, 0), {cap})::bigint END AS effective_limit
          FROM tenant_quotas q
          LEFT JOIN expansion x ON x.tenant_id = q.tenant_id AND x.quota_type = q.quota_type
         WHERE TRUE {quota_filter}
        """
    ).format(
        expansion_filter=sql.SQL("AND tenant_id = %(tenant)s" if one else ""),
        quota_filter=sql.SQL("AND q.tenant_id = %(tenant)s" if one else ""),
        cap=sql.Literal(_BIGINT_MAX),
    )


# Built once: the fleet-wide and the one-tenant variant (the latter uses the tenant's indexes).
EFFECTIVE = {False: _effective(False), True: _effective(True)}
#: Every tenant's quotas: tenant_id, quota_type, quota_limit, usage, extra, effective_limit (for joins).
EFFECTIVE_QUOTAS = EFFECTIVE[False]


async def effective_limit(conn: AsyncConn, tenant_id: uuid.UUID, quota: QuotaType) -> int | None:
    """The limit enforcement applies: configured limit plus active expansions (None: unlimited or no row).

    A drop-in for ``registry.get_quota_limit`` (same arguments, same meaning of None).
    """
    query = sql.SQL("SELECT effective_limit FROM ({}) e WHERE e.quota_type = %(quota)s").format(EFFECTIVE[True])
    cur = await conn.execute(query, {"tenant": tenant_id, "quota": quota.value})
    row = await cur.fetchone()
    return int(row["effective_limit"]) if row and row["effective_limit"] is not None else None


#: Quotas that become soft for a tenant paying for a plan (``enforced_limit``); users stay hard.
SOFT_QUOTAS = frozenset({QuotaType.CARDS, QuotaType.STORAGE_BYTES, QuotaType.API_CALLS_PER_HOUR})
#: Subscription statuses (the provider's words, ``tenant_billing``) of a tenant paying for its plan:
#: billing's ``PAYING`` plus ``past_due``, which keeps the plan (and its allowance) until the grace deadline.
OVERAGE_STATUSES = ("active", "trialing", "past_due")

_ENFORCED = sql.SQL(
    """
    SELECT e.effective_limit,
           CASE WHEN e.effective_limit IS NOT NULL
                 AND b.subscription_status = ANY(%(statuses)s) AND t.subscription_tier <> 'starter'
                THEN LEAST(floor(e.effective_limit::numeric * %(ceiling)s::numeric), {cap})::bigint
                ELSE e.effective_limit END AS enforced_limit
      FROM ({effective}) e
      JOIN tenants t ON t.id = e.tenant_id
      LEFT JOIN tenant_billing b ON b.tenant_id = e.tenant_id
     WHERE e.quota_type = %(quota)s
    """
).format(effective=EFFECTIVE[True], cap=sql.Literal(_BIGINT_MAX))


async def enforced_limit(
    conn: AsyncConn, tenant_id: uuid.UUID, quota: QuotaType, *, ceiling: float = 1.0
) -> int | None:
    """The limit a create or an API call is held to: the effective limit (the plan's: what overage is
    billed over), times ``ceiling`` for a soft quota of a tenant paying for a paid plan (its subscription
    in ``OVERAGE_STATUSES``, tier not starter). None: unlimited or no row. ``ceiling`` 1.0: the plain
    effective limit (billing off, or overage turned off)."""
    if ceiling == 1.0 or quota not in SOFT_QUOTAS:
        return await effective_limit(conn, tenant_id, quota)
    cur = await conn.execute(
        _ENFORCED,
        {"tenant": tenant_id, "quota": quota.value, "ceiling": str(ceiling), "statuses": list(OVERAGE_STATUSES)},
    )
    row = await cur.fetchone()
    return int(row["enforced_limit"]) if row and row["enforced_limit"] is not None else None


async def quota_rows(conn: AsyncConn, tenant_id: uuid.UUID) -> list[Row]:
    """Every quota of the tenant: ``quota_type``, ``quota_limit``, ``usage``, ``extra``, ``effective_limit``."""
    cur = await conn.execute(sql.SQL("{} ORDER BY q.quota_type").format(EFFECTIVE[True]), {"tenant": tenant_id})
    return list(await cur.fetchall())


async def effective_limits(conn: AsyncConn) -> dict[uuid.UUID, dict[str, int | None]]:
    """Every tenant's effective limits by quota name, in one query."""
    cur = await conn.execute(EFFECTIVE[False])
    out: dict[uuid.UUID, dict[str, int | None]] = {}
    for r in await cur.fetchall():
        out.setdefault(r["tenant_id"], {})[r["quota_type"]] = r["effective_limit"]
    return out


# -- expansions --------------------------------------------------------------------------------------

_EXPANSION_COLUMNS = sql.SQL("id, quota_type, extra, reason, expires_at, created_at, created_by")


async def insert_expansion(
    conn: AsyncConn,
    tenant_id: uuid.UUID,
    *,
    quota: QuotaType,
    extra: int,
    hours: int,
    reason: str,
    created_by: str,
) -> Row:
    """An expansion of ``extra`` on ``quota`` from now for ``hours``."""
    query = sql.SQL(
        """
        INSERT INTO quota_expansions (tenant_id, quota_type, extra, reason, expires_at, created_by)
        VALUES (%s, %s, %s, %s, now() + make_interval(hours => %s), %s)
        RETURNING {}
        """
    ).format(_EXPANSION_COLUMNS)
    cur = await conn.execute(query, (tenant_id, quota.value, extra, reason, hours, created_by))
    row = await cur.fetchone()
    assert row is not None
    return row


async def active_expansion_rows(conn: AsyncConn, tenant_id: uuid.UUID) -> list[Row]:
    query = sql.SQL(
        "SELECT {} FROM quota_expansions WHERE tenant_id = %s AND expires_at > now() ORDER BY expires_at, id"
    ).format(_EXPANSION_COLUMNS)
    cur = await conn.execute(query, (tenant_id,))
    return list(await cur.fetchall())


async def delete_expired_expansions(conn: AsyncConn, *, grace: timedelta = timedelta(days=7)) -> int:
    """Delete expansions that expired more than ``grace`` ago (they no longer count anyway); how many.

    For a leader job; the grant itself stays in ``platform_audit`` (``tenant.storage.expand``).
    """
    cur = await conn.execute("DELETE FROM quota_expansions WHERE expires_at < now() - %s", (grace,))
    return cur.rowcount


# -- alert events ------------------------------------------------------------------------------------


def _evaluate(one: bool) -> sql.Composed:
    """Measure, find the breached thresholds, resolve open alerts that no longer hold, upsert the rest."""
    return sql.SQL(
        """
        WITH measured AS (
            SELECT e.tenant_id, e.quota_type, e.usage, e.effective_limit AS quota_limit
              FROM ({effective}) e
              JOIN tenants t ON t.id = e.tenant_id
             WHERE e.effective_limit IS NOT NULL AND t.status IN ('active', 'suspended', 'broken')
        ),
        breached AS (
            SELECT m.tenant_id, m.quota_type, th.threshold, m.usage, m.quota_limit
              FROM measured m CROSS JOIN unnest(%(thresholds)s::smallint[]) AS th (threshold)
             WHERE m.usage > 0 AND m.usage::numeric * 100 >= m.quota_limit::numeric * th.threshold
        ),
        resolved AS (
            UPDATE quota_alerts a
               SET state = 'resolved', resolved_at = now(), updated_at = now(),
                   usage = coalesce((SELECT m.usage FROM measured m
                                      WHERE m.tenant_id = a.tenant_id AND m.quota_type = a.quota_type), a.usage)
             WHERE a.state = 'open' {alert_filter}
               AND NOT EXISTS (SELECT 1 FROM breached b
                                WHERE b.tenant_id = a.tenant_id AND b.quota_type = a.quota_type
                                  AND b.threshold = a.threshold)
            RETURNING a.id, a.tenant_id, a.quota_type, a.threshold, a.usage, a.quota_limit, 'resolved' AS kind
        ),
        upserted AS (
            INSERT INTO quota_alerts AS a (tenant_id, quota_type, threshold, usage, quota_limit)
            SELECT tenant_id, quota_type, threshold, usage, quota_limit FROM breached
            ON CONFLICT (tenant_id, quota_type, threshold) WHERE state = 'open'
            DO UPDATE SET usage = EXCLUDED.usage, quota_limit = EXCLUDED.quota_limit, updated_at = now()
             WHERE (a.usage, a.quota_limit) IS DISTINCT FROM (EXCLUDED.usage, EXCLUDED.quota_limit)
            RETURNING a.id, a.tenant_id, a.quota_type, a.threshold, a.usage, a.quota_limit,
                      CASE WHEN a.xmax = 0 THEN 'opened' ELSE 'updated' END AS kind
        )
        SELECT c.*, t.slug
          FROM (SELECT * FROM resolved UNION ALL SELECT * FROM upserted) c
          JOIN tenants t ON t.id = c.tenant_id
         ORDER BY t.slug, c.quota_type, c.threshold
        """
    ).format(effective=EFFECTIVE[one], alert_filter=sql.SQL("AND a.tenant_id = %(tenant)s" if one else ""))


_EVALUATE = {False: _evaluate(False), True: _evaluate(True)}


async def evaluate_alerts(
    conn: AsyncConn, thresholds: Sequence[int], *, tenant_id: uuid.UUID | None = None
) -> list[Row]:
    """Open, update and resolve alerts of every tenant (or only ``tenant_id``) in one statement; the
    alerts it changed (``kind``: opened, updated, resolved) with the tenant's ``slug``."""
    cur = await conn.execute(_EVALUATE[tenant_id is not None], {"tenant": tenant_id, "thresholds": list(thresholds)})
    return list(await cur.fetchall())


async def alert_rows(
    conn: AsyncConn,
    *,
    state: str | None,
    tenant_id: uuid.UUID | None,
    quota: str | None,
    threshold: int | None,
    before_id: int | None,
    limit: int,
) -> list[Row]:
    """Alerts (with the tenant's ``slug``) newest first, filtered by every argument that is not None."""
    conditions: list[tuple[str, Any]] = [
        ("a.state = %s", state),
        ("a.tenant_id = %s", tenant_id),
        ("a.quota_type = %s", quota),
        ("a.threshold = %s", threshold),
        ("a.id < %s", before_id),
    ]
    chosen = [(clause, value) for clause, value in conditions if value is not None]
    where = [sql.SQL("TRUE"), *(sql.SQL(clause) for clause, _ in chosen)]
    params = [value for _, value in chosen]
    query = sql.SQL(
        """
        SELECT a.*, t.slug FROM quota_alerts a JOIN tenants t ON t.id = a.tenant_id
         WHERE {} ORDER BY a.id DESC LIMIT %s
        """
    ).format(sql.SQL(" AND ").join(where))
    cur = await conn.execute(query, [*params, limit])
    return list(await cur.fetchall())


async def delete_resolved_alerts(conn: AsyncConn, *, older_than: timedelta = timedelta(days=90)) -> int:
    """Delete alerts resolved more than ``older_than`` ago (history retention, for a leader job)."""
    cur = await conn.execute(
        "DELETE FROM quota_alerts WHERE state = 'resolved' AND resolved_at < now() - %s", (older_than,)
    )
    return cur.rowcount


async def open_alert_counts(conn: AsyncConn) -> dict[tuple[str, int], int]:
    """Open alerts per (quota, threshold) that has any."""
    cur = await conn.execute(
        "SELECT quota_type, threshold, count(*) AS n FROM quota_alerts WHERE state = 'open' GROUP BY 1, 2"
    )
    return {(r["quota_type"], int(r["threshold"])): int(r["n"]) for r in await cur.fetchall()}
