"""All SQL on ``db_servers``. Callers own the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

import psycopg

from controlplane.db import AsyncConn
from controlplane.errors import ServerExists
from controlplane.fleet.models import Server, ServerIdentity, ServerStatus
from controlplane.fleet.tls import ServerTls

_SELECT = """
    SELECT s.id, s.name, s.dsn_display, s.status, s.template_revision, s.created_at,
           s.system_identifier, s.port, s.sslmode,
           encode(sha256(convert_to(s.ssl_root_cert, 'UTF8')), 'hex') AS root_cert_sha256,
           (SELECT count(*) FROM tenants t WHERE t.server_id = s.id) AS tenants
      FROM db_servers s
"""


def _server(row: Mapping[str, Any]) -> Server:
    return Server(
        id=row["id"],
        name=row["name"],
        dsn_display=row["dsn_display"],
        status=ServerStatus(row["status"]),
        template_revision=row["template_revision"],
        tenants=row["tenants"],
        created_at=row["created_at"],
        system_identifier=None if row["system_identifier"] is None else str(row["system_identifier"]),
        port=row["port"],
        sslmode=row["sslmode"],
        root_cert_sha256=row["root_cert_sha256"],
    )


def _identity_params(identity: ServerIdentity | None) -> tuple[int | None, int | None]:
    return (None, None) if identity is None else (identity.system_identifier, identity.port)


def _exists(exc: psycopg.errors.UniqueViolation, name: str, identity: ServerIdentity | None) -> ServerExists:
    if exc.diag.constraint_name == "db_servers_identity_key" and identity is not None:
        return ServerExists(f"this PostgreSQL server ({identity.describe()}) is already registered", name=name)
    return ServerExists(f"a server named {name!r} is already registered", name=name)


async def insert_server(
    conn: AsyncConn,
    *,
    server_id: uuid.UUID,
    name: str,
    dsn_encrypted: str,
    dsn_display: str,
    identity: ServerIdentity | None,
    tls: ServerTls,
) -> None:
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO db_servers (id, name, dsn_encrypted, dsn_display, system_identifier, port, sslmode,"
                " ssl_root_cert) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (server_id, name, dsn_encrypted, dsn_display, *_identity_params(identity), tls.sslmode, tls.root_cert),
            )
    except psycopg.errors.UniqueViolation as exc:
        raise _exists(exc, name, identity) from None


async def update_dsn(
    conn: AsyncConn,
    server: Server,
    *,
    dsn_encrypted: str,
    dsn_display: str,
    identity: ServerIdentity,
    tls: ServerTls,
) -> None:
    """A new DSN and TLS settings (and the identity they were checked against); the row's trigger tells
    every replica."""
    try:
        async with conn.transaction():
            await conn.execute(
                "UPDATE db_servers SET dsn_encrypted = %s, dsn_display = %s, system_identifier = %s, port = %s,"
                " sslmode = %s, ssl_root_cert = %s, updated_at = now() WHERE id = %s",
                (dsn_encrypted, dsn_display, *_identity_params(identity), tls.sslmode, tls.root_cert, server.id),
            )
    except psycopg.errors.UniqueViolation as exc:
        raise _exists(exc, server.name, identity) from None


async def set_identity(conn: AsyncConn, server: Server, identity: ServerIdentity) -> None:
    """Record the identity of a server registered before identities were (``ServerExists`` if taken)."""
    try:
        async with conn.transaction():
            await conn.execute(
                "UPDATE db_servers SET system_identifier = %s, port = %s, updated_at = now()"
                " WHERE id = %s AND system_identifier IS NULL",
                (*_identity_params(identity), server.id),
            )
    except psycopg.errors.UniqueViolation as exc:
        raise _exists(exc, server.name, identity) from None


async def get_by_identity(conn: AsyncConn, identity: ServerIdentity) -> Server | None:
    cur = await conn.execute(_SELECT + " WHERE s.system_identifier = %s AND s.port = %s", _identity_params(identity))
    row = await cur.fetchone()
    return _server(row) if row else None


async def list_servers(conn: AsyncConn) -> list[Server]:
    cur = await conn.execute(_SELECT + " ORDER BY s.name")
    return [_server(row) for row in await cur.fetchall()]


async def get_by_name(conn: AsyncConn, name: str) -> Server | None:
    cur = await conn.execute(_SELECT + " WHERE s.name = %s", (name,))
    row = await cur.fetchone()
    return _server(row) if row else None


async def get_by_id(conn: AsyncConn, server_id: uuid.UUID) -> Server | None:
    cur = await conn.execute(_SELECT + " WHERE s.id = %s", (server_id,))
    row = await cur.fetchone()
    return _server(row) if row else None


async def dsn_encrypted(conn: AsyncConn, server_id: uuid.UUID) -> str | None:
    cur = await conn.execute("SELECT dsn_encrypted FROM db_servers WHERE id = %s", (server_id,))
    row = await cur.fetchone()
    return str(row["dsn_encrypted"]) if row else None


class StoredConnection(NamedTuple):
    """What connecting to a server takes: its encrypted DSN and its TLS settings."""

    dsn_encrypted: str
    tls: ServerTls


async def stored_connection(conn: AsyncConn, server_id: uuid.UUID) -> StoredConnection | None:
    cur = await conn.execute("SELECT dsn_encrypted, sslmode, ssl_root_cert FROM db_servers WHERE id = %s", (server_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    return StoredConnection(
        str(row["dsn_encrypted"]), ServerTls(sslmode=row["sslmode"], root_cert=row["ssl_root_cert"])
    )


async def set_status(conn: AsyncConn, server_id: uuid.UUID, status: ServerStatus) -> None:
    await conn.execute("UPDATE db_servers SET status = %s, updated_at = now() WHERE id = %s", (status.value, server_id))


async def set_template_revision(conn: AsyncConn, server_id: uuid.UUID, revision: str | None) -> None:
    await conn.execute(
        "UPDATE db_servers SET template_revision = %s, updated_at = now() WHERE id = %s", (revision, server_id)
    )


async def least_loaded_active(conn: AsyncConn, *, avoid: Collection[uuid.UUID] = ()) -> Server | None:
    """The active server with the fewest tenants (ties broken by name), none of ``avoid``."""
    cur = await conn.execute(
        _SELECT + " WHERE s.status = 'active' AND s.id <> ALL(%s) ORDER BY tenants, s.name LIMIT 1", (list(avoid),)
    )
    row = await cur.fetchone()
    return _server(row) if row else None
