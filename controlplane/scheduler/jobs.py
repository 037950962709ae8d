"""The job table: every periodic job of the service, how often it runs, and where (leader or every replica).

Each job only calls a domain function and returns its one outcome line (the ``Scheduler`` logs it and
keeps the job's stats for ``/metrics``).

| job | runs on | every |
|---|---|---|
| ``reconcile`` | leader | ``CARDVAULT_RECONCILE_INTERVAL`` |
| ``reload_signing_keys`` | every replica | 60 s |
| ``flush_api_calls`` | every replica | 30 s |
| ``maintenance_window`` | leader | 1 h (each tenant's window is one UTC hour a day) |
| ``collect_usage`` (a task per tenant queued; quota alerts; directory sync) | leader | ``CARDVAULT_USAGE_INTERVAL`` |
| ``refresh_quota_alerts`` | every replica | ``CARDVAULT_USAGE_INTERVAL`` |
| ``quota_cleanup`` | leader | 1 day |
| ``compact_usage_history`` | leader | ``CARDVAULT_USAGE_COMPACT_INTERVAL`` |
| ``refresh_usage`` | every replica | ``CARDVAULT_USAGE_INTERVAL`` |
| ``tenant_health`` | leader | ``CARDVAULT_HEALTH_INTERVAL`` |
| ``refill_spares`` | leader (and on the claiming replica right after a claim, in the background) | 30 s |
| ``deliver_mail`` | leader | ``CARDVAULT_MAIL_INTERVAL`` |
| ``report_overage`` (ledger; report tasks queued) | leader, with a provider | ``CARDVAULT_BILLING_USAGE_INTERVAL`` |
| ``billing_inbox`` (webhook events due: retries, and any a crash left) | leader, with a billing provider | 60 s |
| ``billing_grace`` (suspend tenants unpaid past the grace deadline) | leader, with a billing provider | 15 min |
| ``privacy_exports`` (pending or abandoned exports made, links expired, ended archives deleted) | leader | 60 s |
| ``privacy_erasures`` (user erasures a process left half-done) | leader | 5 min |
| ``deletion_certificates`` (purges certified; backups destroyed recorded) | leader | 5 min |
| ``audit_retention`` (old audit entries deleted, control and tenant databases) | leader | 6 h |
| ``storage_hygiene`` (orphaned and missing files) | leader | ``CARDVAULT_HYGIENE_INTERVAL`` |
| ``flush_bytes_served`` (image bytes served, to the registry and ``/metrics``) | every replica | 30 s |
| ``flush_tenant_requests`` (per-tenant request classes and latency, hourly rows) | every replica | 30 s |
| ``backups`` (expiry, due tenants, a task queued per open backup) | leader | ``CARDVAULT_BACKUP_INTERVAL`` or 5 min |
| ``refresh_backup_status`` (the backups' standing for ``/metrics``) | every replica | 60 s |
| ``verify_backups`` (recent backups test-restored in scratch DBs) | leader | ``CARDVAULT_BACKUP_VERIFY_INTERVAL`` |
| ``restore_upkeep`` (interrupted restores settled, retired databases dropped) | leader | 60 s |
| ``prune_tasks`` (failed task-queue jobs older than a day deleted) | leader, with the task queue | 1 h |
| ``move_upkeep`` (tenant moves a dead process left half-done: finished or undone) | leader | 60 s |
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from controlplane.accounts import directory
from controlplane.backups.restore import RestoreService
from controlplane.backups.schedule import STATUS_INTERVAL as BACKUP_STATUS_INTERVAL
from controlplane.backups.schedule import BackupScheduler
from controlplane.billing.inbox import Inbox
from controlplane.billing.metering import Metering
from controlplane.billing.service import BillingService
from controlplane.hygiene.service import StorageHygiene
from controlplane.mail.sender import MailSender
from controlplane.maintenance.service import HealthMonitor, run_maintenance_window
from controlplane.moves.service import MoveService
from controlplane.platform import Platform
from controlplane.privacy.service import Privacy
from controlplane.provisioning.reconciler import Reconciler
from controlplane.scheduler.service import Scheduler
from controlplane.tasks.fanout import Fanout
from controlplane.usage import quota_repository
from controlplane.usage.alerts import QuotaAlerts
from controlplane.usage.api_calls import ApiCalls
from controlplane.usage.bytes_served import BytesServed
from controlplane.usage.request_stats import TenantRequests
from controlplane.usage.service import UsageService

#: Seconds between re-reads of the signing keys (a rotation elsewhere is picked up within this).
KEY_REFRESH_INTERVAL = 60.0
#: Seconds between maintenance-window runs (each tenant's window is one UTC hour a day).
MAINTENANCE_INTERVAL = 3600.0
#: Seconds between flushes of counted API calls into the registry.
API_CALLS_FLUSH_INTERVAL = 30.0
#: Seconds between clean-ups of expired storage expansions and old resolved alerts.
QUOTA_CLEANUP_INTERVAL = 86400.0
#: Seconds between top-ups of the spare databases (also right after each claim, in the background).
SPARE_REFILL_INTERVAL = 30.0
#: Seconds between runs of the webhook inbox (events due for a retry, or left unprocessed by a crash).
BILLING_INBOX_INTERVAL = 60.0
#: Seconds between checks of grace deadlines (a tenant is suspended at most this late).
BILLING_GRACE_INTERVAL = 900.0
#: Seconds between runs of the export worker on the leader (exports are also made at once where asked).
PRIVACY_EXPORTS_INTERVAL = 60.0
#: Seconds between runs of the erasure and deletion-certificate jobs.
PRIVACY_INTERVAL = 300.0
#: Seconds between audit-retention runs (entries are deleted at most this late).
AUDIT_RETENTION_INTERVAL = 6 * 3600.0
#: Seconds between runs of the restore upkeep (interrupted restores settled, retired databases dropped).
RESTORE_UPKEEP_INTERVAL = 60.0
#: Seconds between prunings of the task queue's old failed jobs.
TASK_PRUNE_INTERVAL = 3600.0
#: Tenant databases vacuumed at once in a maintenance window.
MAINTENANCE_CONCURRENCY = 2


@dataclass(frozen=True)
class Jobs:
    """The services the jobs run on (made by the app's lifespan)."""

    platform: Platform
    reconciler: Reconciler
    #: Re-reads the signing keys into the ``Authenticator``'s key ring.
    reload_keys: Callable[[], Awaitable[None]]
    api_calls: ApiCalls
    usage: UsageService
    alerts: QuotaAlerts
    health: HealthMonitor
    #: Delivers the mail outbox over SMTP.
    mail: MailSender
    #: Records and reports overage to the billing provider (None with ``CARDVAULT_BILLING=none``).
    metering: Metering | None = None
    #: Tenant billing and the webhook inbox (their jobs run only with a billing provider).
    billing: BillingService | None = None
    inbox: Inbox | None = None
    #: Scheduled backups, their expiry and recovery, and the backups' standing for ``/metrics``.
    backups: BackupScheduler | None = None
    #: Restores: the verification job and the restore upkeep.
    restores: RestoreService | None = None
    #: Exports, erasures, deletion certificates and audit retention.
    privacy: Privacy | None = None
    #: Storage hygiene (orphaned and missing files) and the bytes-served meter.
    hygiene: StorageHygiene | None = None
    bytes_served: BytesServed | None = None
    #: Per-tenant request statistics (status classes, latency), flushed to ``tenant_request_stats``.
    tenant_requests: TenantRequests | None = None
    #: Tenant moves: the upkeep settling interrupted ones.
    moves: MoveService | None = None
    #: The task queue's rounds: with them, ``collect_usage`` and ``backups`` enqueue one task per tenant for
    #: the workers of every process instead of doing the work on the leader.
    fanout: Fanout | None = None

    def schedule(self, scheduler: Scheduler) -> None:
        """Add every job of the table to ``scheduler`` (jobs whose interval is 0 are off)."""
        settings = self.platform.settings
        scheduler.add_leader_job("reconcile", self.reconcile, settings.provisioning.reconcile_interval)
        scheduler.add_instance_job("reload_signing_keys", self.reload_signing_keys, KEY_REFRESH_INTERVAL)
        scheduler.add_instance_job("flush_api_calls", self.flush_api_calls, API_CALLS_FLUSH_INTERVAL)
        scheduler.add_leader_job("maintenance_window", self.maintenance_window, MAINTENANCE_INTERVAL)
        scheduler.add_leader_job("collect_usage", self.collect_usage, settings.usage.interval)
        scheduler.add_instance_job("refresh_quota_alerts", self.alerts.refresh_job, settings.usage.interval)
        scheduler.add_leader_job("quota_cleanup", self.quota_cleanup, QUOTA_CLEANUP_INTERVAL)
        scheduler.add_leader_job("compact_usage_history", self.usage.compact_job, settings.usage.compact_interval)
        scheduler.add_instance_job("refresh_usage", self.usage.refresh_job, settings.usage.interval)
        scheduler.add_leader_job("tenant_health", self.health.job, settings.usage.health_interval)
        # Also with CARDVAULT_SPARE_DATABASES=0: the job then drops the spares left from before.
        scheduler.add_leader_job("refill_spares", self.refill_spares, SPARE_REFILL_INTERVAL)
        self.reconciler.spares.refill_after_claims()
        scheduler.add_leader_job("deliver_mail", self.mail.job, settings.mail.interval)
        if self.metering is not None:
            scheduler.add_leader_job("report_overage", self.report_overage, settings.billing.usage_interval)
        if self.backups is not None:
            scheduler.add_leader_job("backups", self.backup_round, self.backups.interval)
            scheduler.add_instance_job("refresh_backup_status", self.backups.refresh_job, BACKUP_STATUS_INTERVAL)
        if self.restores is not None:
            verify_interval = settings.backups.verify_interval
            scheduler.add_leader_job("verify_backups", self.restores.verifier.job, verify_interval)
            scheduler.add_leader_job("restore_upkeep", self.restores.upkeep.run, RESTORE_UPKEEP_INTERVAL)
        if self.moves is not None:
            scheduler.add_leader_job("move_upkeep", self.moves.upkeep, RESTORE_UPKEEP_INTERVAL)
        if self.billing is not None and self.billing.provider is not None and self.inbox is not None:
            scheduler.add_leader_job("billing_inbox", self.inbox.process_pending, BILLING_INBOX_INTERVAL)
            scheduler.add_leader_job("billing_grace", self.billing.expire_grace, BILLING_GRACE_INTERVAL)
        if self.privacy is not None:
            privacy = self.privacy
            scheduler.add_leader_job("privacy_exports", privacy.exports.upkeep, PRIVACY_EXPORTS_INTERVAL)
            scheduler.add_leader_job("privacy_erasures", privacy.erasure.finish_pending, PRIVACY_INTERVAL)
            scheduler.add_leader_job("deletion_certificates", privacy.certificates.job, PRIVACY_INTERVAL)
            scheduler.add_leader_job("audit_retention", privacy.retention.job, AUDIT_RETENTION_INTERVAL)
        if self.hygiene is not None:
            scheduler.add_leader_job("storage_hygiene", self.hygiene.job, settings.privacy.hygiene_interval)
        if self.bytes_served is not None:
            scheduler.add_instance_job("flush_bytes_served", self.flush_bytes_served, API_CALLS_FLUSH_INTERVAL)
        if self.tenant_requests is not None:
            scheduler.add_instance_job("flush_tenant_requests", self.flush_tenant_requests, API_CALLS_FLUSH_INTERVAL)
        if self.fanout is not None:
            scheduler.add_leader_job("prune_tasks", self.fanout.queue.prune, TASK_PRUNE_INTERVAL)

    async def reconcile(self) -> str:
        report = await self.reconciler.run(fix=True)
        return f"{len(report.findings)} finding(s)"

    async def refill_spares(self) -> str:
        outcomes = await self.reconciler.spares.refill()
        return "; ".join(o.describe() for o in outcomes) or "no servers"

    async def reload_signing_keys(self) -> str:
        await self.reload_keys()
        return "signing keys reloaded"

    async def flush_api_calls(self) -> str:
        """Also run once more when the service stops, so no counted call is lost."""
        async with self.platform.control.connection() as conn:
            return f"{await self.api_calls.flush(conn)} tenant-hour(s) flushed"

    async def flush_bytes_served(self) -> str:
        """Also run once more when the service stops, so no counted byte is lost."""
        if self.bytes_served is None:
            return "no meter"
        async with self.platform.control.connection() as conn:
            return f"{await self.bytes_served.flush(conn)} tenant(s) flushed"

    async def flush_tenant_requests(self) -> str:
        """Also run once more when the service stops, so no counted request is lost."""
        if self.tenant_requests is None:
            return "no recorder"
        async with self.platform.control.connection() as conn:
            return f"{await self.tenant_requests.flush(conn)} tenant-hour(s) flushed"

    async def maintenance_window(self) -> str:
        hour = datetime.now(UTC).hour
        results = await run_maintenance_window(self.platform, hour, concurrency=MAINTENANCE_CONCURRENCY)
        failed = sum(not r.ok for r in results)
        return f"vacuumed {len(results) - failed} tenant database(s), {failed} failed"

    async def collect_usage(self) -> str:
        # Quotas are evaluated on what this collection just measured. The workspace finder's directory is
        # rebuilt here too, a bounded batch of the least recently synced tenants per run.
        if self.fanout is not None:  # quotas are then evaluated on what the workers measured so far
            usage = await self.fanout.usage_round()
        else:
            usage = await self.usage.collect_job()
        alerts = await self.alerts.job()
        return f"{usage}; {alerts}; {await directory.sync_due(self.platform)}"

    async def report_overage(self) -> str:
        assert self.metering is not None
        if self.fanout is not None:  # the ledger is recorded here; each tenant's rows are sent by a worker
            return await self.fanout.billing_round()
        return await self.metering.job()

    async def backup_round(self) -> str:
        assert self.backups is not None
        if self.fanout is not None:
            return await self.fanout.backup_round()
        return await self.backups.job()

    async def quota_cleanup(self) -> str:
        async with self.platform.control.connection() as conn:
            expansions = await quota_repository.delete_expired_expansions(conn)
            resolved = await quota_repository.delete_resolved_alerts(conn)
        return f"{expansions} expired expansion(s), {resolved} old resolved alert(s) deleted"
