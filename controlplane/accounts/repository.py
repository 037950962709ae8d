"""SQL of a tenant's accounts: users and invitations, API keys, the tenant's settings, and the first
tenant_admin a new tenant is provisioned with.

``auth.tenant_repository`` keeps what authentication reads (sessions, key lookups, logins) and the
user row every module shares (``get_user``, ``update_user``). Works on a connection to the tenant's own
database and never commits.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from controlplane.auth.tenant_repository import USER_COLUMNS, fetch_all, fetch_one
from controlplane.db import AsyncConn

Row = dict[str, Any]

_KEY_COLUMNS = sql.SQL("id, name, prefix, tenant_role, created_by, created_at, expires_at, last_used_at, revoked_at")


async def seed_tenant_admin(conn: AsyncConn, email: str, password_hash: str) -> None:
    """The first tenant_admin of a new tenant (nothing if a user with that email exists already)."""
    await conn.execute(
        "INSERT INTO users (email, password_hash, tenant_role) VALUES (%s, %s, 'tenant_admin')"
        " ON CONFLICT ((lower(email))) DO NOTHING",
        (email, password_hash),
    )


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
    row = await fetch_one(
        conn,
        sql.SQL(
            "INSERT INTO users (email, password_hash, tenant_role, display_name, permissions,"
            " invite_hash, invite_expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {}"
        ).format(USER_COLUMNS),
        (email, password_hash, role, display_name, Jsonb(permissions or {}), invite_hash, invite_expires_at),
    )
    assert row is not None
    return row


async def list_users(conn: AsyncConn, *, after_id: int, limit: int) -> list[Row]:
    return await fetch_all(
        conn,
        sql.SQL("SELECT {} FROM users WHERE id > %s ORDER BY id LIMIT %s").format(USER_COLUMNS),
        (after_id, limit),
    )


async def accept_invite(conn: AsyncConn, invite_hash: bytes, password_hash: str) -> Row | None:
    """Set the password of the invited user holding this (unexpired) invitation; the invitation is spent."""
    return await fetch_one(
        conn,
        sql.SQL(
            "UPDATE users SET password_hash = %s, invite_hash = NULL, invite_expires_at = NULL"
            " WHERE invite_hash = %s AND invite_expires_at > now() AND NOT disabled RETURNING {}"
        ).format(USER_COLUMNS),
        (password_hash, invite_hash),
    )


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
    row = await fetch_one(
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
    return await fetch_all(conn, sql.SQL("SELECT {} FROM api_keys ORDER BY id").format(_KEY_COLUMNS), ())


async def revoke_api_key(conn: AsyncConn, key_id: int) -> Row | None:
    return await fetch_one(
        conn,
        sql.SQL("UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s RETURNING {}").format(
            _KEY_COLUMNS
        ),
        (key_id,),
    )


async def get_settings(conn: AsyncConn) -> Row:
    row = await fetch_one(conn, sql.SQL("SELECT settings, updated_at FROM tenant_settings"), ())
    assert row is not None, "tenant_settings has its one row from the migration"
    return row


async def put_settings(conn: AsyncConn, settings: dict[str, Any]) -> Row:
    row = await fetch_one(
        conn, sql.SQL("UPDATE tenant_settings SET settings = %s RETURNING settings, updated_at"), (Jsonb(settings),)
    )
    assert row is not None
    return row


async def password_hash_of(conn: AsyncConn, user_id: int) -> str | None:
    row = await fetch_one(conn, sql.SQL("SELECT password_hash FROM users WHERE id = %s"), (user_id,))
    return None if row is None else str(row["password_hash"])


async def reissue_invite(
    conn: AsyncConn, user_id: int, invite_hash: bytes, invite_expires_at: dt.datetime
) -> Row | None:
    """A new invitation for a user who has not accepted one yet (None: no such pending invitation)."""
    return await fetch_one(
        conn,
        sql.SQL(
            "UPDATE users SET invite_hash = %s, invite_expires_at = %s"
            " WHERE id = %s AND invite_hash IS NOT NULL RETURNING {}"
        ).format(USER_COLUMNS),
        (invite_hash, invite_expires_at, user_id),
    )
