"""SQL of the dashboard's fleet views: the tenants list, tenant counts, servers, and tenants answering 5xx.

The tenants list must stay fast at 10,000 tenants and more, so one page is one statement:

- the inner query filters (search, status, tier, server), orders by the sort key with the slug as the
  tie-breaker and stops at ``limit`` rows, keyset style (``after`` = the last row's sort key and slug);
- only then, for those rows alone, the outer query reads their quotas (``tenant_quotas``, primary key),
  active storage expansions and growth (index probes), so nothing is done per tenant of the fleet;
- sorting by growth needs every filtered tenant's growth: ``fleet_growth`` computes it for the whole fleet
  (two index probes per tenant, some 200 ms at 10,000 tenants) and the caller keeps it a while and passes
  it in (two arrays joined to the registry), so a page sorted by growth costs what one sorted by size does.

Size is ``tenant_usage_scans.database_bytes`` (the database size the collectors saw at their last table
scan, which they redo whenever the size changes). Growth is bytes per day of ``database_bytes`` between
the first point of the capacity planning's trend window and the latest point of ``tenant_usage_metrics``:
the slope of the two ends rather than the least-squares fit ``/admin/capacity`` computes, because the fit
reads every point of every tenant (far too slow for a list) while the ends are two index probes; the two
agree on steady growth, which is what a ranking needs.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec
from psycopg import sql

from controlplane.db import AsyncConn
from controlplane.usage.trends import TREND_WINDOW_DAYS

Sort = Literal["name", "size", "growth"]
SORTS: tuple[Sort, ...] = ("name", "size", "growth")


@dataclasses.dataclass(frozen=True)
class Growth:
    """Bytes per day of every tenant with a growth (two lists of one order, as the query takes them)."""

    tenant_ids: list[uuid.UUID]
    per_day: list[float]


@dataclasses.dataclass(frozen=True)
class TenantQuery:
    """What one page of the list shows: filters (None: any), the order, and where the page starts."""

    search: str | None = None
    status: str | None = None
    tier: str | None = None
    server: str | None = None
    sort: Sort = "name"
    #: The previous page's last (sort key, slug); None: the first page.
    after: tuple[Any, str] | None = None
    limit: int = 50
    #: Sorting by growth: every tenant's growth (``fleet_growth``), which the caller keeps a while.
    growth: Growth | None = None


class TenantRow(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    slug: str
    name: str
    status: str
    tier: str
    server: str
    size_bytes: int
    #: Bytes per day of the database (None: fewer than two points in the window).
    growth_per_day: float | None
    #: The value the list is sorted by (for the next page's cursor).
    sort_key: Any
    cards: int | None
    cards_limit: int | None
    users: int | None
    users_limit: int | None
    storage_bytes: int | None
    #: Effective storage limit: the configured one plus active expansions (None: unlimited).
    storage_limit: int | None


def _growth(tenant_id: str) -> sql.Composed:
    return sql.SQL(
        """LEFT JOIN LATERAL (
            SELECT (l.v - f.v) / nullif(date_part('epoch', l.at - f.at) / 86400, 0) AS per_day
              FROM (SELECT u.metric_value AS v, u.recorded_at AS at FROM tenant_usage_metrics u
                     WHERE u.tenant_id = {id} AND u.metric_name = 'database_bytes'
                     ORDER BY u.recorded_at DESC LIMIT 1) l
             CROSS JOIN (SELECT u.metric_value AS v, u.recorded_at AS at FROM tenant_usage_metrics u
                          WHERE u.tenant_id = {id} AND u.metric_name = 'database_bytes'
                            AND u.recorded_at >= now() - make_interval(days => {days})
                          ORDER BY u.recorded_at LIMIT 1) f
        ) g ON TRUE"""
    ).format(id=sql.SQL(tenant_id), days=sql.Literal(TREND_WINDOW_DAYS))


#: Per sort: the key, whether it descends (biggest first), and its type's SQL cast for the cursor.
_KEYS: dict[Sort, tuple[str, bool, str]] = {
    "name": ("t.name", False, "text"),
    "size": ("coalesce(sc.database_bytes, 0)", True, "bigint"),
    "growth": ("coalesce(r.per_day, 0)", True, "float8"),
}

_PAGE = """
    WITH page AS (
        SELECT t.id, t.slug, t.name, t.status, t.subscription_tier AS tier, s.name AS server,
               coalesce(sc.database_bytes, 0)::bigint AS size_bytes, {key} AS sort_key
          FROM tenants t
          JOIN db_servers s ON s.id = t.server_id
          LEFT JOIN tenant_usage_scans sc ON sc.tenant_id = t.id
          {ranking}
         WHERE {where}
         ORDER BY {key} {direction}, t.slug
         LIMIT %(limit)s
    )
    SELECT p.*, g.per_day AS growth_per_day, q.cards, q.cards_limit, q.users, q.users_limit, q.storage_bytes,
           CASE WHEN q.storage_limit IS NOT NULL THEN q.storage_limit + coalesce(x.extra, 0) END AS storage_limit
      FROM page p
      {outer_growth}
      LEFT JOIN LATERAL (
            SELECT max(qq.current_usage) FILTER (WHERE qq.quota_type = 'cards') AS cards,
                   max(qq.quota_limit) FILTER (WHERE qq.quota_type = 'cards') AS cards_limit,
                   max(qq.current_usage) FILTER (WHERE qq.quota_type = 'users') AS users,
                   max(qq.quota_limit) FILTER (WHERE qq.quota_type = 'users') AS users_limit,
                   max(qq.current_usage) FILTER (WHERE qq.quota_type = 'storage_bytes') AS storage_bytes,
                   max(qq.quota_limit) FILTER (WHERE qq.quota_type = 'storage_bytes') AS storage_limit
              FROM tenant_quotas qq WHERE qq.tenant_id = p.id) q ON TRUE
      LEFT JOIN LATERAL (
            SELECT sum(e.extra)::bigint AS extra FROM quota_expansions e
             WHERE e.tenant_id = p.id AND e.quota_type = 'storage_bytes' AND e.expires_at > now()) x ON TRUE
     ORDER BY p.sort_key {direction}, p.slug
