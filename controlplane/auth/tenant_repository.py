"""SQL of identities inside one tenant database: ``users``, ``auth_sessions`` lookups, ``api_keys``.

Every function works on a connection to the tenant's own database (there are no tenant ids: the
database is the boundary) and never commits.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from controlplane.db import AsyncConn

Row = dict[str, Any]

_USER_COLUMNS = sql.SQL(
    "id, email, tenant_role, permissions, display_name, disabled, created_at, updated_at, last_login_at, "
    "(invite_hash IS NOT NULL) AS invited"
)
_KEY_COLUMNS = sql.SQL("id, name, prefix, tenant_role, created_by, created_at, expires_at, last_used_at, revoked_at")


async def _one(conn: AsyncConn, query: sql.SQL | sql.Composed, params: tuple[Any, ...]) -> Row | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()


async def _all(conn: AsyncConn, query: sql.SQL | sql.Composed, params: tuple[Any, ...]) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


# -- authentication ----------------------------------------------------------------------------


async def session_user(conn: AsyncConn, user_id: int, session_id: uuid.UUID) -> Row | None:
    """The user behind a login session, with whether the session is still live (one round trip)."""
    return await _one(
        conn,
        sql.SQL(
            "SELECT u.id, u.email, u.tenant_role, u.permissions, u.disabled,"
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
    return await _one(
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
    row = await _one(
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


async def insert_user(
    conn: AsyncConn,
    *,
    email: str,
    password_hash: str,
    role: str,
    display_name: str | None = None,
    permissions: dict[str, bool] | None = None,
    invite_hash: bytes | None = None,
    invite_expires_at: dt.datetime | None = None,
) -> Row:
    row = await _one(
        conn,
        sql.SQL(
            "INSERT INTO users (email, password_hash, tenant_role, display_name, permissions,"
            " invite_hash, invite_expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {}"
        ).format(_USER_COLUMNS),
        (email, password_hash, role, display_name, Jsonb(permissions or {}), invite_hash, invite_expires_at),
    )
    assert row is not None
    return row


async def get_user(conn: AsyncConn, user_id: int) -> Row | None:
    return await _one(conn, sql.SQL("SELECT {} FROM users WHERE id = %s").format(_USER_COLUMNS), (user_id,))


async def list_users(conn: AsyncConn, *, after_id: int, limit: int) -> list[Row]:
    return await _all(
        conn,
        sql.SQL("SELECT {} FROM users WHERE id > %s ORDER BY id LIMIT %s").format(_USER_COLUMNS),
        (after_id, limit),
    )


async def update_user(conn: AsyncConn, user_id: int, values: dict[str, Any]) -> Row | None:
    """Set the given columns (names come from code, never from input)."""
    allowed = {"tenant_role", "permissions", "display_name", "disabled", "password_hash"}
    assert set(values) <= allowed, set(values) - allowed
    if not values:
        return await get_user(conn, user_id)
    assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in values)
    params = tuple(Jsonb(v) if k == "permissions" else v for k, v in values.items())
    return await _one(
        conn,
        sql.SQL("UPDATE users SET {} WHERE id = %s RETURNING {}").format(assignments, _USER_COLUMNS),
        (*params, user_id),
    )


async def count_admins(conn: AsyncConn) -> int:
    """Enabled tenant_admins (a tenant must keep one)."""
    row = await _one(
        conn, sql.SQL("SELECT count(*) AS n FROM users WHERE tenant_role = 'tenant_admin' AND NOT disabled"), ()
    )
    return int(row["n"]) if row else 0


async def accept_invite(conn: AsyncConn, invite_hash: bytes, password_hash: str) -> Row | None:
    """Set the password of the invited user holding this (unexpired) invitation; the invitation is spent."""
    return await _one(
        conn,
        sql.SQL(
            "UPDATE users SET password_hash = %s, invite_hash = NULL, invite_expires_at = NULL"
            " WHERE invite_hash = %s AND invite_expires_at > now() AND NOT disabled RETURNING {}"
        ).format(_USER_COLUMNS),
        (password_hash, invite_hash),
    )


# -- API keys ----------------------------------------------------------------------------------


async def insert_api_key(
    conn: AsyncConn,
    *,
    name: str,
    prefix: str,
    key_hash: bytes,
    role: str,
    created_by: int | None,
    expires_at: dt.datetime | None,
    created_by_admin: uuid.UUID | None = None,
    admin_session: uuid.UUID | None = None,
) -> Row:
    row = await _one(
        conn,
        sql.SQL(
            "INSERT INTO api_keys (name, prefix, key_hash, tenant_role, created_by, expires_at, created_by_admin,"
            " admin_session) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {}"
        ).format(_KEY_COLUMNS),
        (name, prefix, key_hash, role, created_by, expires_at, created_by_admin, admin_session),
    )
    assert row is not None
    return row


async def list_api_keys(conn: AsyncConn) -> list[Row]:
    return await _all(conn, sql.SQL("SELECT {} FROM api_keys ORDER BY id").format(_KEY_COLUMNS), ())


async def revoke_api_key(conn: AsyncConn, key_id: int) -> Row | None:
    return await _one(
        conn,
        sql.SQL("UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s RETURNING {}").format(
            _KEY_COLUMNS
        ),
        (key_id,),
    )


# -- settings ----------------------------------------------------------------------------------


async def get_settings(conn: AsyncConn) -> Row:
    row = await _one(conn, sql.SQL("SELECT settings, updated_at FROM tenant_settings"), ())
    assert row is not None, "tenant_settings has its one row from the migration"
    return row


async def put_settings(conn: AsyncConn, settings: dict[str, Any]) -> Row:
    row = await _one(
        conn, sql.SQL("UPDATE tenant_settings SET settings = %s RETURNING settings, updated_at"), (Jsonb(settings),)
    )
    assert row is not None
    return row


# -- accounts (``controlplane.accounts``) -------------------------------------------------------


async def password_hash_of(conn: AsyncConn, user_id: int) -> str | None:
    row = await _one(conn, sql.SQL("SELECT password_hash FROM users WHERE id = %s"), (user_id,))
    return None if row is None else str(row["password_hash"])


async def lock_active_admins(conn: AsyncConn) -> list[int]:
    """Ids of the tenant_admins who can act (enabled, invitation accepted), locked until the transaction ends.

    Locked in id order, so two concurrent demotions queue instead of deadlocking, and the second one
    re-reads the rows the first one changed (READ COMMITTED re-checks them after the wait).
    """
    rows = await _all(
        conn,
        sql.SQL(
            "SELECT id FROM users WHERE tenant_role = 'tenant_admin' AND NOT disabled AND invite_hash IS NULL"
            " ORDER BY id FOR UPDATE"
        ),
        (),
    )
    return [int(r["id"]) for r in rows]


async def reissue_invite(
    conn: AsyncConn, user_id: int, invite_hash: bytes, invite_expires_at: dt.datetime
) -> Row | None:
    """A new invitation for a user who has not accepted one yet (None: no such pending invitation)."""
    return await _one(
        conn,
        sql.SQL(
            "UPDATE users SET invite_hash = %s, invite_expires_at = %s"
            " WHERE id = %s AND invite_hash IS NOT NULL RETURNING {}"
        ).format(_USER_COLUMNS),
        (invite_hash, invite_expires_at, user_id),
    )
