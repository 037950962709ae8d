"""Tenant schema migrations across the fleet: templates first, then every tenant database.

Templates are upgraded with alembic online (one per server). Tenants are upgraded from SQL rendered
once per run (``controlplane.migrations.apply``): asyncio tasks, at most ``concurrency`` at a time, each
with its own connection and one transaction; revisions that cannot be rendered run through alembic
online in a process pool started only if one is needed. One failing tenant fails alone. Its outcome
goes to the registry (``schema_revision``, ``migration_error``) and to the operations ledger as soon as
it is known (written in the background, several outcomes per transaction, so workers never wait for
the control database), so an interrupted run can be resumed with ``--only-failed`` or simply run again
(tenants at head cost one query). ``canary`` tenants go first, and the rest only if all of them succeeded.

``migrate tenants --queue`` (``controlplane.tasks.migration_runs``) does the same with the tenants' upgrades
run by the task queue's workers; it shares the steps here (``upgrade_templates``, ``tenants``, ``upgrader``,
``target``, ``record``), so both record outcomes the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import multiprocessing
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from controlplane import db
from controlplane.fleet import repository as fleet_repository
from controlplane.migrations.apply import Upgrader
from controlplane.migrations.fleet_runner import Outcome, Progress, Target, run_fleet_async
from controlplane.platform import Platform
from controlplane.provisioning import catalog
from controlplane.provisioning import repository as ledger
from controlplane.provisioning.models import OperationKind, OperationState
from controlplane.provisioning.template import Templates
from controlplane.registry import repository as registry
from controlplane.registry.models import Tenant, TenantStatus
from controlplane.schemas.alembic_runner import SchemaScripts

#: Tenants whose databases are migrated; provisioning ones are cloned from an up-to-date template and
#: broken ones have no database.
MIGRATABLE = (TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.DELETING)


@dataclass
class MigrationReport:
    head: str
    templates: dict[str, str] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    dry_run: bool = False
    #: Tenants not attempted because a canary failed.
    skipped: int = 0
    #: Tenants handed to the task queue and not waited for (``migrate tenants --queue --no-wait``).
    queued: int = 0

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "dry_run": self.dry_run,
            "templates": self.templates,
            "tenants": len(self.outcomes),
            "succeeded": len(self.outcomes) - len(self.failures),
            "failed": [{"slug": o.target.slug, "error": o.error} for o in self.failures],
            "skipped": self.skipped,
            "queued": self.queued,
        }


@functools.cache
def _scripts(directory: str, version_table: str) -> SchemaScripts:
    """One parsed alembic environment per worker process."""
    return SchemaScripts(Path(directory), version_table)


def upgrade_online(directory: str, version_table: str, dsn: str, revision: str) -> str:
    """Runs in a worker process: upgrade one tenant database to ``revision`` with alembic online.

    Used for revisions that cannot be rendered to SQL. After a real upgrade the tenant group's
    privileges are granted again, so new tables are usable.
    """
    scripts = _scripts(directory, version_table)
    before, reached = scripts.upgrade_from(dsn, revision)
    if before != reached:
        with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
            for statement in catalog.schema_privilege_statements(version_table):
                conn.execute(statement)
    return reached


class _OnlinePool:
    """The process pool of the online path, started on first use (most runs never need it).

    Processes, not threads: alembic keeps the running migration in process-wide globals, so only
    separate processes run tenants' DDL truly in parallel. "spawn" because this process has threads.
    """

    def __init__(self, scripts: SchemaScripts, workers: int) -> None:
        self._directory = str(scripts.directory)
        self._version_table = scripts.version_table
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None

    async def upgrade(self, dsn: str, revision: str) -> str:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self._workers, mp_context=context)
        work = functools.partial(upgrade_online, self._directory, self._version_table, dsn, revision)
        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class _LedgerWriter:
    """Writes outcomes to the registry and the ledger as they come, in the background, in batches.

    ``record`` only queues (a worker goes on to its next tenant at once); one task writes whatever has
    queued meanwhile in one transaction. A failed write stops the run: the next ``record`` raises it,
    and so does ``close``, which waits for everything queued to be written.
    """

    def __init__(self, write: Callable[[list[Outcome]], Awaitable[None]]) -> None:
        self._write = write
        self._queued: list[Outcome] = []
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    async def record(self, outcome: Outcome) -> None:
        if self._error is not None:
            raise self._error
        self._queued.append(outcome)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while self._queued and self._error is None:
            batch, self._queued = self._queued, []
            try:
                await self._write(batch)
            except Exception as exc:
                self._error = exc

    async def close(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)
        if self._error is not None:
            raise self._error


class TenantMigrations:
    def __init__(self, platform: Platform) -> None:
        self._p = platform
        self._scripts = platform.tenant_scripts

    async def run(
        self,
        *,
        concurrency: int | None = None,
        only_failed: bool = False,
        dry_run: bool = False,
        canary: int = 0,
        progress: Progress | None = None,
    ) -> MigrationReport:
        """Upgrade templates, then tenants (``canary`` of them first: the rest only if those succeed)."""
        report = MigrationReport(head=self._scripts.head(), dry_run=dry_run)
        async with self._p.control.connection() as conn:
            if not dry_run:
                report.templates = await self.upgrade_templates(conn)
            targets = [await self.target(conn, t) for t in await self.tenants(conn, only_failed=only_failed)]
        workers = concurrency or self._p.settings.provisioning.migration_concurrency
        online = _OnlinePool(self._scripts, workers)
        upgrader = self.upgrader(report.head, online.upgrade)
        work = upgrader.pending if dry_run else upgrader.upgrade
        ledger_writer = _LedgerWriter(self.record)
        record = None if dry_run else ledger_writer.record
        batches = [targets]
        if canary > 0 and len(targets) > canary:
            batches = [targets[:canary], targets[canary:]]
        try:
            for number, batch in enumerate(batches):
                shown = progress
                if progress is not None and number == 0 and len(batches) > 1:
                    shown = Progress(progress.stream, label="canary")
                outcomes = await run_fleet_async(batch, work, concurrency=workers, on_outcome=record, progress=shown)
                await ledger_writer.close()  # every outcome recorded before the next batch or the report
                report.outcomes.extend(outcomes)
                if any(not o.ok for o in outcomes) and number < len(batches) - 1:
                    report.skipped = sum(len(rest) for rest in batches[number + 1 :])
                    break
        finally:
            with contextlib.suppress(Exception):  # when something else failed first, that is the error
                await ledger_writer.close()
            await asyncio.to_thread(online.close)
        return report

    async def upgrade_templates(self, conn: db.AsyncConn) -> dict[str, str]:
        """Bring every server's template to head (alembic online, one per server): the revision of each."""
        templates = Templates(self._p)
        return {s.name: await templates.upgrade(conn, s.id) for s in await fleet_repository.list_servers(conn)}

    async def tenants(self, conn: db.AsyncConn, *, only_failed: bool = False) -> list[Tenant]:
        """The tenants a run migrates (``only_failed``: those whose last migration failed)."""
        return [
            t
            for status in MIGRATABLE
            for t in await registry.list_tenants(conn, status=status)
            if not only_failed or t.migration_error is not None
        ]

    def upgrader(self, goal: str, online: Callable[[str, str], Awaitable[str]]) -> Upgrader:
        """An ``Upgrader`` to ``goal`` granting the tenant group's privileges; ``online`` runs what cannot be
        rendered."""
        grants = catalog.schema_privilege_statements(self._scripts.version_table)
        return Upgrader(self._scripts, goal, grants, online)

    async def target(self, conn: db.AsyncConn, tenant: Tenant) -> Target:
        """How the migration reaches the tenant's database (the ``migrate`` role, the migration timeout)."""
        settings = self._p.settings.database
        migration = dataclasses.replace(settings, statement_timeout=settings.migration_statement_timeout)
        dsn = db.management_conninfo(
            await self._p.fleet.dsn(conn, tenant.server_id), migration, dbname=tenant.database_name, role="migrate"
        )
        return Target(tenant_id=str(tenant.id), slug=tenant.slug, dsn=dsn)

    async def record(self, outcomes: list[Outcome]) -> None:
        """Write outcomes to the registry (revision, error) and the operations ledger, in one transaction."""
        rows = []
        async with self._p.control.connection() as conn, conn.transaction():
            # Each tenant database itself says where it stands: if a crash loses these records, the next
            # `migrate tenants` finds the tenants there (one query each) and records them again.
            await db.commit_without_flush(conn)
            for outcome in outcomes:
                tenant_id = uuid.UUID(outcome.target.tenant_id)
                state = OperationState.SUCCEEDED if outcome.ok else OperationState.FAILED
                params = {"revision": outcome.revision, "seconds": round(outcome.seconds, 3)}
                await registry.set_migration_result(conn, tenant_id, revision=outcome.revision, error=outcome.error)
                rows.append((tenant_id, outcome.target.slug, OperationKind.MIGRATE, state, outcome.error, params))
            await ledger.record_finished(conn, rows)

    async def status(self) -> dict[str, Any]:
        """Tenants per revision and the failures of the last migration of each tenant."""
        async with self._p.control.connection() as conn:
            counts = await registry.revision_counts(conn)
            failed = await registry.failed_migrations(conn)
        return {
            "head": self._scripts.head(),
            "revisions": counts,
            "failures": [{"slug": t.slug, "revision": t.schema_revision, "error": t.migration_error} for t in failed],
        }
