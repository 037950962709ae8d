"""``UsageService``: one collection cycle over every tenant, its history, and the in-memory snapshot.

A cycle (``collect``, a leader job):

1. reads the registry (every tenant but those still provisioning: suspended and deleting tenants take
   space too) and each server's database sizes in one query per server, all servers at once;
2. scans the tables of the tenants whose database size changed since their last scan, that were
   never scanned, or whose last scan is older than ``rescan_after`` (``full=True``: all of them), at
   most ``concurrency`` at a time on short-lived connections;
3. replaces the snapshot whole and writes, in one control-database transaction of five statements
   whatever the number of tenants: history points, ``tenant_storage_usage``, the scans, and
   ``tenant_quotas.current_usage``.

History points per tenant and cycle: ``database_bytes``, and once the tenant has been scanned
``storage_bytes`` (bytes of its stored files), ``cards`` and ``users``; ``table_bytes:<table>`` only
in a cycle that scanned it. Quota usage: ``users`` and ``cards`` from the tenant's exact counters,
``storage_bytes`` = bytes of its stored files (the number the tenant API enforces the quota on, so
the admin view and ``quota_exceeded`` agree; the database's own size is metered as ``database_bytes``),
``api_calls_per_hour`` = calls counted for the current hour.

A tenant whose database cannot be read is counted as failed and logged; it keeps its last values in
the snapshot (with its old ``measured_at``) and the others are collected as usual. At start-up
(``load``) the snapshot and the last-scan sizes come back from the control database, so a restart
neither empties ``/metrics`` nor rescans every tenant.

``compact_history`` keeps raw points for ``raw_retention``, then the last point of each tenant,
metric and hour up to ``hourly_retention``, then of each day up to ``daily_retention``, and deletes
the rest, one time slice per statement.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from controlplane.fleet import repository as fleet_repository
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.registry.models import QuotaType, Tenant, TenantStatus
from controlplane.usage import repository
from controlplane.usage.collector import DIRECTORY, Collector, ScanJob, ServerReading, TenantScan
from controlplane.usage.models import (
    CollectionStats,
    ServerUsage,
    TableUsage,
    TenantUsage,
    UsageSnapshot,
)

log = logging.getLogger(__name__)

#: Failed tenants named in a cycle's outcome line (the count is always complete).
_NAMED_FAILURES = 5


@dataclass(frozen=True)
class _ScanMark:
    """A tenant's database size when its tables were last scanned, and when."""

    database_bytes: int
    scanned_at: datetime


def _utcnow() -> datetime:
    return datetime.now(UTC)


def file_bytes(usage: TenantUsage) -> int:
    """Bytes of the tenant's stored files (every kind; the directory check is not added)."""
    return sum(s.bytes for kind, s in usage.storage.items() if kind != DIRECTORY)


def describe(stats: CollectionStats) -> str:
    """The one outcome line of a cycle."""
    line = (
        f"{stats.tenants} tenant(s) on {stats.servers} server(s): {stats.scanned} scanned, "
        f"{stats.tenants - stats.scanned - stats.failed} unchanged, {stats.failed} failed"
    )
    if stats.failed_servers:
        line += f", {stats.failed_servers} server(s) unreachable"
    if stats.failed_tenants:
        named = ", ".join(stats.failed_tenants[:_NAMED_FAILURES])
        more = len(stats.failed_tenants) - _NAMED_FAILURES
        line += f" ({named}{f' and {more} more' if more > 0 else ''})"
    return line


