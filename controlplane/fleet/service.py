"""Registering servers, reaching them, and choosing where a new tenant goes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from psycopg import conninfo
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from controlplane import db
from controlplane.crypto import SecretBox
from controlplane.db import AsyncConn
from controlplane.errors import NoServerAvailable, ServerExists, ServerNotFound, ServerUnavailable, ValidationFailed
from controlplane.fleet import repository
from controlplane.fleet.models import (
    DEFAULT_SERVER_NAME,
    SERVER_NAME_PATTERN,
    Server,
    ServerStatus,
    validate_server_name,
)
from controlplane.settings import DatabaseSettings

#: Management connections kept open per server (CREATE DATABASE, DROP DATABASE, roles).
_ADMIN_POOL_SIZE = 4


class Fleet:
    """The servers hosting tenant databases and a small management pool for each.

    Management connections are autocommit (``CREATE DATABASE`` needs it) and are reused across
    operations: a new connection costs milliseconds, as much as the rest of a provisioning step.
    """

    def __init__(self, box: SecretBox, settings: DatabaseSettings) -> None:
        self._box = box
        self._settings = settings
        self._dsns: dict[uuid.UUID, str] = {}
        self._pools: dict[uuid.UUID, AsyncConnectionPool[AsyncConn]] = {}
        #: Servers whose last management connection failed: probed before their pool is used again.
        self._suspect: set[uuid.UUID] = set()
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            await pool.close()

    # -- registration ---------------------------------------------------------------------------

    async def register(self, conn: AsyncConn, name: str, dsn: str, *, check: bool = True) -> Server:
        """Add a server; with ``check`` its DSN must connect with rights to create databases and roles."""
        validate_server_name(name)
        try:
            conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ValidationFailed(f"invalid DSN: {exc}") from None
        if check:
            await self._check_rights(dsn)
        await repository.insert_server(
            conn,
            server_id=uuid.uuid4(),
            name=name,
            dsn_encrypted=self._box.encrypt(dsn),
            dsn_display=db.redact(dsn),
        )
        server = await repository.get_by_name(conn, name)
        assert server is not None
        return server

    async def ensure_default(self, conn: AsyncConn, control_dsn: str) -> None:
        """Register the control database's own server when the fleet is empty."""
        if not await repository.list_servers(conn):
            with contextlib.suppress(ServerExists):  # another replica starting at the same time
                await self.register(conn, DEFAULT_SERVER_NAME, db.with_database(control_dsn, "postgres"))

    async def _check_rights(self, dsn: str) -> None:
        try:
            async with db.connect(dsn, self._settings, role="check") as conn:
                cur = await conn.execute(
                    "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
                )
                row = await cur.fetchone()
        except ServerUnavailable as exc:
            # The DSN given is what is wrong (host, port, credentials, database): a client error.
            raise ValidationFailed(f"cannot connect with this DSN: {exc.detail}") from None
        if not row or not (row["rolsuper"] or (row["rolcreatedb"] and row["rolcreaterole"])):
            raise ValidationFailed("the DSN's user needs SUPERUSER or CREATEDB and CREATEROLE")

    async def get(self, conn: AsyncConn, name: str) -> Server:
        # A name no server can have (say, with a NUL byte) is not looked up.
        server = await repository.get_by_name(conn, name) if SERVER_NAME_PATTERN.fullmatch(name) else None
        if server is None:
            raise ServerNotFound(f"no server named {name!r}", name=name)
        return server

    async def set_status(self, conn: AsyncConn, name: str, status: ServerStatus) -> Server:
        server = await self.get(conn, name)
        await repository.set_status(conn, server.id, status)
        return await self.get(conn, name)

    async def place(self, conn: AsyncConn) -> Server:
        """Where a new tenant goes: the active server with the fewest tenants, if it answers.

        An unreachable server raises ``ServerUnavailable`` here, before anything of the tenant exists.
        """
        server = await repository.least_loaded_active(conn)
        if server is None:
            raise NoServerAvailable("no active database server; add one with `cardvault servers add`")
        async with self.admin(conn, server.id) as admin:
            await admin.execute("SELECT 1")
        return server

    # -- connections ----------------------------------------------------------------------------

    async def dsn(self, conn: AsyncConn, server_id: uuid.UUID) -> str:
        """The server's management DSN (decrypted, cached)."""
        cached = self._dsns.get(server_id)
        if cached is None:
            encrypted = await repository.dsn_encrypted(conn, server_id)
            if encrypted is None:
                raise ServerNotFound(f"no server with id {server_id}")
            cached = self._dsns[server_id] = self._box.decrypt(encrypted)
        return cached

    async def _probe(self, control: AsyncConn, server_id: uuid.UUID) -> None:
        """One direct connection: fails at once when the server is down, where a pool waits its timeout."""
        try:
            async with db.connect(await self.dsn(control, server_id), self._settings, role="probe") as conn:
                await conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            raise ServerUnavailable(f"database server unreachable: {str(exc).strip()}") from exc

    @asynccontextmanager
    async def admin(self, control: AsyncConn, server_id: uuid.UUID) -> AsyncIterator[AsyncConn]:
        """A pooled autocommit management connection to the server's maintenance database.

        A server is probed with a direct connection before its pool is first made and after a failure,
        so an unreachable server fails fast (``ServerUnavailable``) instead of after the pool timeout.
        """
        pool = self._pools.get(server_id)
        if pool is None or server_id in self._suspect:
            await self._probe(control, server_id)
            if pool is not None and server_id in self._suspect:
                await pool.check()  # back up: drop connections that died with the old server process
            self._suspect.discard(server_id)
        if pool is None:
            dsn = await self.dsn(control, server_id)
            async with self._lock:
                pool = self._pools.get(server_id)
                if pool is None:
                    pool = AsyncConnectionPool(
                        db.management_conninfo(dsn, self._settings, role="admin"),
                        min_size=0,
                        max_size=_ADMIN_POOL_SIZE,
                        open=False,
                        timeout=self._settings.connect_timeout + 5,
                        kwargs={"autocommit": True, "row_factory": dict_row},
                        name=f"admin-{server_id}",
                    )
                    await pool.open()
                    self._pools[server_id] = pool
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            self._suspect.add(server_id)
            raise ServerUnavailable(f"database server unreachable: {str(exc).strip()}") from exc

    @asynccontextmanager
    async def connect_database(self, control: AsyncConn, server_id: uuid.UUID, dbname: str) -> AsyncIterator[AsyncConn]:
        """A short-lived management connection to one database on the server."""
        dsn = await self.dsn(control, server_id)
        async with db.connect(dsn, self._settings, dbname=dbname, role="admin") as conn:
            yield conn
