"""The rest of the fan-out through the task queue: tenant schema upgrades and overage reports.

- ``migrate tenants --queue`` (``QueuedMigrations``): two workers upgrade every tenant once; the canary is
  waited for first, and when it fails the rest are never queued; ``--only-failed`` queues only the failed
  tenant; a tenant's task run again changes nothing (no ledger row, no registry change); the command runs
  in a subprocess against in-test workers and reports as the in-process run does.
- A ``cardvault worker`` killed with SIGKILL right after a tenant's upgrade committed (before the outcome
  was recorded): another worker retries the task, finds the database at head and records it once.
- The leader's billing round records the ledger and queues one ``billing.report_tenant`` per tenant with rows
  due; the task sends only its tenant's rows; run twice, a row is reported once; a worker killed after
  Stripe accepted a row and before marking it re-sends the same identifier from another worker, which Stripe
  drops, so the event counts once.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from controlplane import db
from controlplane.backups.schedule import BackupScheduler
from controlplane.backups.service import BackupService
from controlplane.billing import catalog_repository, metering
from controlplane.billing.metering import day_start
from controlplane.billing.provider import BillingProvider
from controlplane.billing.providers import provider_for
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import Tenant
from controlplane.schemas.alembic_runner import TENANT_VERSION_TABLE
from controlplane.settings import Settings, TaskQueueSettings
from controlplane.tasks.definitions import BILLING_TASK, MIGRATION_TASK, Services
from controlplane.tasks.fanout import Fanout
from controlplane.tasks.migration_runs import QueuedMigrations
from controlplane.tasks.migrations import AFTER_UPGRADE
from controlplane.tasks.queue import TaskQueue
from controlplane.usage.collector import Collector
from controlplane.usage.service import UsageService
from tests.conftest import eventually
from tests.integration.billing_usage_support import add_points, ledger, set_customer
from tests.integration.cli_support import CARDVAULT, cli_env, run_cli
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
from tests.processes import die_with_parent, stop, track
from tests.stripe_harness import StripeStandin, stripe_env

#: Short enough that a dead worker is noticed within a couple of seconds.
FAST = TaskQueueSettings(concurrency=2, heartbeat=0.2, stalled_after=1.0)
H = timedelta(hours=1)


def services(platform: Platform, billing: BillingProvider | None = None) -> Services:
    collector = Collector(
        platform.fleet, platform.settings.database, concurrency=2, storage_root=platform.settings.data_dir / "storage"
    )
    return Services(platform, collector, BackupService(platform), billing=billing)


async def jobs(platform: Platform, task: str) -> list[dict[str, Any]]:
    async with platform.control.connection() as conn:
        cur = await conn.execute(
            "SELECT id, status::text AS status, lock FROM procrastinate.procrastinate_jobs WHERE task_name = %s"
            " ORDER BY id",
            (task,),
        )
        return list(await cur.fetchall())


def migrate_ops(control_dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(control_dsn) as conn:
        rows = conn.execute("SELECT tenant_slug, state FROM tenant_operations WHERE kind = 'migrate' ORDER BY id")
        return sorted((str(slug), str(state)) for slug, state in rows)


def version_rows(admin_dsn: str, database: str) -> int:
    with psycopg.connect(db.with_database(admin_dsn, database)) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(TENANT_VERSION_TABLE))).fetchone()
    assert row is not None
    return int(row[0])


async def spawn_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        started = asyncio.to_thread(
            subprocess.Popen, [CARDVAULT, "worker"], env=env, stdout=out, stderr=out, preexec_fn=die_with_parent
        )
        return track(await started)


async def wait_killed(proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        code = await asyncio.to_thread(proc.wait, 60)
    finally:
        stop(proc)
    if code != -9:  # it should have killed itself at the failpoint
        raise AssertionError(f"exit {code}:\n{await asyncio.to_thread(log.read_text)}")


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
            env = cli_env(
                control_dsn,
                private_template,
                tmp_path / "data",
                CARDVAULT_TENANT_SCHEMA_DIR=str(schema_v2),
                CARDVAULT_WORKER_HEARTBEAT="0.2",
                CARDVAULT_WORKER_STALLED_AFTER="1",
                CARDVAULT_FAILPOINTS=f"{AFTER_UPGRADE}=kill",
            )
            log = tmp_path / "worker.log"
            await wait_killed(await spawn_worker(env, log), log)
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


# -- overage reports ----------------------------------------------------------------------------------------


@pytest.fixture
async def provider(stripe_settings: Settings, platform: Platform, stripe_standin: StripeStandin) -> BillingProvider:
    """The Stripe provider on the stand-in, its meters synced and recorded in ``billing_meters``."""
    found = provider_for(stripe_settings.billing)
    assert found is not None
    async with platform.control.connection() as conn:
        for meter in (await found.sync_catalog()).meters:
            await catalog_repository.record_meter(conn, found.name, meter)
    await stripe_standin.clear_failures()
    return found


@pytest.fixture
def yesterday() -> datetime:
    return day_start(datetime.now(UTC)) - timedelta(days=1)


async def customer_tenant(
    service: TenantService, control: Any, provider: BillingProvider, slug: str
) -> tuple[uuid.UUID, str]:
    tenant = await service.create(name=slug.title(), slug=slug, tier="starter")
    customer = await provider.ensure_customer(tenant_id=str(tenant.id), slug=slug, name=slug.title(), email=None)
    await set_customer(control, tenant.id, customer)
    return tenant.id, customer


async def test_billing_reports_are_queued_per_tenant_and_sent_once(
    platform: Platform,
    service: TenantService,
    control: Any,
    provider: BillingProvider,
    stripe_standin: StripeStandin,
    yesterday: datetime,
) -> None:
    run_at = yesterday + timedelta(days=1, hours=1)
    acme, acme_customer = await customer_tenant(service, control, provider, "acme")
    beta, beta_customer = await customer_tenant(service, control, provider, "beta")
    await add_points(control, acme, "cards", (yesterday + H, 1200))
    await add_points(control, beta, "cards", (yesterday + H, 1050))
    duplicates = await stripe_standin.duplicate_meter_events()
    queue = TaskQueue(platform.settings.replace(tasks=FAST))
    backups = BackupService(platform)
    rounds = Fanout(platform, queue, UsageService(platform), BackupScheduler(backups))
    await queue.open()
    try:
        # Only acme's task runs first: it sends acme's row and leaves beta's alone.
        async with platform.control.connection() as conn:
            assert await metering.record_overage(conn, now=run_at) == 2
        assert await queue.enqueue_billing(acme, run_at)
        await queue.run_worker(services(platform, provider), wait=False)
        reported = {r["tenant_id"]: r["reported_at"] for r in await ledger(control)}
        assert reported == {acme: run_at, beta: None}
        assert [e["payload"]["value"] for e in await stripe_standin.meter_events(customer=acme_customer)] == ["200"]
        assert await stripe_standin.meter_events(customer=beta_customer) == []

        # The leader's round queues beta only (acme has nothing due); acme's task again sends nothing.
        line = await rounds.billing_round(run_at)
        assert line == "0 overage period(s) recorded, reports of 1 tenant(s) queued"
        assert [j["lock"] for j in await jobs(platform, BILLING_TASK)] == [f"billing:{beta}"]
        assert await queue.enqueue_billing(acme, run_at)
        await queue.run_worker(services(platform, provider), wait=False)
        assert await jobs(platform, BILLING_TASK) == []
        assert all(r["reported_at"] == run_at and r["attempts"] == 1 for r in await ledger(control))
        assert len(await stripe_standin.meter_events(customer=acme_customer)) == 1
        assert [e["payload"]["value"] for e in await stripe_standin.meter_events(customer=beta_customer)] == ["50"]
        assert await stripe_standin.duplicate_meter_events() == duplicates  # nothing was even sent twice
        assert await rounds.billing_round(run_at) == "0 overage period(s) recorded, reports of 0 tenant(s) queued"
    finally:
        await queue.close()
        await backups.stop()
        await provider.aclose()


@pytest.mark.slow
async def test_a_worker_killed_after_stripe_accepted_is_retried_and_counted_once(
    platform: Platform,
    service: TenantService,
    control: Any,
    provider: BillingProvider,
    stripe_standin: StripeStandin,
    control_dsn: str,
    tenant_template_name: str,
    yesterday: datetime,
    tmp_path: Path,
) -> None:
    run_at = yesterday + timedelta(days=1, hours=1)
    acme, customer = await customer_tenant(service, control, provider, "acme")
    await add_points(control, acme, "cards", (yesterday + H, 1001))
    async with platform.control.connection() as conn:
        assert await metering.record_overage(conn, now=run_at) == 1
    duplicates = await stripe_standin.duplicate_meter_events()
    queue = TaskQueue(platform.settings.replace(tasks=FAST))
    await queue.open()
    try:
        assert await queue.enqueue_billing(acme, run_at)
        env = cli_env(
            control_dsn,
            tenant_template_name,
            platform.settings.data_dir,
            CARDVAULT_WORKER_HEARTBEAT="0.2",
            CARDVAULT_WORKER_STALLED_AFTER="1",
            CARDVAULT_FAILPOINTS=f"{metering.AFTER_SEND}=kill",
            **stripe_env(stripe_standin),
        )
        log = tmp_path / "worker.log"
        await wait_killed(await spawn_worker(env, log), log)
        [job] = await jobs(platform, BILLING_TASK)
        assert job["status"] == "doing"
        [row] = await ledger(control, acme)
        assert row["reported_at"] is None and row["attempts"] == 0  # the mark died with the worker ...
        assert len(await stripe_standin.meter_events(customer=customer)) == 1  # ... after Stripe took it

        queue.start_worker(services(platform, provider))

        async def reported() -> bool:
            return (await ledger(control, acme))[0]["reported_at"] is not None

        await eventually(reported, "another worker retried the stalled report", within=30)
    finally:
        await queue.close()
        await provider.aclose()
    assert (await ledger(control, acme))[0]["attempts"] == 1
    assert await stripe_standin.duplicate_meter_events() == duplicates + 1  # sent again, dropped by Stripe
    [event] = await stripe_standin.meter_events(customer=customer)
    assert (event["identifier"], event["payload"]["value"]) == (row["identifier"], "1")
