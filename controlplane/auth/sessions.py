"""Login sessions with rotating refresh tokens, for ``platform_sessions`` and ``auth_sessions``.

Both tables have the same shape (``platform_sessions`` in the control database for super-admins,
``auth_sessions`` in each tenant database for its users). A refresh token is
``"{session_id}.{secret}"``; only SHA-256 of the secret is stored (a slow hash buys nothing against
256 random bits). Every refresh replaces the secret. Presenting an already replaced secret means the
token was copied: the session is revoked (OAuth 2.0 Security BCP, refresh token rotation).

Callers own the transaction, with one rule for :func:`rotate`: on ``RefreshReplayed`` the revocation it
wrote must be committed before the error is reported (or use :func:`rotate_and_commit`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import secrets
import uuid
from typing import Any, Generic, Literal, TypeVar, overload

import msgspec
from psycopg import sql

from controlplane.db import AsyncConn
from controlplane.errors import InvalidToken

SessionTable = Literal["platform_sessions", "auth_sessions"]
SESSION_TABLES: tuple[SessionTable, ...] = ("platform_sessions", "auth_sessions")

#: ``uuid.UUID`` for platform admins, ``int`` for tenant users.
UserId = uuid.UUID | int
U = TypeVar("U", uuid.UUID, int)


class SessionRow(msgspec.Struct, Generic[U], frozen=True, kw_only=True):
    """A session that was just refreshed (``SessionRow[uuid.UUID]`` for admins, ``[int]`` for users)."""

    id: uuid.UUID
    user_id: U
    expires_at: dt.datetime


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


class RefreshReplayed(InvalidToken):
    """An old (already rotated) refresh token was presented; the session has been revoked.

    The revocation was written on the caller's connection: commit it, then report the error.
    """

    def __init__(self, detail: str, *, session_id: uuid.UUID, user_id: UserId) -> None:
        super().__init__(detail)
        self.session_id = session_id
        self.user_id = user_id


def _table(table: str) -> sql.Identifier:
    assert table in SESSION_TABLES, f"not a session table: {table!r}"
    return sql.Identifier(table)


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _inet(address: str | None) -> str | None:
    """``address`` if an ``inet`` column can hold it, else None (a session is never refused for it)."""
    if not address:
        return None
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def parse_refresh_token(token: str) -> tuple[uuid.UUID, str]:
    """``(session_id, secret)`` of a refresh token; malformed ones raise ``InvalidToken``."""
    head, sep, secret = token.partition(".")
    if not sep or not secret or len(token) > 200:
        raise InvalidToken("malformed refresh token")
    try:
        return uuid.UUID(head), secret
    except ValueError:
        raise InvalidToken("malformed refresh token") from None


async def open_session(
    conn: AsyncConn,
    table: SessionTable,
    user_id: UserId,
    *,
    ttl: float,
    source_address: str | None,
    user_agent: str | None,
) -> tuple[uuid.UUID, str]:
    """A new session of ``ttl`` seconds; returns its id and its first refresh token."""
    session_id = uuid.uuid4()
    secret = secrets.token_urlsafe(32)
    agent = user_agent[:512] if user_agent else None
    await conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, user_id, refresh_hash, expires_at, source_address, user_agent)"
            " VALUES (%s, %s, %s, now() + make_interval(secs => %s), %s::inet, %s)"
        ).format(_table(table)),
        (session_id, user_id, _hash(secret), float(ttl), _inet(source_address), agent),
    )
    return session_id, f"{session_id}.{secret}"


@overload
async def rotate(
    conn: AsyncConn, table: Literal["platform_sessions"], refresh_token: str
) -> tuple[SessionRow[uuid.UUID], str]: ...
@overload
async def rotate(
    conn: AsyncConn, table: Literal["auth_sessions"], refresh_token: str
) -> tuple[SessionRow[int], str]: ...
async def rotate(conn: AsyncConn, table: SessionTable, refresh_token: str) -> tuple[SessionRow[Any], str]:
    """Exchange a refresh token for a new one (the old one stops working).

    Unknown, revoked or expired sessions and malformed tokens raise ``InvalidToken``. A token whose
    secret was already rotated away revokes the session and raises ``RefreshReplayed``: the caller's
    transaction must commit on that exception. Run it inside a transaction (it locks the row).
    """
    session_id, secret = parse_refresh_token(refresh_token)
    cur = await conn.execute(
        sql.SQL(
            "SELECT id, user_id, expires_at, refresh_hash, revoked_at IS NOT NULL AS revoked,"
            " expires_at <= now() AS expired FROM {} WHERE id = %s FOR UPDATE"
        ).format(_table(table)),
        (session_id,),
    )
    row = await cur.fetchone()
    if row is None or row["revoked"]:
        raise InvalidToken("session not found or revoked")
    if row["expired"]:
        raise InvalidToken("session expired")
    if not hmac.compare_digest(bytes(row["refresh_hash"]), _hash(secret)):
        await conn.execute(
            sql.SQL("UPDATE {} SET revoked_at = now() WHERE id = %s").format(_table(table)), (session_id,)
        )
        raise RefreshReplayed(
            "refresh token was already used; the session has been revoked",
            session_id=session_id,
            user_id=row["user_id"],
        )
    new_secret = secrets.token_urlsafe(32)
    await conn.execute(
        sql.SQL("UPDATE {} SET refresh_hash = %s, last_used_at = now() WHERE id = %s").format(_table(table)),
        (_hash(new_secret), session_id),
    )
    session: SessionRow[Any] = SessionRow(id=row["id"], user_id=row["user_id"], expires_at=row["expires_at"])
    return session, f"{session_id}.{new_secret}"


@overload
async def rotate_and_commit(
    conn: AsyncConn, table: Literal["platform_sessions"], refresh_token: str
) -> tuple[SessionRow[uuid.UUID], str]: ...
@overload
async def rotate_and_commit(
    conn: AsyncConn, table: Literal["auth_sessions"], refresh_token: str
) -> tuple[SessionRow[int], str]: ...
async def rotate_and_commit(conn: AsyncConn, table: SessionTable, refresh_token: str) -> tuple[SessionRow[Any], str]:
    """:func:`rotate` in its own transaction, committing a replay's revocation before raising.

    For an autocommit connection that is not in a transaction (e.g. from a pool).
    """
    replayed: RefreshReplayed | None = None
    async with conn.transaction():
        try:
            return await rotate(conn, table, refresh_token)
        except RefreshReplayed as exc:
            replayed = exc
    assert replayed is not None
    raise replayed


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
