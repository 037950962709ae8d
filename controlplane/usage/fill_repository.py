"""SQL of server fill: each tenant's latest size and growth from the usage history (control database), and
each server's own view of its tenants (sizes, connections per database, ``max_connections``).

Control-database queries leave the transaction to the caller; server queries take a management
connection to the server's maintenance database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from controlplane.db import AsyncConn

# Per tenant (not provisioning or deleting): its newest ``database_bytes`` point (one index probe) and the
# least-squares slope of its ``database_bytes`` points in the window (bytes per day; NULL for fewer than two
# moments), the same fit ``capacity.fleet_fits`` makes, for this one metric only.
_TENANT_LOADS = """
    WITH growth AS (
        SELECT m.tenant_id, regr_slope(m.metric_value, date_part('epoch', m.recorded_at) / 86400) AS slope
          FROM tenant_usage_metrics m
         WHERE %(growth)s AND m.metric_name = 'database_bytes'
           AND m.recorded_at >= now() - make_interval(days => %(days)s)
         GROUP BY m.tenant_id
    )
    SELECT t.id, t.slug, t.status, t.server_id, coalesce(x.metric_value, 0)::float8 AS database_bytes,
           coalesce(g.slope, 0)::float8 AS slope
      FROM tenants t
      LEFT JOIN growth g ON g.tenant_id = t.id
      LEFT JOIN LATERAL (
            SELECT u.metric_value FROM tenant_usage_metrics u
             WHERE u.tenant_id = t.id AND u.metric_name = 'database_bytes'
             ORDER BY u.recorded_at DESC LIMIT 1) x ON TRUE
     WHERE t.status NOT IN ('provisioning', 'deleting')
     ORDER BY t.slug
"""


async def tenant_loads(conn: AsyncConn, *, days: int, growth: bool = True) -> list[dict[str, Any]]:
    """Per tenant: ``id``, ``slug``, ``status``, ``server_id``, ``database_bytes`` (newest recorded, 0 if none)
    and ``slope`` (bytes per day over the last ``days``; 0 without ``growth``, which skips the fit)."""
    cur = await conn.execute(_TENANT_LOADS, {"days": days, "growth": growth})
    return list(await cur.fetchall())


class ServerView(NamedTuple):
    """A server as it sees itself now: sizes and client connections of the named databases, its total."""

    sizes: dict[str, int]
    connections: dict[str, int]
    total_connections: int
    max_connections: int


async def server_view(admin: AsyncConn, names: Sequence[str]) -> ServerView:
    """Sizes and client backends of ``names`` (absent when the database does not exist), all client
    backends of the server and its ``max_connections``: three cheap catalog reads."""
    cur = await admin.execute(
        "SELECT datname, pg_database_size(oid) AS bytes FROM pg_database WHERE datname = ANY(%s)", (list(names),)
    )
    sizes = {r["datname"]: int(r["bytes"]) for r in await cur.fetchall()}
    cur = await admin.execute(
        "SELECT datname, count(*) AS n FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND datname = ANY(%s) GROUP BY datname",
        (list(names),),
    )
    connections = {r["datname"]: int(r["n"]) for r in await cur.fetchall()}
    cur = await admin.execute(
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS total,"
        " current_setting('max_connections')::int AS maximum"
    )
    row = await cur.fetchone()
    assert row is not None
    return ServerView(sizes, connections, int(row["total"]), int(row["maximum"]))
