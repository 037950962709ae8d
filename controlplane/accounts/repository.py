"""SQL of the accounts rules that ``auth.tenant_repository`` (the identities' own SQL) does not cover.

Works on a connection to the tenant's own database and never commits.
"""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row

from controlplane.db import AsyncConn

Row = dict[str, Any]


async def lock_user_managers(conn: AsyncConn) -> list[Row]:
    """Every user who can act and may hold ``users:manage`` (enabled, invitation accepted; a tenant_admin,
    or anyone with a ``users:manage`` grant or denial), locked until the transaction ends.

    Locked in id order, so concurrent changes of roles, permissions or disabled flags queue instead of
    deadlocking, and a waiting one gets the rows as the other left them (READ COMMITTED re-reads a row
    locked meanwhile). Rows: ``id``, ``tenant_role``, ``permissions``.
    """
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT id, tenant_role, permissions FROM users"
            " WHERE NOT disabled AND invite_hash IS NULL"
            " AND (tenant_role = 'tenant_admin' OR permissions ? 'users:manage')"
            " ORDER BY id FOR UPDATE"
        )
        return await cur.fetchall()
