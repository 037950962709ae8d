"""The tasks: per-tenant work any worker may run, and why running one twice does no harm.

Each task takes JSON arguments (ids as text) and finds the services of its worker's process in the job
context (``Services``, passed by ``TaskQueue.run_worker``). A task may run again after its worker died or
was stopped mid-way (the stalled-job check, or a retry after a failure):

- ``usage.collect_tenant`` (``tenant_id``, ``cycle``): measures the tenant and writes the cycle's
  history points once: the write is guarded by the cycle's time (``controlplane.tasks.usage``); the rest
  are upserts.
- ``backups.run`` (``backup_id``): runs a backup row the leader already wrote (``pending``). The backup
  service's lease (an advisory lock) keeps two runners off one backup, a finished backup is returned as
  it is, and a backup whose runner died is run again as a new attempt, fenced by its attempt number, so a
  backup is stored once per attempt and recorded once.
- ``migrations.upgrade_tenant`` (``tenant_id``, ``revision``): upgrades the tenant's database to the
  revision (``migrate tenants --queue``); the upgrade is guarded by the version row, a tenant already there
  costs one query and records nothing new (``controlplane.tasks.migrations``).
- ``billing.report_tenant`` (``tenant_id``, ``now``): sends the tenant's due overage rows to the billing
  provider, each marked reported in the transaction that holds it; a re-send after a crash carries the
  same identifier, which the provider drops (``controlplane.tasks.billing``).
- ``moves.move_tenant`` (``tenant_id``, ``source``, ``to``): moves the tenant off server ``source`` (drains
  and rebalances queue it); a tenant no longer on ``source`` is left alone, so it moves once
  (``controlplane.tasks.moves``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from procrastinate import App, JobContext, RetryStrategy

from controlplane.backups.service import BackupService
from controlplane.billing.provider import BillingProvider
from controlplane.platform import Platform
from controlplane.tasks import moves as move_tasks
from controlplane.tasks.billing import report_tenant
from controlplane.tasks.migrations import TenantUpgrades, upgrade_tenant
from controlplane.tasks.usage import collect_tenant
from controlplane.usage.collector import Collector

USAGE_TASK = "usage.collect_tenant"
BACKUP_TASK = "backups.run"
MIGRATION_TASK = "migrations.upgrade_tenant"
BILLING_TASK = "billing.report_tenant"
#: The key of ``Services`` in a job's ``additional_context``.
SERVICES = "cardvault"
#: A task that raised (a server unreachable, say) is tried twice more, 10 s and then 20 s later; the next
#: run of the leader's job queues it again anyway.
RETRY = RetryStrategy(max_attempts=2, linear_wait=10)


@dataclass(frozen=True)
class Services:
    """What the tasks run on in a worker's process."""

    platform: Platform
    collector: Collector
    backups: BackupService
    #: The billing provider overage is reported to (None with ``CARDVAULT_BILLING=none``).
    billing: BillingProvider | None = None
    #: The schema upgraders of this process (the SQL they rendered is kept across tasks).
    upgrades: TenantUpgrades = field(default_factory=TenantUpgrades)


def _services(context: JobContext) -> Services:
    services = context.additional_context[SERVICES]
    assert isinstance(services, Services)
    return services


async def collect_usage(context: JobContext, tenant_id: str, cycle: str) -> str:
    services = _services(context)
    return await collect_tenant(
        services.platform, services.collector, uuid.UUID(tenant_id), datetime.fromisoformat(cycle)
    )


async def run_backup(context: JobContext, backup_id: str) -> str:
    backup = await _services(context).backups.run(uuid.UUID(backup_id))
    return f"backup {backup.id} of {backup.tenant_slug}: {backup.status.value}"


async def upgrade_schema(context: JobContext, tenant_id: str, revision: str) -> str:
    services = _services(context)
    return await upgrade_tenant(services.platform, services.upgrades, uuid.UUID(tenant_id), revision)


async def report_overage(context: JobContext, tenant_id: str, now: str) -> str:
    services = _services(context)
    return await report_tenant(services.platform, services.billing, uuid.UUID(tenant_id), datetime.fromisoformat(now))


def register(app: App) -> None:
    """Add the tasks to ``app`` (each process makes its own app, bound to its own pool)."""
    app.task(name=USAGE_TASK, queue="usage", pass_context=True, retry=RETRY)(collect_usage)
    app.task(name=BACKUP_TASK, queue="backups", pass_context=True, retry=RETRY)(run_backup)
    app.task(name=MIGRATION_TASK, queue="migrations", pass_context=True, retry=RETRY)(upgrade_schema)
    app.task(name=BILLING_TASK, queue="billing", pass_context=True, retry=RETRY)(report_overage)
    move_tasks.register(app, SERVICES, RETRY)
