"""The leader's side of the queue: rounds of per-tenant work enqueued instead of done in the leader.

APScheduler on the leader still decides *when* (the ``collect_usage``, ``backups`` and ``report_overage``
jobs); ``Fanout`` decides *what*, cheaply (a few control-database queries), and puts one task per tenant in
the queue. Each round returns the job's outcome line.

A usage round cannot know how it went when it returns (the workers have just begun), so each round first
reports on the one before: which tenants it measured by now, which it scanned, how long its last scan came
after its start. Those are the collection stats ``/metrics`` shows (``UsageService.record_round``); a tenant
not measured by the next round counts as failed, whether its task failed or still waits (workers behind).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from controlplane.backups.models import BackupInProgress, BackupTrigger
from controlplane.backups.repository import tenant_states
from controlplane.backups.schedule import BackupScheduler, plan
from controlplane.billing import metering, metering_repository
from controlplane.errors import InvalidState, TenantNotFound
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.registry.models import Tenant, TenantStatus
from controlplane.tasks import repository
from controlplane.tasks.queue import TaskQueue
from controlplane.usage import repository as usage_repository
from controlplane.usage.models import CollectionStats
from controlplane.usage.service import UsageService, describe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Round:
    cycle: datetime
    #: The tenants this round queued (one still queued from an earlier round belongs to that one).
    tenants: list[Tenant]


class Fanout:
    """The leader's queued rounds of usage collection and backups (``Jobs`` calls them)."""

    def __init__(self, platform: Platform, queue: TaskQueue, usage: UsageService, backups: BackupScheduler) -> None:
        self._p = platform
        self.queue = queue
        self._usage = usage
        self._backups = backups
        self._previous: _Round | None = None

    async def usage_round(self) -> str:
        """Queue every tenant's collection for a cycle starting now (provisioning tenants wait), set the
        API-call quotas (they need no tenant database), and report on the previous round."""
        cycle = datetime.now(UTC)
        hour = datetime.fromtimestamp(int(cycle.timestamp()) // 3600 * 3600, UTC)
        async with self._p.control.connection() as conn:
            tenants = [t for t in await registry.list_tenants(conn) if t.status is not TenantStatus.PROVISIONING]
            await usage_repository.set_api_call_usage(conn, hour)
            previous = self._previous
            results = await repository.round_results(conn, previous.cycle) if previous is not None else None
        queued = [t for t in tenants if await self.queue.enqueue_usage(t.id, cycle)]
        self._previous = _Round(cycle, queued)
        line = f"usage of {len(queued)} tenant(s) queued, {len(tenants) - len(queued)} still queued from before"
        if previous is None or results is None:
            return line
        stats = _stats(previous, *results)
        self._usage.record_round(stats)
        return f"{line}; previous round: {describe(stats)}"

    async def backup_round(self) -> str:
        """``BackupScheduler.job`` with the runs queued: expire, request the due tenants' backups, then queue a
        run of every open backup (new ones, and ones whose runner died)."""
        service = self._backups.service
        settings = self._p.settings.backups
        expired = await service.expire()
        requested = 0
        if settings.interval > 0:
            async with self._p.control.connection() as conn:
                states = await tenant_states(conn)
            for state in plan(states, settings.schedules, datetime.now(UTC), job_interval=settings.interval):
                try:
                    await service.request(state.tenant_id, BackupTrigger.SCHEDULED, requested_by="scheduler")
                    requested += 1
                except (BackupInProgress, InvalidState, TenantNotFound) as exc:  # changed since it was read
                    log.info("backup of %s not requested: %s", state.slug, exc)
        async with self._p.control.connection() as conn:
            found = await repository.open_backups(conn)
        queued = 0
        for backup_id, tenant_id in found:
            queued += await self.queue.enqueue_backup(tenant_id, backup_id)
        await self._backups.refresh()
        return f"{requested} scheduled, {queued} queued, {expired} expired"

    async def billing_round(self, now: datetime | None = None) -> str:
        """``Metering.job`` with the reports queued: record the newly closed days of every tenant in the
        overage ledger, then queue a ``billing.report_tenant`` for each tenant with rows due that can be sent
        (one still waiting is not queued again: it sends what is due when it runs)."""
        now = now if now is not None else datetime.now(UTC)
        async with self._p.control.connection() as conn:
            recorded = await metering.record_overage(conn, now=now)
            due = await metering_repository.due_tenants(conn, now)
            unsendable = await metering_repository.unsendable_count(conn, now)
        queued = 0
        for tenant_id in due:
            queued += await self.queue.enqueue_billing(tenant_id, now)
        line = f"{recorded} overage period(s) recorded, reports of {queued} tenant(s) queued"
        if queued < len(due):
            line += f", {len(due) - queued} still queued from before"
        if unsendable:
            line += f", {unsendable} waiting for a customer or a synced meter"
        return line


def _stats(previous: _Round, measured: set[uuid.UUID], scans: list[datetime]) -> CollectionStats:
    """The previous round as a collection: a server counts as failed when none of its tenants was measured."""
    failed = [t for t in previous.tenants if t.id not in measured]
    servers = {t.server_id for t in previous.tenants}
    reached = {t.server_id for t in previous.tenants if t.id in measured}
    last = max(scans, default=previous.cycle)
    return CollectionStats(
        started_at=previous.cycle,
        duration_seconds=max(0.0, (last - previous.cycle).total_seconds()),
        tenants=len(previous.tenants),
        scanned=len(scans),
        failed=len(failed),
        servers=len(reached),
        failed_servers=len(servers - reached),
        failed_tenants=tuple(sorted(t.slug for t in failed)),
    )
