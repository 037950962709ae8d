"""``migrate tenants --queue``: the fleet's schema upgrade handed to the workers of every process.

The run does what ``TenantMigrations.run`` does, with the tenants' upgrades done by the task queue's workers
(``migrations.upgrade_tenant``, ``controlplane.tasks.migrations``) instead of in this process:

1. the templates are upgraded here first (alembic online, one per server), as in the in-process run;
2. the tenants to migrate are chosen the same way (``--only-failed``: those whose last migration failed);
3. with ``canary`` > 0 the first ``canary`` tenants are queued and waited for; the rest are queued only if
   every one of them succeeded (else they are counted as skipped);
4. one task per tenant is queued (``queueing_lock`` and ``lock`` ``migrate:<tenant id>``: a tenant whose
   upgrade still waits is not queued twice, two never run at once) with this code's head as the goal;
5. unless ``wait`` is False, the run waits until no task of its tenants waits or runs, reporting each
   tenant's outcome as its task ends, read from the registry where the task recorded it (the same
   ``schema_revision`` / ``migration_error`` and ledger rows as the in-process run, so ``--only-failed``,
   ``migrate status`` and a plain re-run work the same).

A worker killed mid-upgrade leaves its task running until the other workers' stalled-job check puts it back
in the queue; the run keeps waiting meanwhile, and the retried task finds the database where the killed one
left it (upgraded, or untouched: one transaction).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from controlplane.migrations.fleet_runner import Outcome, Progress, Target
from controlplane.migrations.service import MIGRATABLE, MigrationReport, TenantMigrations
from controlplane.platform import Platform
from controlplane.registry.models import Tenant, TenantStatus
from controlplane.tasks import repository
from controlplane.tasks.queue import TaskQueue, migration_key

#: Seconds between looks at the queue while waiting.
POLL = 0.5


class QueuedMigrations:
    """Upgrade the fleet through the task queue (``queue`` open; the workers run elsewhere)."""

    def __init__(self, platform: Platform, queue: TaskQueue, *, poll: float = POLL) -> None:
        self._p = platform
        self._queue = queue
        self._poll = poll

    async def workers(self) -> int:
        """Workers registered now (0: the queued upgrades wait until one starts)."""
        async with self._p.control.connection() as conn:
            return await repository.worker_count(conn)

    async def run(
        self, *, only_failed: bool = False, canary: int = 0, wait: bool = True, progress: Progress | None = None
    ) -> MigrationReport:
        """Upgrade templates here, then queue the tenants (``canary`` of them first, waited for: the rest
        only if those succeed) and, with ``wait``, wait for their outcomes."""
        migrations = TenantMigrations(self._p)
        report = MigrationReport(head=self._p.tenant_scripts.head())
        async with self._p.control.connection() as conn:
            report.templates = await migrations.upgrade_templates(conn)
            tenants = await migrations.tenants(conn, only_failed=only_failed)
        batches = [tenants[:canary], tenants[canary:]] if 0 < canary < len(tenants) else [tenants]
        for number, batch in enumerate(batches):
            last = number == len(batches) - 1
            for tenant in batch:
                await self._queue.enqueue_migration(tenant.id, report.head)
            if last and not wait:
                report.queued = len(batch)
                break
            shown = progress
            if progress is not None and not last:
                shown = Progress(progress.stream, label="canary")
            outcomes = await self.wait(batch, report.head, shown)
            report.outcomes.extend(outcomes)
            if not last and any(not o.ok for o in outcomes):
                report.skipped = sum(len(rest) for rest in batches[number + 1 :])
                break
        return report

    async def wait(self, tenants: Sequence[Tenant], head: str, progress: Progress | None = None) -> list[Outcome]:
        """Wait until no upgrade task of ``tenants`` waits or runs; their outcomes, in the order given."""
        if progress is not None:
            progress.start(len(tenants))
        remaining = {migration_key(t.id): t for t in tenants}
        outcomes: dict[uuid.UUID, Outcome] = {}
        while remaining:
            async with self._p.control.connection() as conn:
                busy = await repository.busy_locks(conn, list(remaining))
                ended = [t for key, t in remaining.items() if key not in busy]
                results = await repository.migration_results(conn, [t.id for t in ended]) if ended else {}
            for tenant in ended:
                del remaining[migration_key(tenant.id)]
                outcome = outcomes[tenant.id] = _outcome(tenant, head, results.get(tenant.id))
                if progress is not None:
                    progress.record(outcome)
            if remaining:
                await asyncio.sleep(self._poll)
        if progress is not None:
            progress.finish()
        return [outcomes[t.id] for t in tenants]


def _outcome(tenant: Tenant, head: str, row: dict[str, object] | None) -> Outcome:
    """The outcome of the tenant's ended task, as the registry has it now."""
    target = Target(tenant_id=str(tenant.id), slug=tenant.slug, dsn="")
    if row is None or TenantStatus(str(row["status"])) not in MIGRATABLE:
        return Outcome(target, True, None, None, 0.0)  # deleted or gone broken meanwhile: nothing to migrate
    revision = row["schema_revision"]
    if row["migration_error"] is not None:
        return Outcome(target, False, None, str(row["migration_error"]), 0.0)
    if revision != head:
        error = (
            f"still at {revision or 'base'}: its task ended without recording an upgrade to {head}"
            " (see the workers' logs: one without this revision refuses it)"
        )
        return Outcome(target, False, None, error, 0.0)
    return Outcome(target, True, head, None, 0.0)
