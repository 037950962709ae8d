"""All SQL on ``server_pgbouncers``, and the tenants a PgBouncer serves. Callers own the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from controlplane.db import AsyncConn
from controlplane.fleet.pgbouncer_models import PgBouncerAddress, PgBouncerTenant, StoredPgBouncer

_SELECT = """
    SELECT p.server_id, s.name AS server_name, p.host, p.port, p.config_dir, p.admin_password_encrypted
      FROM server_pgbouncers p JOIN db_servers s ON s.id = p.server_id
"""


def _stored(row: Mapping[str, Any]) -> StoredPgBouncer:
    return StoredPgBouncer(
        server_id=row["server_id"],
        server_name=row["server_name"],
        address=PgBouncerAddress(row["host"], row["port"]),
        config_dir=row["config_dir"],
        admin_password_encrypted=row["admin_password_encrypted"],
    )


async def upsert(
    conn: AsyncConn, server_id: uuid.UUID, address: PgBouncerAddress, config_dir: str, admin_password_encrypted: str
) -> None:
    """Set the server's PgBouncer; an existing one keeps its admin password (PgBouncer may be running with it)."""
    await conn.execute(
        """
        INSERT INTO server_pgbouncers (server_id, host, port, config_dir, admin_password_encrypted)
        VALUES (%s, %s, %s, %s, %s)
        ON CONFLICT (server_id) DO UPDATE
           SET host = excluded.host, port = excluded.port, config_dir = excluded.config_dir, updated_at = now()
        """,
        (server_id, address.host, address.port, config_dir, admin_password_encrypted),
    )


async def delete(conn: AsyncConn, server_id: uuid.UUID) -> bool:
    cur = await conn.execute("DELETE FROM server_pgbouncers WHERE server_id = %s", (server_id,))
    return cur.rowcount > 0


async def get(conn: AsyncConn, server_id: uuid.UUID) -> StoredPgBouncer | None:
    cur = await conn.execute(_SELECT + " WHERE p.server_id = %s", (server_id,))
    row = await cur.fetchone()
    return _stored(row) if row else None


async def list_all(conn: AsyncConn) -> list[StoredPgBouncer]:
    cur = await conn.execute(_SELECT + " ORDER BY s.name")
    return [_stored(row) for row in await cur.fetchall()]


async def address(conn: AsyncConn, server_id: uuid.UUID) -> PgBouncerAddress | None:
    """Where tenant connections to ``server_id`` go instead of the server itself, if anywhere."""
    cur = await conn.execute("SELECT host, port FROM server_pgbouncers WHERE server_id = %s", (server_id,))
    row = await cur.fetchone()
    return PgBouncerAddress(row["host"], row["port"]) if row else None


async def tenants(conn: AsyncConn, server_id: uuid.UUID) -> list[PgBouncerTenant]:
    """The tenants whose database is on ``server_id`` (a tenant being deleted is left out: it goes)."""
    cur = await conn.execute(
        "SELECT database_name, role_name, role_password_encrypted FROM tenants"
        " WHERE server_id = %s AND status <> 'deleting' ORDER BY database_name",
        (server_id,),
    )
    return [
        PgBouncerTenant(row["database_name"], row["role_name"], row["role_password_encrypted"])
        for row in await cur.fetchall()
    ]
