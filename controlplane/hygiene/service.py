"""``StorageHygiene``: every tenant's storage area against its database's ``files`` rows, and the areas
left behind by tenants that are gone.

A run (the leader job every ``CARDVAULT_HYGIENE_INTERVAL``, ``cardvault storage check``, or
``POST /admin/storage/hygiene/run``) holds an advisory lock on the control database, so two never overlap
(the second is refused with 409 ``operation_in_progress``). Per tenant it uses one control connection and
one short-lived admin connection to the tenant's database, at most ``concurrency`` tenants at once
(``CARDVAULT_USAGE_CONCURRENCY``, the bound of every background round over the fleet); what it does to
each area is ``scan.scan_tenant``. A tenant is left alone while an operation on it runs (a ``running``
ledger row, or its advisory lock held: a purge, a restore or an import may be moving its files), or when
it has no database (provisioning, broken). One tenant failing (its server down) fails alone.

Areas of tenant ids the registry does not know, with no running operation, are what a purge or a failed
provisioning left behind: their objects are orphans too (``scan.scan_leftover``). Runs that fix add to
``counters``; the last full run is ``latest``. Both feed ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg

from controlplane import db
from controlplane.errors import CardVaultError, OperationInProgress, TenantNotFound
from controlplane.hygiene import repository
from controlplane.hygiene.models import HygieneCounters, HygieneFindings, HygieneReport, TenantScan
from controlplane.hygiene.repository import SCANNED_STATUSES, Target
from controlplane.hygiene.scan import ScanContext, scan_leftover, scan_tenant
from controlplane.platform import Platform
from controlplane.provisioning.locking import tenant_lock_key
from controlplane.registry.models import SLUG_PATTERN
from controlplane.storage import Storage
from controlplane.storage.local import LocalStorage

log = logging.getLogger(__name__)

#: Held for a whole run: runs never overlap, whichever replica or command starts them.
HYGIENE_LOCK = db.lock_key("cardvault:storage-hygiene")
#: Seconds an object with no row is left alone after it was written (an upload's row may be on its way).
ORPHAN_MIN_AGE = 3600.0

_SCAN_ERRORS = (CardVaultError, psycopg.Error, OSError)


class StorageHygiene:
    """Finds orphaned and missing files, quarantines, restores and deletes them (see the module docstring)."""

    def __init__(
        self,
        platform: Platform,
        storage: Storage | None = None,
        *,
        min_age: float = ORPHAN_MIN_AGE,
        concurrency: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._p = platform
        settings = platform.settings
        self.storage: Storage = storage if storage is not None else LocalStorage(settings.data_dir / "storage")
        self._min_age = min_age
        self._grace = timedelta(seconds=settings.privacy.quarantine_grace)
        self._concurrency = max(1, concurrency if concurrency is not None else settings.usage.concurrency)
        self._clock = clock
        #: What fixing runs of this process did (``/metrics`` counters).
        self.counters = HygieneCounters()
        #: The last run over every tenant (``/metrics`` gauges), replaced whole.
        self.latest: HygieneReport | None = None

    async def job(self) -> str:
        """The leader job: one fixing run over every tenant; its outcome line."""
        return (await self.run(fix=True)).describe()

    async def run(self, *, fix: bool = True, slug: str | None = None) -> HygieneReport:
        """Compare every tenant's area (or ``slug``'s) with its rows; act on it when ``fix``."""
        if slug is not None and not SLUG_PATTERN.fullmatch(slug):
            raise TenantNotFound(f"no tenant with slug {slug!r}", slug=slug)
        started, started_at = time.monotonic(), datetime.now(UTC)
        async with self._p.control.connection() as conn:
            if not await db.try_advisory_lock(conn, HYGIENE_LOCK):
                raise OperationInProgress("a storage hygiene run is in progress; retry when it has finished")
            try:
                targets = await repository.targets(conn, slug)
                if slug is not None and not targets:
                    raise TenantNotFound(f"no tenant with slug {slug!r}", slug=slug)
                ctx = ScanContext(
                    storage=self.storage,
                    fix=fix,
                    now=await repository.db_now(conn),
                    grace=self._grace,
                    young_after=self._clock() - self._min_age,
                    clock=self._clock,
                )
                held = await repository.held_advisory_locks(conn)
                gate = asyncio.Semaphore(self._concurrency)
                scans = list(await asyncio.gather(*(self._tenant(ctx, gate, t, held) for t in targets)))
                if slug is None:
                    scans.extend(await self._leftovers(ctx, conn, {t.tenant_id for t in targets}, held))
                files, size, missing = await repository.totals(conn)
            finally:
                await db.advisory_unlock(conn, HYGIENE_LOCK)
        report = HygieneReport(
            fix=fix,
            started_at=started_at,
            duration_seconds=time.monotonic() - started,
            tenants=scans,
            quarantine_files=files,
            quarantine_bytes=size,
            missing_files=missing,
        )
        if fix:
            self.counters.add(report)
        if slug is None:
            self.latest = report
        return report

    async def findings(self, slug: str | None = None, limit: int = 100) -> HygieneFindings:
        """Open findings (of one tenant, or all), newest first, and the fleet's totals."""
        async with self._p.control.connection() as conn:
            tenant_id = None
            if slug is not None:
                targets = await repository.targets(conn, slug) if SLUG_PATTERN.fullmatch(slug) else []
                if not targets:
                    raise TenantNotFound(f"no tenant with slug {slug!r}", slug=slug)
                tenant_id = targets[0].tenant_id
            quarantined, missing = await repository.list_open(conn, tenant_id, limit)
            files, size, missing_files = await repository.totals(conn)
        return HygieneFindings(
            quarantine_files=files,
            quarantine_bytes=size,
            missing_files=missing_files,
            quarantined=quarantined,
            missing=missing,
        )

    async def _tenant(self, ctx: ScanContext, gate: asyncio.Semaphore, target: Target, held: set[int]) -> TenantScan:
        if target.status not in SCANNED_STATUSES:
            return TenantScan(tenant_id=target.tenant_id, slug=target.slug, skipped=f"the tenant is {target.status}")
        if target.running or tenant_lock_key(target.tenant_id) in held:
            return TenantScan(
                tenant_id=target.tenant_id, slug=target.slug, skipped="an operation on the tenant is in progress"
            )
        async with gate:
            try:
                async with (
                    self._p.control.connection() as control,
                    self._p.fleet.connect_database(control, target.server_id, target.database_name) as tenant,
                ):
                    return await scan_tenant(ctx, target, control, tenant)
            except _SCAN_ERRORS as exc:
                log.warning("storage hygiene: tenant %s failed: %s", target.slug, exc)
                return TenantScan(tenant_id=target.tenant_id, slug=target.slug, error=str(exc).strip() or repr(exc))

    async def _leftovers(
        self, ctx: ScanContext, conn: db.AsyncConn, known: set[uuid.UUID], held: set[int]
    ) -> list[TenantScan]:
        """Areas and quarantined objects of tenants the registry no longer knows."""
        areas = {a for a in await self.storage.areas() if a not in known}
        quarantined = {q.tenant_id for q in await repository.gone_tenants_quarantined(conn)}
        candidates = sorted((areas | quarantined) - known, key=str)
        gone = await repository.unknown_areas(conn, candidates) if candidates else []
        scans = []
        for tenant_id in gone:
            if tenant_lock_key(tenant_id) in held:
                continue
            try:
                scans.append(await scan_leftover(ctx, conn, tenant_id, area=tenant_id in areas))
            except _SCAN_ERRORS as exc:
                log.warning("storage hygiene: leftovers of tenant %s failed: %s", tenant_id, exc)
                scans.append(TenantScan(tenant_id=tenant_id, slug=None, kind="leftover", error=str(exc)))
        return scans
