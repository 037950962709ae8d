"""Tenant schema upgrades fanned out through the task queue (overage reports: ``test_task_queue_billing``).

- ``migrate tenants --queue`` (``QueuedMigrations``): two workers upgrade every tenant once; the canary is
  waited for first, and when it fails the rest are never queued; ``--only-failed`` queues only the failed
  tenant; a tenant's task run again changes nothing (no ledger row, no registry change); the command runs
  in a subprocess against in-test workers and reports as the in-process run does.
- A ``cardvault worker`` killed with SIGKILL right after a tenant's upgrade committed (before the outcome
  was recorded): another worker retries the task, finds the database at head and records it once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from controlplane import db
from controlplane.platform import Platform
from controlplane.registry.models import Tenant
from controlplane.schemas.alembic_runner import TENANT_VERSION_TABLE
from controlplane.settings import Settings
from controlplane.tasks.definitions import MIGRATION_TASK
from controlplane.tasks.migration_runs import QueuedMigrations
from controlplane.tasks.migrations import AFTER_UPGRADE
from controlplane.tasks.queue import TaskQueue
from tests.conftest import eventually
from tests.integration.cli_support import cli_env, run_cli
from tests.integration.migrations.conftest import (  # noqa: F401 (fixtures)
    private_template,
    schema_v2,
    settings_v1,
    settings_v2,
    tenants_v1,
)
from tests.integration.migrations.migration_support import (
    BASE,
    MARKER,
    NEXT,
    execute_in,
    has_table,
    registry_rows,
    revision_of,
)
from tests.integration.task_queue_support import FAST, jobs, services, worker_killed_at


def migrate_ops(control_dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(control_dsn) as conn:
        rows = conn.execute("SELECT tenant_slug, state FROM tenant_operations WHERE kind = 'migrate' ORDER BY id")
        return sorted((str(slug), str(state)) for slug, state in rows)


def version_rows(admin_dsn: str, database: str) -> int:
    with psycopg.connect(db.with_database(admin_dsn, database)) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(TENANT_VERSION_TABLE))).fetchone()
    assert row is not None
    return int(row[0])


# -- schema upgrades ----------------------------------------------------------------------------------------


@pytest.fixture
async def two_workers(settings_v2: Settings) -> AsyncIterator[list[Platform]]:  # noqa: F811
    """Two workers on the new schema, each with its own platform (as two processes would have)."""
    fast = settings_v2.replace(tasks=FAST)
    async with Platform.open(fast, migrate=False) as one, Platform.open(fast, migrate=False) as two:
        queues = [TaskQueue(fast), TaskQueue(fast)]
        for queue, platform in zip(queues, (one, two), strict=True):
            await queue.open()
            queue.start_worker(services(platform))
        try:
            yield [one, two]
        finally:
            for queue in queues:
                await queue.close()


async def test_queued_migrations_upgrade_every_tenant_once(
    tenants_v1: dict[str, Tenant],  # noqa: F811
    settings_v2: Settings,  # noqa: F811
    two_workers: list[Platform],
    control_dsn: str,
    pg_admin_dsn: str,
    private_template: str,  # noqa: F811
) -> None:
    async with Platform.open(settings_v2, migrate=False) as platform:
        queue = TaskQueue(settings_v2)
        await queue.open()
        try:
            runs = QueuedMigrations(platform, queue, poll=0.05)

            async def both_registered() -> bool:
                return await runs.workers() == 2

            await eventually(both_registered, "both workers registered")
            report = await runs.run(canary=1)
            assert report.head == NEXT and report.templates == {"default": NEXT}
            assert sorted((o.target.slug, o.ok, o.revision) for o in report.outcomes) == [
                ("alpha", True, NEXT),
                ("bravo", True, NEXT),
                ("charlie", True, NEXT),
            ]
            assert report.skipped == report.queued == 0
            for tenant in tenants_v1.values():
                assert revision_of(pg_admin_dsn, tenant.database_name) == NEXT
                assert has_table(pg_admin_dsn, tenant.database_name, "card_gradings")
            assert revision_of(pg_admin_dsn, private_template) == NEXT
            assert registry_rows(control_dsn) == {slug: (NEXT, None) for slug in tenants_v1}
            assert migrate_ops(control_dsn) == [(slug, "succeeded") for slug in sorted(tenants_v1)]
            assert await jobs(platform, MIGRATION_TASK) == []  # succeeded jobs are deleted
            # Rendered once per worker process at most, never per tenant.
            assert [w.tenant_scripts.renders <= 1 for w in two_workers] == [True, True]

            # Alpha's task once more: the database is at head and the registry says so: nothing changes.
            before = registry_rows(control_dsn)
            assert await queue.enqueue_migration(tenants_v1["alpha"].id, NEXT)
            [outcome] = await runs.wait([tenants_v1["alpha"]], NEXT)
            assert (outcome.ok, outcome.revision) == (True, NEXT)
            # The whole run again: every tenant found at head, no ledger row added.
            again = await runs.run()
            assert [o.revision for o in again.outcomes] == [NEXT] * 3 and again.failures == []
            assert registry_rows(control_dsn) == before
            assert migrate_ops(control_dsn) == [(slug, "succeeded") for slug in sorted(tenants_v1)]
            assert version_rows(pg_admin_dsn, tenants_v1["alpha"].database_name) == 1
        finally:
            await queue.close()


@pytest.mark.slow
async def test_cli_queue_canary_failure_then_only_failed(
    tenants_v1: dict[str, Tenant],  # noqa: F811
    two_workers: list[Platform],
    control_dsn: str,
    pg_admin_dsn: str,
    private_template: str,  # noqa: F811
    schema_v2: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    env = cli_env(control_dsn, private_template, tmp_path / "data", CARDVAULT_TENANT_SCHEMA_DIR=str(schema_v2))
    bravo = tenants_v1["bravo"].database_name
    execute_in(pg_admin_dsn, bravo, "INSERT INTO manufacturers (name) VALUES (%s)", (MARKER,))

    refused = await asyncio.to_thread(run_cli, env, "migrate", "tenants", "--no-wait")
    assert refused.code == 2 and "--no-wait needs --queue" in refused.stderr

    # Alpha and bravo are the canary; bravo fails, so charlie is never queued.
    run = await asyncio.to_thread(run_cli, env, "migrate", "tenants", "--queue", "--canary", "2", "--json")
    assert run.code == 1, run.stderr
    report = run.json()
    assert (report["tenants"], report["succeeded"], report["skipped"]) == (2, 1, 1)
    [failed] = report["failed"]
    assert failed["slug"] == "bravo" and MARKER in failed["error"]
    assert "canary: finished 2/2: 1 ok, 1 failed" in run.stderr
    rows = registry_rows(control_dsn)
    assert rows["alpha"] == (NEXT, None) and rows["charlie"] == (BASE, None)
    assert rows["bravo"][0] == BASE and MARKER in rows["bravo"][1]
    assert revision_of(pg_admin_dsn, tenants_v1["charlie"].database_name) == BASE
    assert not has_table(pg_admin_dsn, bravo, "card_gradings")

    # Fixed by hand: --only-failed queues bravo alone.
    execute_in(pg_admin_dsn, bravo, "DELETE FROM manufacturers WHERE name = %s", (MARKER,))
    retry = await asyncio.to_thread(run_cli, env, "migrate", "tenants", "--queue", "--only-failed")
    assert retry.code == 0, retry.stderr
    assert retry.stdout.strip() == f"head {NEXT}: 1 ok, 0 failed"
    assert registry_rows(control_dsn)["charlie"] == (BASE, None)
    assert migrate_ops(control_dsn) == sorted([("alpha", "succeeded"), ("bravo", "failed"), ("bravo", "succeeded")])

    # --no-wait: charlie is queued and the command returns; the workers upgrade it meanwhile.
    queued = await asyncio.to_thread(run_cli, env, "migrate", "tenants", "--queue", "--no-wait")
    assert queued.code == 0, queued.stderr
    assert queued.stdout.strip() == f"head {NEXT}: 0 ok, 0 failed, 3 queued"

    def all_at_head() -> bool:
        return registry_rows(control_dsn) == {slug: (NEXT, None) for slug in tenants_v1}

    await eventually(all_at_head, "the queued upgrades ran", within=30)
    assert revision_of(pg_admin_dsn, tenants_v1["charlie"].database_name) == NEXT


@pytest.mark.slow
async def test_a_worker_killed_mid_upgrade_is_retried_elsewhere_and_recorded_once(
    tenants_v1: dict[str, Tenant],  # noqa: F811
    settings_v2: Settings,  # noqa: F811
    control_dsn: str,
    pg_admin_dsn: str,
    private_template: str,  # noqa: F811
    schema_v2: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    alpha = tenants_v1["alpha"]
    fast = settings_v2.replace(tasks=FAST)
    async with Platform.open(fast, migrate=False) as platform:
        queue = TaskQueue(fast)
        await queue.open()
        try:
            assert await queue.enqueue_migration(alpha.id, NEXT)
            await worker_killed_at(
                AFTER_UPGRADE,
                control_dsn,
                private_template,
                tmp_path / "data",
                tmp_path / "worker.log",
                CARDVAULT_TENANT_SCHEMA_DIR=str(schema_v2),
            )
            [job] = await jobs(platform, MIGRATION_TASK)
            assert job["status"] == "doing"  # the queue never heard the task ended
            assert revision_of(pg_admin_dsn, alpha.database_name) == NEXT  # the upgrade committed ...
            assert registry_rows(control_dsn)["alpha"] == (BASE, None)  # ... its record did not
            assert migrate_ops(control_dsn) == []

            queue.start_worker(services(platform))
            [outcome] = await QueuedMigrations(platform, queue, poll=0.05).wait([alpha], NEXT)
            assert (outcome.ok, outcome.revision) == (True, NEXT)
            assert await jobs(platform, MIGRATION_TASK) == []
        finally:
            await queue.close()
    assert registry_rows(control_dsn)["alpha"] == (NEXT, None)
    assert migrate_ops(control_dsn) == [("alpha", "succeeded")]
    assert version_rows(pg_admin_dsn, alpha.database_name) == 1
    assert has_table(pg_admin_dsn, alpha.database_name, "card_gradings")
    assert {revision_of(pg_admin_dsn, tenants_v1[s].database_name) for s in ("bravo", "charlie")} == {BASE}
