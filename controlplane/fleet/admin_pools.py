"""The fleet's management connections: a small autocommit pool per server (CREATE DATABASE needs
autocommit), reused across operations because a new connection costs as much as the rest of a provisioning
step. A server is probed with one direct connection before its pool is first made, after a failure and after
its DSN changed, so an unreachable server fails fast (``ServerUnavailable``) instead of after the pool
timeout, and a DSN that now reaches another server is refused. A pool made with an older DSN (a rotated
password) is replaced, and the old one closed in the background, the next time the server is used.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import NamedTuple

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from controlplane import db
from controlplane.db import AsyncConn
from controlplane.errors import ServerUnavailable
from controlplane.fleet import catalog, repository
from controlplane.settings import DatabaseSettings

#: Management connections kept open per server (CREATE DATABASE, DROP DATABASE, roles).
_ADMIN_POOL_SIZE = 4


class _AdminPool(NamedTuple):
    #: The DSN the pool connects with: a different current DSN (rotated password) replaces the pool.
    dsn: str
    pool: AsyncConnectionPool[AsyncConn]


class AdminPools:
    """One management pool per server; ``dsn_for(control, server_id)`` gives its current DSN."""

    def __init__(self, settings: DatabaseSettings, dsn_for: Callable[[AsyncConn, uuid.UUID], Awaitable[str]]) -> None:
        self._settings = settings
        self._dsn_for = dsn_for
        self._pools: dict[uuid.UUID, _AdminPool] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        #: Servers whose last management connection failed: probed before their pool is used again.
        self._suspect: set[uuid.UUID] = set()
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        pools, self._pools = self._pools, {}
        for entry in pools.values():
            await entry.pool.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def trust(self, server_id: uuid.UUID) -> None:
        """The server was just checked (its DSN replaced after a test connection): no probe needed."""
        self._suspect.discard(server_id)

    async def _probe(self, control: AsyncConn, server_id: uuid.UUID, dsn: str) -> None:
        """One direct connection: fails at once when the server is down, where a pool waits its timeout.

        It also checks the DSN still reaches the server that was registered.
        """
        try:
            async with db.connect(dsn, self._settings, role="probe") as conn:
                reached = await catalog.identity(conn)
        except psycopg.OperationalError as exc:
            raise ServerUnavailable(f"database server unreachable: {str(exc).strip()}") from exc
        server = await repository.get_by_id(control, server_id)
        registered = server.identity if server is not None else None
        if registered is not None and registered != reached:
            name = server.name if server is not None else str(server_id)
            raise ServerUnavailable(
                f"the DSN of server {name!r} now reaches another PostgreSQL server ({reached.describe()}, "
                f"registered: {registered.describe()}); give it the right one with `cardvault servers set-dsn`"
            )

    async def _pool(self, control: AsyncConn, server_id: uuid.UUID) -> AsyncConnectionPool[AsyncConn]:
        dsn = await self._dsn_for(control, server_id)
        entry = self._pools.get(server_id)
        current = entry is not None and entry.dsn == dsn
        if not current or server_id in self._suspect:
            await self._probe(control, server_id, dsn)
            if entry is not None and current and server_id in self._suspect:
                await entry.pool.check()  # back up: drop connections that died with the old server process
            self._suspect.discard(server_id)
        if entry is not None and current:
            return entry.pool
        async with self._lock:
            entry = self._pools.get(server_id)
            if entry is not None and entry.dsn == dsn:
                return entry.pool
            pool: AsyncConnectionPool[AsyncConn] = AsyncConnectionPool(
                db.management_conninfo(dsn, self._settings, role="admin"),
                min_size=0,
                max_size=_ADMIN_POOL_SIZE,
                open=False,
                timeout=self._settings.connect_timeout + 5,
                kwargs={"autocommit": True, "row_factory": dict_row},
                name=f"admin-{server_id}",
                # Each connection is checked as it is handed out: after a restart of the server that no
                # failure here noticed (no ``_suspect`` mark), one that died with the old server process
                # is replaced instead of failing the next admin operation. Admin work is rare: the round
                # trip costs nothing that matters.
                check=AsyncConnectionPool.check_connection,
            )
            await pool.open()
            self._pools[server_id] = _AdminPool(dsn, pool)
            if entry is not None:
                self._retire(entry.pool)
            return pool

    def _retire(self, pool: AsyncConnectionPool[AsyncConn]) -> None:
        """Close a replaced pool in the background (connections in use close when they come back)."""
        task = asyncio.get_running_loop().create_task(pool.close(), name="fleet-retire-pool")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @asynccontextmanager
    async def connection(self, control: AsyncConn, server_id: uuid.UUID) -> AsyncIterator[AsyncConn]:
        """A pooled autocommit management connection to the server's maintenance database.

        A server is probed with a direct connection before its pool is first made, after a failure and
        after its DSN changed, so an unreachable server fails fast (``ServerUnavailable``) instead of
        after the pool timeout.
        """
        pool = await self._pool(control, server_id)
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            self._suspect.add(server_id)
            raise ServerUnavailable(f"database server unreachable: {str(exc).strip()}") from exc