class UsageService:
    """Collects every tenant's usage, keeps the latest ``UsageSnapshot`` in memory and the history in
    the control database. One cycle at a time per instance; run it on the scheduler leader."""

    def __init__(
        self,
        platform: Platform,
        *,
        collector: Collector | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._p = platform
        self._settings = platform.settings.usage
        self._collector = collector or Collector(
            platform.fleet,
            platform.settings.database,
            concurrency=self._settings.concurrency,
            storage_root=platform.settings.data_dir / "storage",
        )
        self._clock = clock
        self._snapshot = UsageSnapshot()
        self._scanned: dict[uuid.UUID, _ScanMark] = {}
        self._loaded = False
        self._collected_at: float | None = None  # monotonic time of this instance's last cycle
        self._lock = asyncio.Lock()

    @property
    def snapshot(self) -> UsageSnapshot:
        """The latest measurements (replaced whole; never half a cycle)."""
        return self._snapshot

    @property
    def collector(self) -> Collector:
        return self._collector

    # -- start-up -------------------------------------------------------------------------------

    async def load(self) -> None:
        """Rebuild the snapshot and the last-scan sizes from what the control database holds."""
        async with self._lock:
            await self._load()

    async def _load(self) -> None:
        async with self._p.control.connection() as conn:
            tenants = await registry.list_tenants(conn)
            scans = {r["tenant_id"]: r for r in await repository.load_scans(conn)}
            storage = await repository.load_storage(conn)
            latest = await repository.latest_metrics(conn, ["database_bytes"])
        usages: dict[uuid.UUID, TenantUsage] = {}
        marks: dict[uuid.UUID, _ScanMark] = {}
        for tenant in tenants:
            scan = scans.get(tenant.id)
            point = latest.get((tenant.id, "database_bytes"))
            if scan is None and point is None:
                continue
            if scan is not None:
                marks[tenant.id] = _ScanMark(int(scan["database_bytes"]), scan["scanned_at"])
            if point is not None:
                size, measured_at = int(point[0]), point[1]
            else:
                assert scan is not None
                size, measured_at = int(scan["database_bytes"]), scan["scanned_at"]
            usages[tenant.id] = TenantUsage(
                tenant_id=tenant.id,
                slug=tenant.slug,
                tier=tenant.subscription_tier.value,
                status=tenant.status.value,
                server=tenant.server_name,
                database_bytes=size,
                tables=msgspec.convert(scan["tables"], tuple[TableUsage, ...]) if scan else (),
                storage=storage.get(tenant.id, {}),
                counters=msgspec.convert(scan["counters"], dict[str, int]) if scan else {},
                measured_at=measured_at,
                tables_scanned_at=scan["scanned_at"] if scan else None,
            )
        self._scanned = marks
        self._snapshot = UsageSnapshot(tenants=usages, servers=self._snapshot.servers, last=self._snapshot.last)
        self._loaded = True

    # -- collection -----------------------------------------------------------------------------

    def _needs_scan(self, tenant_id: uuid.UUID, size: int, now: datetime) -> bool:
        mark = self._scanned.get(tenant_id)
        if mark is None or mark.database_bytes != size:
            return True
        rescan_after = self._settings.rescan_after
        return rescan_after > 0 and (now - mark.scanned_at).total_seconds() >= rescan_after

    async def collect(self, full: bool = False) -> CollectionStats:
        """One cycle; ``full`` scans every tenant's tables, changed or not."""
        async with self._lock:
            if not self._loaded:
                await self._load()
            return await self._collect(full)

    async def _collect(self, full: bool) -> CollectionStats:
        started = self._clock()
        began = time.perf_counter()
        async with self._p.control.connection() as conn:
            tenants = [t for t in await registry.list_tenants(conn) if t.status is not TenantStatus.PROVISIONING]
            servers = await fleet_repository.list_servers(conn)
            names: dict[uuid.UUID, list[str]] = {}
            for tenant in tenants:
                names.setdefault(tenant.server_id, []).append(tenant.database_name)
            readings = await self._collector.read_servers(conn, servers, names)
            dsns = {
                s.id: await self._p.fleet.dsn(conn, s.id) for s in servers if isinstance(readings[s.id], ServerReading)
            }
        for server in servers:
            problem = readings[server.id]
            if isinstance(problem, Exception):
                log.warning("usage: server %s unreachable: %s", server.name, problem)

        sizes: dict[uuid.UUID, int] = {}
        failed: list[Tenant] = []
        jobs: list[ScanJob] = []
        for tenant in tenants:
            reading = readings.get(tenant.server_id)
            size = reading.sizes.get(tenant.database_name) if isinstance(reading, ServerReading) else None
            if size is None:
                failed.append(tenant)
                if isinstance(reading, ServerReading):
                    log.warning("usage: tenant %s: database %s not found", tenant.slug, tenant.database_name)
                continue
            sizes[tenant.id] = size
            if full or self._needs_scan(tenant.id, size, started):
                jobs.append(
                    ScanJob(tenant_id=tenant.id, dsn=dsns[tenant.server_id], database_name=tenant.database_name)
                )
        results = await self._collector.scan_all(jobs)
        scans: dict[uuid.UUID, TenantScan] = {}
        for tenant in tenants:
            result = results.get(tenant.id)
            if isinstance(result, TenantScan):
                scans[tenant.id] = result
                sizes[tenant.id] = result.database_bytes  # fresher than the server-wide read
            elif result is not None:
                failed.append(tenant)
                log.warning("usage: tenant %s: cannot scan %s: %s", tenant.slug, tenant.database_name, result)

        snapshot = self._next_snapshot(tenants, readings, sizes, scans, started)
        for tenant_id, scan in scans.items():
            self._scanned[tenant_id] = _ScanMark(sizes[tenant_id], scan.scanned_at)
        live = {t.id for t in tenants}
        for tenant_id in [t for t in self._scanned if t not in live]:
            del self._scanned[tenant_id]
        try:
            await self._persist(snapshot, sizes, scans, started)
        finally:
            stats = CollectionStats(
                started_at=started,
                duration_seconds=time.perf_counter() - began,
                tenants=len(tenants),
                scanned=len(scans),
                failed=len(failed),
                servers=sum(isinstance(r, ServerReading) for r in readings.values()),
                failed_servers=sum(isinstance(r, Exception) for r in readings.values()),
                failed_tenants=tuple(sorted(t.slug for t in failed)),
            )
            self._snapshot = msgspec.structs.replace(snapshot, last=stats)
            self._collected_at = time.monotonic()
        return stats

    def _next_snapshot(
        self,
        tenants: list[Tenant],
        readings: dict[uuid.UUID, ServerReading | Exception],
        sizes: dict[uuid.UUID, int],
        scans: dict[uuid.UUID, TenantScan],
        now: datetime,
    ) -> UsageSnapshot:
        previous = self._snapshot.tenants
        usages: dict[uuid.UUID, TenantUsage] = {}
        for tenant in tenants:
            prev = previous.get(tenant.id)
            size = sizes.get(tenant.id)
            if size is None and prev is None:
                continue
            if prev is None:
                assert size is not None
                prev = TenantUsage(
                    tenant_id=tenant.id,
                    slug=tenant.slug,
                    tier=tenant.subscription_tier.value,
                    status=tenant.status.value,
                    server=tenant.server_name,
                    database_bytes=size,
                    measured_at=now,
                )
            usage = msgspec.structs.replace(
                prev,
                slug=tenant.slug,
                tier=tenant.subscription_tier.value,
                status=tenant.status.value,
                server=tenant.server_name,
            )
            if size is not None:
                usage = msgspec.structs.replace(usage, database_bytes=size, measured_at=now)
            scan = scans.get(tenant.id)
            if scan is not None:
                usage = msgspec.structs.replace(
                    usage,
                    tables=scan.tables,
                    storage=scan.storage,
                    counters=scan.counters,
                    tables_scanned_at=scan.scanned_at,
                )
            usages[tenant.id] = usage
        servers: dict[str, ServerUsage] = {}
        for reading in readings.values():
            if isinstance(reading, ServerReading):
                on_server = [t for t in tenants if t.server_id == reading.server_id]
                servers[reading.name] = ServerUsage(
                    name=reading.name,
                    status=reading.status,
                    tenants=len(on_server),
                    database_bytes=sum(sizes.get(t.id, 0) for t in on_server),
                    connections=reading.connections,
                    max_connections=reading.max_connections,
                )
        return UsageSnapshot(tenants=usages, servers=servers, last=self._snapshot.last)

    async def _persist(
        self, snapshot: UsageSnapshot, sizes: dict[uuid.UUID, int], scans: dict[uuid.UUID, TenantScan], now: datetime
    ) -> None:
        points: list[repository.MetricPoint] = []
        quotas: list[repository.QuotaUsage] = []
        for tenant_id, size in sizes.items():
            usage = snapshot.tenants[tenant_id]
            points.append(repository.MetricPoint(tenant_id, "database_bytes", size))
            if usage.tables_scanned_at is None:
                continue  # never scanned: nothing known but the size
            stored = file_bytes(usage)
            points.append(repository.MetricPoint(tenant_id, "storage_bytes", stored))
            quotas.append(repository.QuotaUsage(tenant_id, QuotaType.STORAGE_BYTES, stored))
            for quota in (QuotaType.CARDS, QuotaType.USERS):
                if quota.value in usage.counters:
                    points.append(repository.MetricPoint(tenant_id, quota.value, usage.counters[quota.value]))
                    quotas.append(repository.QuotaUsage(tenant_id, quota, usage.counters[quota.value]))
        storage: list[repository.StorageRow] = []
        scan_rows: list[repository.ScanRow] = []
        for tenant_id, scan in scans.items():
            points.extend(
                repository.MetricPoint(tenant_id, f"table_bytes:{t.table}", t.total_bytes) for t in scan.tables
            )
            storage.extend(repository.StorageRow(tenant_id, kind, s.bytes, s.files) for kind, s in scan.storage.items())
            scan_rows.append(
                repository.ScanRow(
                    tenant_id,
                    sizes[tenant_id],
                    msgspec.json.encode(scan.tables).decode(),
                    msgspec.json.encode(scan.counters).decode(),
                    scan.scanned_at,
                )
            )
        hour = datetime.fromtimestamp(int(now.timestamp()) // 3600 * 3600, UTC)
        async with self._p.control.connection() as conn, conn.transaction():
            await repository.insert_metrics(conn, now, points)
            await repository.upsert_storage(conn, now, storage)
            await repository.upsert_scans(conn, scan_rows)
            await repository.set_quota_usage(conn, quotas)
            await repository.set_api_call_usage(conn, hour)

    def record_round(self, stats: CollectionStats) -> None:
        """The stats of a collection the task queue's workers made (``controlplane.tasks.fanout``)."""
        self._snapshot = msgspec.structs.replace(self._snapshot, last=stats)

    # -- history --------------------------------------------------------------------------------

    async def compact_history(self, now: datetime | None = None) -> int:
        """Apply retention and downsampling to the history; the number of points deleted."""
        s = self._settings
        async with self._p.control.connection() as conn:
            return await repository.compact_metrics(
                conn, now or self._clock(), raw=s.raw_retention, hourly=s.hourly_retention, daily=s.daily_retention
            )

    # -- scheduler jobs (each returns its one outcome line) --------------------------------------

    async def collect_job(self) -> str:
        return describe(await self.collect())

    async def compact_job(self) -> str:
        return f"{await self.compact_history()} usage history point(s) removed"

    async def refresh_job(self) -> str:
        """On an instance that is not collecting (not the leader), reload the snapshot from the
        control database so its ``/metrics`` follow the leader's cycles."""
        recent = self._collected_at is not None and (
            time.monotonic() - self._collected_at < 2 * max(self._settings.interval, 1.0)
        )
        if recent:
            return "collected here; nothing to reload"
        await self.load()
        return f"snapshot reloaded: {len(self._snapshot.tenants)} tenant(s)"
