"""Measuring tenants on their servers: database sizes, table scans, stored objects. HTTP-free, stateless.

- **Database sizes**: one query per server (``pg_database_size`` of every tenant database on it) on
  the fleet's pooled admin connection, all servers at once, together with the server's connection
  count and ``max_connections``.
- **Table scans**: per tenant, the public tables' total sizes and planner row estimates (``pg_class``;
  never ``COUNT(*)``), the exact ``usage_counters`` and the stored files by kind. Each scan opens a
  short-lived admin connection to the tenant's database (``application_name``
  ``cardvault-controlplane-usage``), never a request pool, so API traffic keeps its connections; at
  most ``concurrency`` scans run at once. The admin role reaches suspended and deleting tenants too.
- **Stored objects**: the tenant's storage directory is walked in a worker thread after its scan
  (inside the same concurrency bound) as the ``directory`` storage type, a check on the ``files`` rows.

``UsageService`` decides which tenants to scan and keeps the results; a failure is returned per tenant
or server (never raised), so one bad database does not stop a cycle.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from controlplane import db
from controlplane.db import AsyncConn
from controlplane.fleet.models import Server
from controlplane.fleet.service import Fleet
from controlplane.settings import DatabaseSettings
from controlplane.usage import catalog
from controlplane.usage.models import StorageUsage, TableUsage

#: Storage type of the walked storage directory (bytes and files actually on disk).
DIRECTORY = "directory"
#: ``application_name`` suffix of scan connections (``cardvault-controlplane-usage``).
SCAN_ROLE = "usage"
#: Object files being written (``LocalStorage`` writes a temporary file, then renames it).
_TMP_PREFIX = ".tmp-"

#: (control connection, server id) -> an admin connection to the server's maintenance database.
AdminConnector = Callable[[AsyncConn, uuid.UUID], AbstractAsyncContextManager[AsyncConn]]
#: (server management DSN, database name) -> a short-lived connection to that database.
ScanConnector = Callable[[str, str], AbstractAsyncContextManager[AsyncConn]]


class ServerReading(msgspec.Struct, frozen=True, kw_only=True):
    """One server as read in one cycle."""

    server_id: uuid.UUID
    name: str
    status: str
    #: ``pg_database_size`` by database name (databases that do not exist are absent).
    sizes: dict[str, int]
    connections: int
    max_connections: int


class ScanJob(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: uuid.UUID
    #: The server's management DSN (the scan connects to ``database_name`` with it).
    dsn: str
    database_name: str


class TenantScan(msgspec.Struct, frozen=True, kw_only=True):
    """What one table scan found in a tenant database."""

    #: The database's size when the scan began (on its own connection: connecting may itself grow
    #: the database a little, by the relation cache init file, so the size before it would be stale).
    database_bytes: int
    tables: tuple[TableUsage, ...]
    counters: dict[str, int]
    #: Files by kind (every ``FILE_KINDS`` entry) and, with a storage root, ``directory``.
    storage: dict[str, StorageUsage]
    scanned_at: datetime


def directory_usage(path: Path) -> StorageUsage:
    """Bytes and regular files under ``path`` (symlinks not followed; objects being written skipped)."""
    total = files = 0
    pending = [path]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False) and not entry.name.startswith(_TMP_PREFIX):
                    total += entry.stat(follow_symlinks=False).st_size
                    files += 1
            except FileNotFoundError:  # removed while we were counting
                continue
    return StorageUsage(bytes=total, files=files)


class Collector:
    """Reads servers and scans tenant databases for ``UsageService``.

    ``admin`` and ``connect`` default to the fleet's pooled admin connection and a direct management
    connection; they are parameters so tests can observe the connections actually used.
    """

    def __init__(
        self,
        fleet: Fleet,
        database: DatabaseSettings,
        *,
        concurrency: int,
        storage_root: Path | None = None,
        admin: AdminConnector | None = None,
        connect: ScanConnector | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self._database = database
        self._admin: AdminConnector = admin if admin is not None else fleet.admin
        self._connect: ScanConnector = connect if connect is not None else self._direct
        self._storage_root = storage_root
        self._slots = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        #: Scans running now, and the most that ran at once in the last ``scan_all``.
        self.in_flight = 0
        self.peak_in_flight = 0

    def _direct(self, dsn: str, dbname: str) -> AbstractAsyncContextManager[AsyncConn]:
        return db.connect(dsn, self._database, dbname=dbname, role=SCAN_ROLE)

    # -- servers --------------------------------------------------------------------------------

    async def read_server(self, control: AsyncConn, server: Server, names: Sequence[str]) -> ServerReading:
        """Sizes of ``names`` on ``server`` (one query), its client connections and ``max_connections``."""
        async with self._admin(control, server.id) as conn:
            sizes = await catalog.read_database_sizes(conn, names)
            connections, max_connections = await catalog.server_connections(conn)
        return ServerReading(
            server_id=server.id,
            name=server.name,
            status=str(server.status),
            sizes=sizes,
            connections=connections,
            max_connections=max_connections,
        )

    async def read_servers(
        self, control: AsyncConn, servers: Sequence[Server], names: Mapping[uuid.UUID, Sequence[str]]
    ) -> dict[uuid.UUID, ServerReading | Exception]:
        """Every server at once; an unreachable one maps to its exception.

        ``control`` is only used to look up a server's DSN the first time (the fleet caches it).
        """
        results = await asyncio.gather(
            *(self.read_server(control, server, names.get(server.id, ())) for server in servers),
            return_exceptions=True,
        )
        out: dict[uuid.UUID, ServerReading | Exception] = {}
        for server, result in zip(servers, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            out[server.id] = result
        return out

    # -- tenants --------------------------------------------------------------------------------

    async def scan(self, job: ScanJob) -> TenantScan:
        """One tenant's tables, counters, files and storage directory (call within the bound)."""
        async with self._connect(job.dsn, job.database_name) as conn:
            size, tables, counters, storage = await catalog.scan_database(conn)
        scanned_at = datetime.now(UTC)
        if self._storage_root is not None:
            path = self._storage_root / str(job.tenant_id)
            storage[DIRECTORY] = await asyncio.to_thread(directory_usage, path)
        return TenantScan(database_bytes=size, tables=tables, counters=counters, storage=storage, scanned_at=scanned_at)

    async def _bounded_scan(self, job: ScanJob) -> TenantScan:
        async with self._slots:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                return await self.scan(job)
            finally:
                self.in_flight -= 1

    async def scan_all(self, jobs: Sequence[ScanJob]) -> dict[uuid.UUID, TenantScan | Exception]:
        """Scan every job, ``concurrency`` at a time; a tenant that cannot be read maps to its exception."""
        self.peak_in_flight = 0
        results = await asyncio.gather(*(self._bounded_scan(job) for job in jobs), return_exceptions=True)
        out: dict[uuid.UUID, TenantScan | Exception] = {}
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            out[job.tenant_id] = result
        return out
