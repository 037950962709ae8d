"""All SQL on ``spare_databases`` and ``spare_pool`` (the control database). Callers own the transaction."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from controlplane.db import AsyncConn
from controlplane.provisioning.models import Spare, SpareState

_SELECT = """
    SELECT database_name, server_id, role_name, role_password_encrypted, schema_revision, state, created_at
      FROM spare_databases
"""


def _spare(row: Mapping[str, Any]) -> Spare:
    return Spare(
        database_name=row["database_name"],
        server_id=row["server_id"],
        role_name=row["role_name"],
        role_password_encrypted=row["role_password_encrypted"],
        schema_revision=row["schema_revision"],
        state=SpareState(row["state"]),
        created_at=row["created_at"],
    )


def spare_tag(seed: uuid.UUID, database_oid: int) -> str:
    """The tag in this control plane's spare names: its seed and its control database's OID (so a copy of
    the control database, say a test's clone of a template, tags its spares differently)."""
    return hashlib.sha256(f"{seed}:{database_oid}".encode()).hexdigest()[:8]


async def pool_tag(conn: AsyncConn) -> str:
    cur = await conn.execute(
        "SELECT seed, (SELECT oid FROM pg_database WHERE datname = current_database())::bigint AS oid FROM spare_pool"
    )
    row = await cur.fetchone()
    assert row is not None, "spare_pool has its row from migration 0010"
    return spare_tag(row["seed"], int(row["oid"]))


async def insert_creating(conn: AsyncConn, spare: Spare) -> None:
    await conn.execute(
        """
        INSERT INTO spare_databases (database_name, server_id, role_name, role_password_encrypted, schema_revision,
                                     state)
        VALUES (%s, %s, %s, %s, %s, 'creating')
        """,
        (spare.database_name, spare.server_id, spare.role_name, spare.role_password_encrypted, spare.schema_revision),
    )


async def mark_ready(conn: AsyncConn, database_name: str) -> None:
    await conn.execute(
        "UPDATE spare_databases SET state = 'ready' WHERE database_name = %s AND state = 'creating'", (database_name,)
    )


async def claim(conn: AsyncConn, server_id: uuid.UUID, revision: str) -> Spare | None:
    """Take one ready spare of ``server_id`` at ``revision`` out of the pool (oldest first).

    ``SKIP LOCKED``: concurrent claims each get another spare (or none), never the same one, and never wait
    for each other. Rolled back with the caller's transaction, the spare is in the pool again.
    """
    cur = await conn.execute(
        """
        DELETE FROM spare_databases
         WHERE database_name = (
                SELECT database_name FROM spare_databases
                 WHERE server_id = %s AND schema_revision = %s AND state = 'ready'
                 ORDER BY created_at
                 LIMIT 1
                   FOR UPDATE SKIP LOCKED)
        RETURNING database_name, server_id, role_name, role_password_encrypted, schema_revision, state, created_at
        """,
        (server_id, revision),
    )
    row = await cur.fetchone()
    return _spare(row) if row else None


async def mark_dropping(conn: AsyncConn, names: Iterable[str]) -> list[Spare]:
    """Take ready spares out of the pool before dropping them; one being claimed right now is skipped."""
    cur = await conn.execute(
        """
        UPDATE spare_databases SET state = 'dropping'
         WHERE database_name IN (
                SELECT database_name FROM spare_databases
                 WHERE database_name = ANY(%s) AND state = 'ready'
                   FOR UPDATE SKIP LOCKED)
        RETURNING database_name, server_id, role_name, role_password_encrypted, schema_revision, state, created_at
        """,
        (list(names),),
    )
    return [_spare(r) for r in await cur.fetchall()]


async def delete(conn: AsyncConn, database_name: str) -> None:
    await conn.execute("DELETE FROM spare_databases WHERE database_name = %s", (database_name,))


async def for_server(conn: AsyncConn, server_id: uuid.UUID) -> list[Spare]:
    cur = await conn.execute(_SELECT + " WHERE server_id = %s ORDER BY created_at", (server_id,))
    return [_spare(r) for r in await cur.fetchall()]


async def all_spares(conn: AsyncConn) -> list[Spare]:
    cur = await conn.execute(_SELECT + " ORDER BY server_id, created_at")
    return [_spare(r) for r in await cur.fetchall()]
