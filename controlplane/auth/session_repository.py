"""SQL of login sessions: ``platform_sessions`` (control database) and ``auth_sessions`` (each tenant database).

Both tables have the same shape; every function names the table it works on. Callers own the
transaction. What the columns mean (seeds, generations, hashes) is ``controlplane.auth.sessions``'.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

import msgspec
from psycopg import sql

from controlplane.db import AsyncConn

SessionTable = Literal["platform_sessions", "auth_sessions"]
SESSION_TABLES: tuple[SessionTable, ...] = ("platform_sessions", "auth_sessions")

#: ``uuid.UUID`` for platform admins, ``int`` for tenant users.
UserId = uuid.UUID | int


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A session as shown to its user ("where am I logged in")."""

    id: uuid.UUID
    user_id: UserId
    created_at: dt.datetime
    last_used_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    source_address: str | None
    user_agent: str | None
    active: bool


def _table(table: str) -> sql.Identifier:
    assert table in SESSION_TABLES, f"not a session table: {table!r}"
    return sql.Identifier(table)


async def insert_session(
    conn: AsyncConn,
    table: SessionTable,
    *,
    session_id: uuid.UUID,
    user_id: UserId,
    refresh_hash: bytes,
    refresh_seed: bytes,
    ttl: float,
    source_address: str | None,
    user_agent: str | None,
) -> None:
    """A new session at generation 0, expiring ``ttl`` seconds from now."""
    await conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, user_id, refresh_hash, refresh_seed, generation, expires_at, source_address,"
            " user_agent) VALUES (%s, %s, %s, %s, 0, now() + make_interval(secs => %s), %s::inet, %s)"
        ).format(_table(table)),
        (session_id, user_id, refresh_hash, refresh_seed, float(ttl), source_address, user_agent),
    )


async def lock_for_refresh(
    conn: AsyncConn, table: SessionTable, session_id: uuid.UUID, *, grace: float
) -> dict[str, Any] | None:
    """The session row, locked until the transaction ends, with whether it is revoked or expired and
    whether its last rotation is less than ``grace`` seconds ago (``in_grace``)."""
    cur = await conn.execute(
        sql.SQL(
            "SELECT id, user_id, expires_at, refresh_hash, refresh_seed, generation, previous_hash,"
            " revoked_at IS NOT NULL AS revoked, expires_at <= now() AS expired,"
            " coalesce(%s > 0 AND rotated_at > clock_timestamp() - make_interval(secs => %s), false) AS in_grace"
            " FROM {} WHERE id = %s FOR UPDATE"
        ).format(_table(table)),
        (float(grace), float(grace), session_id),
    )
    return await cur.fetchone()


async def set_refresh(
    conn: AsyncConn,
    table: SessionTable,
    session_id: uuid.UUID,
    *,
    refresh_hash: bytes,
    refresh_seed: bytes,
    generation: int,
    previous_hash: bytes,
) -> None:
    """Move the session to its next refresh secret (``rotated_at`` and ``last_used_at`` now)."""
    await conn.execute(
        sql.SQL(
            "UPDATE {} SET refresh_hash = %s, refresh_seed = %s, generation = %s, previous_hash = %s,"
            " rotated_at = now(), last_used_at = now() WHERE id = %s"
        ).format(_table(table)),
        (refresh_hash, refresh_seed, generation, previous_hash, session_id),
    )


async def touch(conn: AsyncConn, table: SessionTable, session_id: uuid.UUID) -> None:
    """Record a use of the session."""
    await conn.execute(sql.SQL("UPDATE {} SET last_used_at = now() WHERE id = %s").format(_table(table)), (session_id,))


async def revoke(conn: AsyncConn, table: SessionTable, session_id: uuid.UUID, *, user_id: UserId | None = None) -> bool:
    """Revoke one session (only if it belongs to ``user_id`` when given); False if none was live."""
    query = sql.SQL("UPDATE {} SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL").format(_table(table))
    params: list[Any] = [session_id]
    if user_id is not None:
        query = sql.SQL("{} AND user_id = %s").format(query)
        params.append(user_id)
    cur = await conn.execute(query, params)
    return cur.rowcount > 0


async def revoke_all(
    conn: AsyncConn, table: SessionTable, user_id: UserId, *, except_session: uuid.UUID | None = None
) -> int:
    """Revoke every live session of ``user_id`` (but ``except_session``); returns how many."""
    cur = await conn.execute(
        sql.SQL(
            "UPDATE {} SET revoked_at = now() WHERE user_id = %s AND revoked_at IS NULL AND id IS DISTINCT FROM %s"
        ).format(_table(table)),
        (user_id, except_session),
    )
    return cur.rowcount


async def is_active(conn: AsyncConn, table: SessionTable, session_id: uuid.UUID) -> bool:
    """Whether the session exists, is not revoked and has not expired."""
    cur = await conn.execute(
        sql.SQL("SELECT 1 FROM {} WHERE id = %s AND revoked_at IS NULL AND expires_at > now()").format(_table(table)),
        (session_id,),
    )
    return await cur.fetchone() is not None


async def list_sessions(
    conn: AsyncConn, table: SessionTable, user_id: UserId, *, include_inactive: bool = False
) -> list[SessionInfo]:
    """The user's sessions, newest first; only live ones unless ``include_inactive``."""
    query = sql.SQL(
        "SELECT id, user_id, created_at, last_used_at, expires_at, revoked_at, host(source_address) AS source_address,"
        " user_agent, (revoked_at IS NULL AND expires_at > now()) AS active FROM {} WHERE user_id = %s"
    ).format(_table(table))
    if not include_inactive:
        query = sql.SQL("{} AND revoked_at IS NULL AND expires_at > now()").format(query)
    cur = await conn.execute(sql.SQL("{} ORDER BY created_at DESC, id").format(query), (user_id,))
    return [SessionInfo(**row) for row in await cur.fetchall()]


async def delete_expired(conn: AsyncConn, table: SessionTable, *, keep_for: float = 0.0) -> int:
    """Delete sessions that expired or were revoked more than ``keep_for`` seconds ago; returns how many."""
    cur = await conn.execute(
        sql.SQL(
            # LEAST ignores NULLs: a live session's bound is its expiry.
            "DELETE FROM {} WHERE LEAST(revoked_at, expires_at) < now() - make_interval(secs => %s)"
        ).format(_table(table)),
        (float(keep_for),),
    )
    return cur.rowcount
