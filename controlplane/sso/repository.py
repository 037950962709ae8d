"""SQL of enterprise SSO: ``tenant_sso`` and ``sso_login_states`` in the control database, and the
just-in-time user in the tenant's database."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from controlplane.db import AsyncConn

Row = dict[str, Any]
_COLUMNS = sql.SQL(
    "issuer, client_id, client_secret_encrypted, allowed_domains, default_role, password_login, created_at, updated_at"
)


async def get_config(conn: AsyncConn, tenant_id: uuid.UUID) -> Row | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql.SQL("SELECT {} FROM tenant_sso WHERE tenant_id = %s").format(_COLUMNS), (tenant_id,))
        return await cur.fetchone()


async def put_config(
    conn: AsyncConn,
    tenant_id: uuid.UUID,
    *,
    issuer: str,
    client_id: str,
    secret_encrypted: str | None,
    allowed_domains: list[str],
    default_role: str,
    password_login: bool,
) -> Row | None:
    """Insert or update; ``secret_encrypted`` None keeps the stored one (None back if there is none)."""
    values = {
        "t": tenant_id,
        "i": issuer,
        "c": client_id,
        "s": secret_encrypted,
        "d": allowed_domains,
        "r": default_role,
        "p": password_login,
    }
    if secret_encrypted is None:
        query = sql.SQL(
            "UPDATE tenant_sso SET issuer = %(i)s, client_id = %(c)s, allowed_domains = %(d)s,"
            " default_role = %(r)s, password_login = %(p)s, updated_at = now() WHERE tenant_id = %(t)s"
            " RETURNING {}"
        )
    else:
        query = sql.SQL(
            "INSERT INTO tenant_sso (tenant_id, issuer, client_id, client_secret_encrypted, allowed_domains,"
            " default_role, password_login) VALUES (%(t)s, %(i)s, %(c)s, %(s)s, %(d)s, %(r)s, %(p)s)"
            " ON CONFLICT (tenant_id) DO UPDATE SET issuer = EXCLUDED.issuer, client_id = EXCLUDED.client_id,"
            " client_secret_encrypted = EXCLUDED.client_secret_encrypted,"
            " allowed_domains = EXCLUDED.allowed_domains, default_role = EXCLUDED.default_role,"
            " password_login = EXCLUDED.password_login, updated_at = now() RETURNING {}"
        )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query.format(_COLUMNS), values)
        return await cur.fetchone()


async def delete_config(conn: AsyncConn, tenant_id: uuid.UUID) -> bool:
    cur = await conn.execute("DELETE FROM tenant_sso WHERE tenant_id = %s", (tenant_id,))
    return cur.rowcount > 0


async def password_login_allowed(conn: AsyncConn, tenant_id: uuid.UUID) -> bool:
    cur = await conn.execute("SELECT password_login FROM tenant_sso WHERE tenant_id = %s", (tenant_id,))
    row = await cur.fetchone()
    return row is None or bool(row["password_login"])


async def save_state(
    conn: AsyncConn,
    *,
    state_hash: bytes,
    tenant_id: uuid.UUID,
    browser_hash: bytes,
    nonce: str,
    code_verifier: str,
    ttl: dt.timedelta,
) -> None:
    """A started sign-in (expired ones are swept on the way)."""
    await conn.execute("DELETE FROM sso_login_states WHERE expires_at < now()")
    await conn.execute(
        "INSERT INTO sso_login_states (state_hash, tenant_id, browser_hash, nonce, code_verifier, expires_at)"
        " VALUES (%s, %s, %s, %s, %s, now() + %s)",
        (state_hash, tenant_id, browser_hash, nonce, code_verifier, ttl),
    )


async def take_state(conn: AsyncConn, state_hash: bytes, tenant_id: uuid.UUID, browser_hash: bytes) -> Row | None:
    """Spend the sign-in of this state, tenant and browser (None if there is no live one: nothing spent)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "DELETE FROM sso_login_states WHERE state_hash = %s AND tenant_id = %s AND browser_hash = %s"
            " AND expires_at > now() RETURNING nonce, code_verifier",
            (state_hash, tenant_id, browser_hash),
        )
        return await cur.fetchone()


async def find_user(conn: AsyncConn, email: str) -> Row | None:
    """The tenant user with this email (any case)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT id, email, tenant_role, disabled FROM users WHERE lower(email) = lower(%s)", (email,))
        return await cur.fetchone()


async def create_user(conn: AsyncConn, email: str, role: str) -> Row | None:
    """A just-in-time user with ``role`` and no password (an empty hash never verifies); None if a user
    with this email appeared meanwhile."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "INSERT INTO users (email, password_hash, tenant_role) VALUES (%s, '', %s)"
            " ON CONFLICT ((lower(email))) DO NOTHING RETURNING id, email, tenant_role, disabled",
            (email, role),
        )
        return await cur.fetchone()
