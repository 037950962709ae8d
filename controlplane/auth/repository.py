"""SQL of platform identities in the control database: ``platform_admins`` and ``signing_keys``.

Callers own the transaction. Password hashes never leave through :class:`Admin`; only
:func:`admin_login_lookup` returns one, for the login check.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from controlplane import db
from controlplane.db import AsyncConn
from controlplane.errors import Conflict, NotFound


class AdminExists(Conflict):
    code = "admin_exists"


class AdminNotFound(NotFound):
    code = "admin_not_found"


class Admin(msgspec.Struct, frozen=True, kw_only=True):
    """A super-admin of the platform."""

    id: uuid.UUID
    email: str
    disabled: bool
    created_at: dt.datetime
    last_login_at: dt.datetime | None


_COLUMNS = sql.SQL("id, email, disabled, created_at, last_login_at")


def _admin(row: Mapping[str, Any]) -> Admin:
    return Admin(
        id=row["id"],
        email=row["email"],
        disabled=row["disabled"],
        created_at=row["created_at"],
        last_login_at=row["last_login_at"],
    )


async def insert_admin(conn: AsyncConn, *, email: str, password_hash: str) -> Admin:
    """A new, enabled admin; an email taken in any letter case raises ``AdminExists``."""
    try:
        async with conn.transaction():
            cur = await conn.execute(
                sql.SQL(
                    "INSERT INTO platform_admins (id, email, password_hash) VALUES (%s, %s, %s) RETURNING {}"
                ).format(_COLUMNS),
                (uuid.uuid4(), email, password_hash),
            )
            row = await cur.fetchone()
    except psycopg.errors.UniqueViolation:
        raise AdminExists(f"an admin with email {email!r} already exists", email=email) from None
    assert row is not None
    return _admin(row)


async def get_admin_by_email(conn: AsyncConn, email: str) -> Admin | None:
    """The admin with ``email`` in any letter case."""
    cur = await conn.execute(
        sql.SQL("SELECT {} FROM platform_admins WHERE lower(email) = lower(%s)").format(_COLUMNS), (email,)
    )
    row = await cur.fetchone()
    return _admin(row) if row else None


async def admin_login_lookup(conn: AsyncConn, email: str) -> tuple[str, tuple[Admin, str] | None]:
    """``(login key, (admin, password hash))`` for a login attempt with ``email`` (the login check only).

    The login key is ``lower(email)`` as the control database computes it, which is exactly what the
    admin is looked up by, so every spelling that reaches an admin shares one login throttle.
    """
    cur = await conn.execute(
        sql.SQL(
            "SELECT k.login_key, a.id, a.email, a.disabled, a.created_at, a.last_login_at, a.password_hash"
            " FROM (SELECT lower(%s) AS login_key) k LEFT JOIN platform_admins a ON lower(a.email) = k.login_key"
        ),
        (email,),
    )
    row = await cur.fetchone()
    assert row is not None
    found = (_admin(row), str(row["password_hash"])) if row["id"] is not None else None
    return str(row["login_key"]), found


async def admin_session_live(conn: AsyncConn, admin_id: uuid.UUID, session_id: uuid.UUID) -> bool:
    """Whether ``session_id`` is a live login session of ``admin_id`` and the admin is enabled.

    What an impersonation token (and an API key made with one) depends on.
    """
    cur = await conn.execute(
        "SELECT 1 FROM platform_sessions s JOIN platform_admins a ON a.id = s.user_id"
        " WHERE s.id = %s AND s.user_id = %s AND s.revoked_at IS NULL AND s.expires_at > now() AND NOT a.disabled",
        (session_id, admin_id),
    )
    return await cur.fetchone() is not None


async def get_admin(conn: AsyncConn, admin_id: uuid.UUID) -> Admin | None:
    cur = await conn.execute(sql.SQL("SELECT {} FROM platform_admins WHERE id = %s").format(_COLUMNS), (admin_id,))
    row = await cur.fetchone()
    return _admin(row) if row else None


async def list_admins(conn: AsyncConn) -> list[Admin]:
    """Every admin, ordered by email."""
    cur = await conn.execute(sql.SQL("SELECT {} FROM platform_admins ORDER BY lower(email), id").format(_COLUMNS))
    return [_admin(row) for row in await cur.fetchall()]


async def set_admin_disabled(conn: AsyncConn, email: str, disabled: bool) -> Admin | None:
    """Disable or enable the admin with ``email``; None if there is none."""
    cur = await conn.execute(
        sql.SQL(
            "UPDATE platform_admins SET disabled = %s, updated_at = now() WHERE lower(email) = lower(%s) RETURNING {}"
        ).format(_COLUMNS),
        (disabled, email),
    )
    row = await cur.fetchone()
    return _admin(row) if row else None


async def set_admin_password(conn: AsyncConn, admin_id: uuid.UUID, password_hash: str) -> bool:
    """Replace the admin's password hash; False if there is no such admin."""
    cur = await conn.execute(
        "UPDATE platform_admins SET password_hash = %s, updated_at = now() WHERE id = %s", (password_hash, admin_id)
    )
    return cur.rowcount > 0


async def touch_login(conn: AsyncConn, admin_id: uuid.UUID) -> None:
    """Record a successful login."""
    await conn.execute("UPDATE platform_admins SET last_login_at = now() WHERE id = %s", (admin_id,))


# -- signing keys ------------------------------------------------------------------------------------

#: Serialises key creation and rotation across instances.
_SIGNING_KEYS_LOCK = db.lock_key("cardvault:signing-keys")


class SigningKeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A signing key as listed to operators (never its secret)."""

    kid: str
    created_at: dt.datetime
    retired_at: dt.datetime | None
    verify_until: dt.datetime | None
    active: bool


async def lock_signing_keys(conn: AsyncConn) -> None:
    """Serialise key creation and rotation across instances until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SIGNING_KEYS_LOCK,))


async def verifying_keys(conn: AsyncConn) -> list[dict[str, Any]]:
    """``kid``, ``secret_encrypted`` and ``active`` of the keys that still verify, oldest first."""
    cur = await conn.execute(
        "SELECT kid, secret_encrypted, retired_at IS NULL AS active FROM signing_keys"
        " WHERE verify_until IS NULL OR verify_until > now() ORDER BY created_at, kid"
    )
    return list(await cur.fetchall())


async def insert_signing_key(conn: AsyncConn, kid: str, secret_encrypted: str) -> None:
    await conn.execute("INSERT INTO signing_keys (kid, secret_encrypted) VALUES (%s, %s)", (kid, secret_encrypted))


async def retire_signing_keys(conn: AsyncConn, *, verify_for: float) -> None:
    """Retire the active key(s): they stop signing and verify for ``verify_for`` more seconds."""
    await conn.execute(
        "UPDATE signing_keys SET retired_at = now(), verify_until = now() + make_interval(secs => %s)"
        " WHERE retired_at IS NULL",
        (float(verify_for),),
    )


async def list_signing_keys(conn: AsyncConn) -> list[SigningKeyInfo]:
    """Every stored key, oldest first, without secrets."""
    cur = await conn.execute(
        "SELECT kid, created_at, retired_at, verify_until, retired_at IS NULL AS active"
        " FROM signing_keys ORDER BY created_at, kid"
    )
    return [SigningKeyInfo(**row) for row in await cur.fetchall()]


async def prune_signing_keys(conn: AsyncConn) -> int:
    """Delete the keys that no longer verify anything; returns how many."""
    cur = await conn.execute("DELETE FROM signing_keys WHERE verify_until IS NOT NULL AND verify_until <= now()")
    return cur.rowcount
