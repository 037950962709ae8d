"""SQL of authentication inside one tenant database: who a session or an API key is, login lookups.

The accounts' own SQL (creating and listing users, invitations, API keys, settings) is
``controlplane.accounts.repository``. Every function works on a connection to the tenant's own
database (there are no tenant ids: the database is the boundary) and never commits.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from controlplane.db import AsyncConn

Row = dict[str, Any]

#: The columns of a user row as the accounts API shows it (never a hash).
USER_COLUMNS = sql.SQL(
    "id, email, tenant_role, permissions, display_name, disabled, created_at, updated_at, last_login_at, "
    "(invite_hash IS NOT NULL) AS invited"
)


async def fetch_one(conn: AsyncConn, query: sql.SQL | sql.Composed, params: tuple[Any, ...]) -> Row | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


async def fetch_all(conn: AsyncConn, query: sql.SQL | sql.Composed, params: tuple[Any, ...]) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


# -- authentication ----------------------------------------------------------------------------


async def session_user(conn: AsyncConn, user_id: int, session_id: uuid.UUID) -> Row | None:
    """The user behind a login session, with whether the session is still live (one round trip)."""
    return await fetch_one(
        conn,
        sql.SQL(
            "SELECT u.id, u.email, u.tenant_role, u.permissions, u.disabled, s.expires_at,"
            " (s.revoked_at IS NULL AND s.expires_at > now()) AS live"
            " FROM users u JOIN auth_sessions s ON s.user_id = u.id WHERE u.id = %s AND s.id = %s"
        ),
        (user_id, session_id),
    )


async def api_key_by_hash(conn: AsyncConn, key_hash: bytes) -> Row | None:
    """The key with this hash, whether it may be used now, and its maker as they are now.

    ``maker_*`` are NULL when the key has no maker user (made during an impersonation: then
    ``created_by_admin`` / ``admin_session`` name the super-admin it answers to).
    """
    return await fetch_one(
        conn,
        sql.SQL(
            "SELECT k.id, k.name, k.tenant_role, k.created_by, k.created_by_admin, k.admin_session, k.expires_at,"
            " k.last_used_at, (k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())) AS live,"
            " u.tenant_role AS maker_role, u.permissions AS maker_permissions, u.disabled AS maker_disabled"
            " FROM api_keys k LEFT JOIN users u ON u.id = k.created_by WHERE k.key_hash = %s"
        ),
        (key_hash,),
    )


async def touch_api_key(conn: AsyncConn, key_id: int) -> None:
    """Record use, at most once a minute per key (a write per request would serialise a busy key)."""
    await conn.execute(
        "UPDATE api_keys SET last_used_at = now()"
        " WHERE id = %s AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        (key_id,),
    )


async def login_lookup(conn: AsyncConn, email: str) -> tuple[str, Row | None]:
    """``(login key, account)`` for a login attempt with ``email``.

    The login key is ``lower(email)`` as this database computes it, which is exactly what the account
    is looked up by: every spelling that reaches an account has the same key (the login throttle's),
    whatever the database's locale makes of case (``vİctim@`` and ``victim@`` under a UTF-8 ``LC_CTYPE``).
    """
    row = await fetch_one(
        conn,
        sql.SQL(
            "SELECT k.login_key, u.id, u.email, u.password_hash, u.tenant_role, u.disabled"
            " FROM (SELECT lower(%s) AS login_key) k LEFT JOIN users u ON lower(u.email) = k.login_key"
        ),
        (email,),
    )
    assert row is not None
    return str(row["login_key"]), (row if row["id"] is not None else None)


async def touch_login(conn: AsyncConn, user_id: int) -> None:
    await conn.execute("UPDATE users SET last_login_at = now() WHERE id = %s", (user_id,))


# -- users -------------------------------------------------------------------------------------


async def get_user(conn: AsyncConn, user_id: int) -> Row | None:
    return await fetch_one(conn, sql.SQL("SELECT {} FROM users WHERE id = %s").format(USER_COLUMNS), (user_id,))


async def update_user(conn: AsyncConn, user_id: int, values: dict[str, Any]) -> Row | None:
    """Set the given columns (names come from code, never from input)."""
    allowed = {"tenant_role", "permissions", "display_name", "disabled", "password_hash"}
    assert set(values) <= allowed, set(values) - allowed
    if not values:
        return await get_user(conn, user_id)
    assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in values)
    params = tuple(Jsonb(v) if k == "permissions" else v for k, v in values.items())
    return await fetch_one(
        conn,
        sql.SQL("UPDATE users SET {} WHERE id = %s RETURNING {}").format(assignments, USER_COLUMNS),
        (*params, user_id),
    )
