"""The SQL of audit-log retention: old entries deleted in batches, from ``platform_audit`` (control
database) and from a tenant's ``audit_log`` (its own database).

Batches (by id, oldest first) keep each statement short: row locks and WAL come in small steps, and a
large backlog (retention turned on for the first time) never makes one long transaction.
"""

from __future__ import annotations

from psycopg import sql

from controlplane.db import AsyncConn

#: Rows deleted per statement.
BATCH = 5000


async def _delete_older(conn: AsyncConn, table: str, older_than_seconds: float) -> int:
    statement = sql.SQL(
        "DELETE FROM {table} WHERE id IN (SELECT id FROM {table}"
        " WHERE at < now() - make_interval(secs => %s) ORDER BY id LIMIT %s)"
    ).format(table=sql.Identifier(table))
    deleted = 0
    while True:
        cur = await conn.execute(statement, (older_than_seconds, BATCH))
        deleted += cur.rowcount
        if cur.rowcount < BATCH:
            return deleted


async def delete_old_platform_audit(conn: AsyncConn, older_than_seconds: float) -> int:
    """Delete ``platform_audit`` entries older than that (``conn`` in autocommit: a batch per commit)."""
    return await _delete_older(conn, "platform_audit", older_than_seconds)


async def delete_old_tenant_audit(conn: AsyncConn, older_than_seconds: float) -> int:
    """Delete a tenant's ``audit_log`` entries older than that (``conn`` in autocommit)."""
    return await _delete_older(conn, "audit_log", older_than_seconds)
