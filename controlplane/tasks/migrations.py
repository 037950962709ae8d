"""One tenant's schema upgrade, as a task (``migrations.upgrade_tenant``): what ``migrate tenants`` does for
every tenant, for one, in whichever worker takes it.

The task carries the tenant's id and the revision to reach (the head of the code that queued it). The
worker upgrades with the same fast path as the in-process run (``controlplane.migrations.apply``): the
revision steps are rendered to SQL once per process and starting revision (``TenantUpgrades`` keeps one
``Upgrader`` per goal), then each tenant costs a connection, a version read and one transaction. A revision
that cannot be rendered runs through alembic online in a thread (alembic's process-wide lock lets one run
at a time in a process; other processes run theirs meanwhile). The outcome goes to the registry and the
operations ledger as the in-process run writes it, so ``--only-failed`` and ``migrate status`` see it.

**Running it twice does nothing the second time.** The upgrade's transaction checks the version row it
started from (``Upgrader``): a tenant already at the goal costs one query and is left as it is. A run that
found the tenant there, with the registry already saying so, records nothing either; a run whose worker
died after the upgrade committed and before the record (failpoint ``AFTER_UPGRADE``) leaves the registry
behind, so the retry finds the database at the goal and records it once.

A worker whose code does not know the revision (an older release during a rolling deploy) refuses the task
(``UnknownRevision``): it is retried, by then perhaps on an upgraded worker, and otherwise fails visibly.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid

from controlplane.errors import CardVaultError
from controlplane.migrations.apply import Upgrader
from controlplane.migrations.fleet_runner import Outcome
from controlplane.migrations.service import MIGRATABLE, TenantMigrations, upgrade_online
from controlplane.platform import Platform
from controlplane.registry import repository as registry

#: Failpoint after a tenant's upgrade committed, before its outcome is recorded (tests kill the worker here).
AFTER_UPGRADE = "after:tenant_upgrade"


class UnknownRevision(CardVaultError):
    """The task asks for a revision this worker's tenant schema does not have."""

    code = "unknown_revision"


class TenantUpgrades:
    """A worker process's upgraders, one per goal revision (each caches the SQL it rendered)."""

    def __init__(self) -> None:
        self._upgraders: dict[str, Upgrader] = {}

    def upgrader(self, platform: Platform, goal: str) -> Upgrader:
        found = self._upgraders.get(goal)
        if found is None:
            scripts = platform.tenant_scripts
            if goal not in scripts.revisions():
                raise UnknownRevision(
                    f"revision {goal} is not in this worker's tenant schema (head {scripts.head()}): upgrade it",
                    revision=goal,
                )
            online = functools.partial(_online, str(scripts.directory), scripts.version_table)
            found = self._upgraders[goal] = TenantMigrations(platform).upgrader(goal, online)
        return found


async def _online(directory: str, version_table: str, dsn: str, revision: str) -> str:
    return await asyncio.to_thread(upgrade_online, directory, version_table, dsn, revision)


def _error(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def upgrade_tenant(platform: Platform, upgrades: TenantUpgrades, tenant_id: uuid.UUID, revision: str) -> str:
    """Upgrade one tenant's database to ``revision`` and record the outcome; the outcome in a few words.

    A failed upgrade is recorded (``migration_error``) and is the task's result, not an error: running it
    again gives the same failure (``--only-failed`` retries once fixed). The control database unreachable
    raises, so the queue retries the task.
    """
    migrations = TenantMigrations(platform)
    upgrader = upgrades.upgrader(platform, revision)
    async with platform.control.connection() as conn:
        tenant = await registry.get_by_id(conn, tenant_id)
        if tenant is None or tenant.status not in MIGRATABLE:
            return f"tenant {tenant_id}: nothing to migrate ({'gone' if tenant is None else tenant.status.value})"
        target = await migrations.target(conn, tenant)
    started = time.perf_counter()
    try:
        start, reached = await upgrader.upgrade_from(target)
    except Exception as exc:  # the tenant's failure, recorded like the in-process run's
        outcome = Outcome(target, False, None, _error(exc), time.perf_counter() - started)
    else:
        if start == reached and tenant.schema_revision == reached and tenant.migration_error is None:
            return f"{tenant.slug}: already at {reached}"
        platform.failpoints.hit(AFTER_UPGRADE)
        outcome = Outcome(target, True, reached, None, time.perf_counter() - started)
    await migrations.record([outcome])
    return f"{tenant.slug}: {outcome.revision if outcome.ok else outcome.error}"