"""


def _like(text: str) -> str:
    """``text`` as a substring pattern for ``ILIKE`` (its own ``%``, ``_`` and ``\\`` taken literally)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def page_query(query: TenantQuery) -> tuple[sql.Composed, dict[str, Any]]:
    """The statement of one page, and its parameters."""
    key, descending, cast = _KEYS[query.sort]
    where: list[sql.Composable] = [sql.SQL("TRUE")]
    params: dict[str, Any] = {"limit": query.limit}
    if query.search:
        where.append(sql.SQL("(t.slug ILIKE %(like)s OR t.name ILIKE %(like)s)"))
        params["like"] = _like(query.search)
    for column, name, value in (
        ("t.status", "status", query.status),
        ("t.subscription_tier", "tier", query.tier),
        ("s.name", "server", query.server),
    ):
        if value is not None:
            where.append(sql.SQL("{} = {}").format(sql.SQL(column), sql.Placeholder(name)))
            params[name] = value
    if query.sort == "growth":
        growth = query.growth or Growth([], [])
        params["ranked_ids"], params["ranked_growth"] = growth.tenant_ids, growth.per_day
    if query.after is not None:
        params["after_key"], params["after_slug"] = query.after
        after = "{key} {op} %(after_key)s::{cast} OR ({key} = %(after_key)s::{cast} AND t.slug > %(after_slug)s)"
        where.append(
            sql.SQL("(" + after + ")").format(
                key=sql.SQL(key), op=sql.SQL("<" if descending else ">"), cast=sql.SQL(cast)
            )
        )
    statement = sql.SQL(_PAGE).format(
        key=sql.SQL(key),
        direction=sql.SQL("DESC" if descending else "ASC"),
        ranking=sql.SQL(
            "LEFT JOIN unnest(%(ranked_ids)s::uuid[], %(ranked_growth)s::float8[]) AS r (id, per_day) ON r.id = t.id"
        )
        if query.sort == "growth"
        else sql.SQL(""),
        outer_growth=_growth("p.id"),
        where=sql.SQL(" AND ").join(where),
    )
    return statement, params


