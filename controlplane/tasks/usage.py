"""One tenant's usage collection, as a task: what ``UsageService`` does for every tenant in a cycle, for one.

The leader's ``collect_usage`` job enqueues one task per tenant with the cycle's time (``cycle``); any
worker runs it:

1. read the tenant's database size on its server (one query), and its last scan from the control database;
2. scan its tables and files when the size changed since that scan, it was never scanned, or the scan is
   older than ``CARDVAULT_USAGE_RESCAN_AFTER`` (the same rule as the in-process cycle);
3. write, in one control-database transaction under the tenant's usage lock: history points recorded at
   ``cycle``, and (after a scan) ``tenant_storage_usage``, the scan row and ``tenant_quotas.current_usage``.

**A retried task never duplicates a side effect.** Everything but the history points is an upsert or a
set (writing the same measurement twice leaves the same rows). The points are appended, so the write first
checks, under the lock, whether the tenant already has a ``database_bytes`` point at ``cycle``: a task
whose worker died after its commit, run again by another worker, then writes nothing.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import msgspec

from controlplane.fleet import repository as fleet_repository
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.registry.models import QuotaType, TenantStatus
from controlplane.tasks import repository
from controlplane.usage import repository as usage_repository
from controlplane.usage.collector import DIRECTORY, Collector, ScanJob, TenantScan

log = logging.getLogger(__name__)

#: Failpoint right after a tenant's usage is committed (tests kill the worker there).
AFTER_COMMIT = "after:usage_commit"


def _needs_scan(last: repository.LastScan | None, size: int, now: datetime, rescan_after: float) -> bool:
    if last is None or last.database_bytes != size:
        return True
    return rescan_after > 0 and (now - last.scanned_at).total_seconds() >= rescan_after


def _points(
    tenant_id: uuid.UUID, size: int, scan: TenantScan | None, last: repository.LastScan | None
) -> tuple[list[usage_repository.MetricPoint], list[usage_repository.QuotaUsage]]:
    """The history points of the cycle and the quota usage to set (from this scan, else the last one)."""
    points = [usage_repository.MetricPoint(tenant_id, "database_bytes", size)]
    if scan is not None:
        counters = scan.counters
        stored = sum(s.bytes for kind, s in scan.storage.items() if kind != DIRECTORY)
        points.extend(
            usage_repository.MetricPoint(tenant_id, f"table_bytes:{t.table}", t.total_bytes) for t in scan.tables
        )
    elif last is not None:
        counters, stored = last.counters, last.file_bytes
    else:
        return points, []  # never scanned: nothing known but the size
    points.append(usage_repository.MetricPoint(tenant_id, "storage_bytes", stored))
    quotas = [usage_repository.QuotaUsage(tenant_id, QuotaType.STORAGE_BYTES, stored)]
    for quota in (QuotaType.CARDS, QuotaType.USERS):
        if quota.value in counters:
            points.append(usage_repository.MetricPoint(tenant_id, quota.value, counters[quota.value]))
            quotas.append(usage_repository.QuotaUsage(tenant_id, quota, counters[quota.value]))
    return points, quotas


async def collect_tenant(platform: Platform, collector: Collector, tenant_id: uuid.UUID, cycle: datetime) -> str:
    """Collect one tenant's usage for the leader's cycle ``cycle``; the outcome in a few words.

    A tenant gone or still provisioning, or whose database is missing, is skipped (a retry would not help);
    an unreachable server raises, so the queue retries the task.
    """
    async with platform.control.connection() as conn:
        tenant = await registry.get_by_id(conn, tenant_id)
        if tenant is None or tenant.status is TenantStatus.PROVISIONING:
            return "no tenant to collect"
        if await repository.usage_recorded(conn, tenant_id, cycle):
            return f"{tenant.slug}: already collected"
        server = await fleet_repository.get_by_id(conn, tenant.server_id)
        if server is None:
            return f"{tenant.slug}: its server is not registered"
        last = await repository.last_scan(conn, tenant_id)
        reading = await collector.read_server(conn, server, [tenant.database_name])
        dsn = await platform.fleet.dsn(conn, tenant.server_id)
    size = reading.sizes.get(tenant.database_name)
    if size is None:
        log.warning("usage: tenant %s: database %s not found", tenant.slug, tenant.database_name)
        return f"{tenant.slug}: database not found"
    scan: TenantScan | None = None
    settings = platform.settings.usage
    if _needs_scan(last, size, datetime.now(UTC), settings.rescan_after):
        job = ScanJob(tenant_id=tenant_id, dsn=dsn, database_name=tenant.database_name)
        result = (await collector.scan_all([job]))[tenant_id]
        if isinstance(result, Exception):
            raise result
        scan, size = result, result.database_bytes
    points, quotas = _points(tenant_id, size, scan, last)
    async with platform.control.connection() as conn, conn.transaction():
        await repository.lock_usage(conn, tenant_id)
        if await repository.usage_recorded(conn, tenant_id, cycle):
            return f"{tenant.slug}: already collected"
        await usage_repository.insert_metrics(conn, cycle, points)
        if scan is not None:
            storage = [usage_repository.StorageRow(tenant_id, k, s.bytes, s.files) for k, s in scan.storage.items()]
            await usage_repository.upsert_storage(conn, cycle, storage)
            scan_row = usage_repository.ScanRow(
                tenant_id,
                size,
                msgspec.json.encode(scan.tables).decode(),
                msgspec.json.encode(scan.counters).decode(),
                scan.scanned_at,
            )
            await usage_repository.upsert_scans(conn, [scan_row])
        await usage_repository.set_quota_usage(conn, quotas)
    platform.failpoints.hit(AFTER_COMMIT)
    return f"{tenant.slug}: {size} bytes, {'scanned' if scan is not None else 'unchanged'}"
