"""Who runs which backup: leases (advisory locks) and per-server slots, in one process.

- ``Leases``: a backup's lease is a session advisory lock (``cardvault:backup:<id>``) held while a process
  runs it (or reads its object: a restore, a verification). All of a process's leases live on one control
  connection of their own, whatever their number, so the control pool stays free. If that connection is
  lost, so are the leases; the backup rows' attempt numbers then keep a backup that another process took
  over safe from its old runner.
- ``ServerSlots``: at most ``CARDVAULT_BACKUP_CONCURRENCY`` dumps at once per database server.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from psycopg.rows import dict_row

from controlplane import db
from controlplane.db import AsyncConn
from controlplane.errors import ServerUnavailable
from controlplane.settings import DatabaseSettings

log = logging.getLogger(__name__)


def lease_key(backup_id: uuid.UUID) -> int:
    return db.lock_key(f"cardvault:backup:{backup_id}")


class Leases:
    """Session advisory locks of this process's backups, all on one control connection of its own.

    One connection whatever the number of backups (the control pool stays free); if it is lost, so are
    the leases: the backups' attempt numbers keep a taken-over backup safe from its old runner.
    """

    def __init__(self, dsn: str, settings: DatabaseSettings) -> None:
        self._dsn = dsn
        self._settings = settings
        self._conn: AsyncConn | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> AsyncConn:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await psycopg.AsyncConnection.connect(
                db.management_conninfo(self._dsn, self._settings, role="backup-leases"),
                autocommit=True,
                row_factory=dict_row,
            )
        return self._conn

    async def acquire(self, backup_id: uuid.UUID) -> bool:
        """Take the backup's lease; False when another process holds it."""
        async with self._lock:
            try:
                try:
                    return await db.try_advisory_lock(await self._connection(), lease_key(backup_id))
                except psycopg.OperationalError:  # the connection died: one retry on a new one
                    self._conn = None
                    return await db.try_advisory_lock(await self._connection(), lease_key(backup_id))
            except psycopg.OperationalError as exc:
                self._conn = None
                raise ServerUnavailable(f"the control database is unreachable: {str(exc).strip()}") from exc

    async def release(self, backup_id: uuid.UUID) -> None:
        async with self._lock:
            conn = self._conn
            if conn is None or conn.closed:
                return
            try:
                await db.advisory_unlock(conn, lease_key(backup_id))
            except psycopg.Error:
                log.warning("backup lease of %s: connection lost (the lease went with it)", backup_id)
                self._conn = None

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None


class ServerSlots:
    """At most ``limit`` holders at once per server (first come, first served), in this process."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._slots: dict[uuid.UUID, asyncio.Semaphore] = {}

    @asynccontextmanager
    async def hold(self, server_id: uuid.UUID) -> AsyncIterator[None]:
        slot = self._slots.get(server_id)
        if slot is None:
            slot = self._slots[server_id] = asyncio.Semaphore(self.limit)
        async with slot:
            yield