async def tenant_page(conn: AsyncConn, query: TenantQuery) -> list[TenantRow]:
    """One page of the tenants list (see the module docstring), in the page's order."""
    statement, params = page_query(query)
    cur = await conn.execute(statement, params)
    return [msgspec.convert(row, TenantRow) for row in await cur.fetchall()]


async def fleet_growth(conn: AsyncConn) -> Growth:
    """Every tenant's growth (see the module docstring): two index probes per tenant, so a caller sorting
    by growth computes it once and keeps it a while rather than once per page."""
    statement = sql.SQL("SELECT t.id, g.per_day FROM tenants t {} WHERE g.per_day IS NOT NULL").format(_growth("t.id"))
    cur = await conn.execute(statement)
    rows = await cur.fetchall()
    return Growth([row["id"] for row in rows], [float(row["per_day"]) for row in rows])


async def server_sizes(conn: AsyncConn) -> list[dict[str, Any]]:
    """Every server with its tenants (not provisioning) and their databases' bytes at their last scans:
    one join of the registry and ``tenant_usage_scans`` (what the overview shows before a collection)."""
    cur = await conn.execute(
        """
        SELECT s.name, s.status, count(t.id) AS tenants, coalesce(sum(sc.database_bytes), 0)::bigint AS database_bytes
          FROM db_servers s
          LEFT JOIN tenants t ON t.server_id = s.id AND t.status <> 'provisioning'
          LEFT JOIN tenant_usage_scans sc ON sc.tenant_id = t.id
         GROUP BY s.name, s.status
         ORDER BY s.name
        """
    )
    return list(await cur.fetchall())


async def server_names(conn: AsyncConn) -> list[str]:
    """Every registered server's name, for the list's server filter."""
    cur = await conn.execute("SELECT name FROM db_servers ORDER BY name")
    return [str(row["name"]) for row in await cur.fetchall()]


async def status_tier_counts(conn: AsyncConn) -> list[tuple[str, str, int]]:
    """Tenants per (status, tier): one index-only scan of ``tenants_status_tier``."""
    cur = await conn.execute(
        "SELECT status, subscription_tier AS tier, count(*) AS n FROM tenants GROUP BY 1, 2 ORDER BY 1, 2"
    )
    return [(row["status"], row["tier"], int(row["n"])) for row in await cur.fetchall()]


class ErrorRate(msgspec.Struct, kw_only=True):
    slug: str
    requests: int
    errors: int
    rate: float
    since: datetime


async def high_error_rates(
    conn: AsyncConn, *, hours: int, min_requests: int, min_rate: float, limit: int
) -> list[ErrorRate]:
    """Tenants whose API answered 5xx to at least ``min_rate`` of at least ``min_requests`` requests over
    the last ``hours`` hours, worst first: the tenants with any 5xx in the window first (the partial index
    ``tenant_request_stats_errors``: 5xx are rare), then only their rows (primary key)."""
    cur = await conn.execute(
        """
        WITH hot AS (
            SELECT DISTINCT tenant_id FROM tenant_request_stats
             WHERE requests_5xx > 0 AND hour > date_trunc('hour', now()) - make_interval(hours => %(hours)s)
        ), r AS (
            SELECT s.tenant_id,
                   sum(s.requests_2xx + s.requests_3xx + s.requests_4xx + s.requests_5xx)::bigint AS requests,
                   sum(s.requests_5xx)::bigint AS errors, min(s.hour) AS since
              FROM tenant_request_stats s
              JOIN hot ON hot.tenant_id = s.tenant_id
             WHERE s.hour > date_trunc('hour', now()) - make_interval(hours => %(hours)s)
             GROUP BY s.tenant_id
        )
        SELECT t.slug, r.requests, r.errors, r.errors::float8 / r.requests AS rate, r.since
          FROM r JOIN tenants t ON t.id = r.tenant_id
         WHERE r.requests >= %(min_requests)s AND r.errors::float8 / r.requests >= %(min_rate)s
         ORDER BY rate DESC, t.slug
         LIMIT %(limit)s
        """,
        {"hours": hours, "min_requests": min_requests, "min_rate": min_rate, "limit": limit},
    )
    return [msgspec.convert(row, ErrorRate) for row in await cur.fetchall()]
