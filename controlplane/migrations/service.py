"""Tenant schema migrations across the fleet: templates first, then every tenant database.

Each tenant is upgraded on its own connection, at most ``concurrency`` at a time; one failing tenant
fails alone. Its outcome goes to the registry (``schema_revision``, ``migration_error``) and to the
operations ledger as soon as it is known, so an interrupted run can be resumed with ``--only-failed``
or simply run again (tenants at head cost one query).
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from controlplane import db
from controlplane.fleet import repository as fleet_repository
from controlplane.migrations.alembic_runner import SchemaScripts
from controlplane.migrations.fleet_runner import Outcome, Progress, Target, run_fleet
from controlplane.platform import Platform
from controlplane.provisioning import catalog
from controlplane.provisioning import repository as ledger
from controlplane.provisioning.models import OperationKind, OperationState
from controlplane.provisioning.template import Templates
from controlplane.registry import repository as registry
from controlplane.registry.models import Tenant, TenantStatus

#: Tenants whose databases are migrated; provisioning ones are cloned from an up-to-date template and
#: broken ones have no database.
_MIGRATABLE = (TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.DELETING)


@dataclass
class MigrationReport:
    head: str
    templates: dict[str, str] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    dry_run: bool = False

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
        }


@functools.cache
def _scripts(directory: str, version_table: str) -> SchemaScripts:
    """One parsed alembic environment per worker process."""
    return SchemaScripts(Path(directory), version_table)


def migrate_one(directory: str, version_table: str, dry_run: bool, target: Target) -> str:
    """Runs in a worker process: upgrade one tenant database (or, dry run, list what is pending).

    After a real upgrade the tenant group's privileges are granted again, so new tables are usable.
    """
    scripts = _scripts(directory, version_table)
    if dry_run:
        pending = scripts.pending(target.dsn)
        return " ".join(pending) if pending else scripts.head()
    before, reached = scripts.upgrade_from(target.dsn)
    if before != reached:
        with psycopg.connect(target.dsn, autocommit=True) as conn, conn.transaction():
            for statement in catalog.schema_privilege_statements(version_table):
                conn.execute(statement)
    return reached


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
        progress: Progress | None = None,
    ) -> MigrationReport:
        report = MigrationReport(head=self._scripts.head(), dry_run=dry_run)
        templates = Templates(self._p)
        async with self._p.control.connection() as conn:
            servers = await fleet_repository.list_servers(conn)
            if not dry_run:
                for server in servers:
                    report.templates[server.name] = await templates.upgrade(conn, server.id)
            tenants = [
                t
                for status in _MIGRATABLE
                for t in await registry.list_tenants(conn, status=status)
                if not only_failed or t.migration_error is not None
            ]
            targets = [await self._target(conn, t) for t in tenants]
        workers = concurrency or self._p.settings.provisioning.migration_concurrency
        work = functools.partial(migrate_one, str(self._scripts.directory), self._scripts.version_table, dry_run)
        # Processes, not threads: alembic keeps the running migration in process-wide globals, so only
        # separate processes run tenants' DDL truly in parallel. "spawn" because this process has threads.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            report.outcomes = await run_fleet(
                targets,
                work,
                concurrency=workers,
                on_outcome=None if dry_run else self._record,
                progress=progress,
                executor=pool,
            )
        return report

    async def _target(self, conn: db.AsyncConn, tenant: Tenant) -> Target:
        settings = self._p.settings.database
        migration = dataclasses.replace(settings, statement_timeout=settings.migration_statement_timeout)
        dsn = db.management_conninfo(
            await self._p.fleet.dsn(conn, tenant.server_id), migration, dbname=tenant.database_name, role="migrate"
        )
        return Target(tenant_id=str(tenant.id), slug=tenant.slug, dsn=dsn)

    async def _record(self, outcome: Outcome) -> None:
        tenant_id = uuid.UUID(outcome.target.tenant_id)
        state = OperationState.SUCCEEDED if outcome.ok else OperationState.FAILED
        params = {"revision": outcome.revision, "seconds": round(outcome.seconds, 3)}
        async with self._p.control.connection() as conn, conn.transaction():
            await registry.set_migration_result(conn, tenant_id, revision=outcome.revision, error=outcome.error)
            await ledger.record_finished(
                conn, [(tenant_id, outcome.target.slug, OperationKind.MIGRATE, state, outcome.error, params)]
            )

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
