"""The distributed task queue: the leader's jobs enqueue per-tenant work, workers of any process do it.

- A usage round queues one task per tenant, and never a tenant whose task still waits; a backup round
  queues a run of each open backup. A worker then does the work: usage rows and the cycle's points appear,
  the backup is stored. Run again for the same cycle, the usage task writes nothing twice.
- A ``cardvault worker`` killed with SIGKILL in the middle of a task (right after its commit, before the
  queue hears of it): another worker finds the job stalled, runs it again, and the usage is written once.
- ``cardvault serve``'s lifespan runs a worker, unless ``CARDVAULT_WORKER=0``: then no worker registers and
  queued tasks wait.
- Succeeded jobs are deleted as they end; failed ones are pruned once a day old.
- A stalled job goes back to the queue, unless its tenant has a newer job waiting: then it is failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from controlplane.app import create_app
from controlplane.backups.models import BackupStatus
from controlplane.backups.schedule import BackupScheduler
from controlplane.backups.service import BackupService
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.tasks.definitions import USAGE_TASK
from controlplane.tasks.fanout import Fanout
from controlplane.tasks.queue import TaskQueue
from controlplane.tasks.usage import AFTER_COMMIT
from controlplane.usage.service import UsageService
from tests.conftest import eventually
from tests.integration.task_queue_support import FAST, fast, jobs, services, worker_killed_at


async def points_at(platform: Platform, tenant_id: uuid.UUID, cycle: datetime) -> int:
    async with platform.control.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM tenant_usage_metrics"
            " WHERE tenant_id = %s AND metric_name = 'database_bytes' AND recorded_at = %s",
            (tenant_id, cycle),
        )
        row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def scanned(platform: Platform, tenant_id: uuid.UUID) -> bool:
    async with platform.control.connection() as conn:
        cur = await conn.execute("SELECT 1 FROM tenant_usage_scans WHERE tenant_id = %s", (tenant_id,))
        return await cur.fetchone() is not None


async def test_rounds_queue_each_tenant_once_and_a_worker_does_the_work(
    platform: Platform, service: TenantService
) -> None:
    acme = await service.create(name="Acme", slug="acme", tier="starter")
    beta = await service.create(name="Beta", slug="beta", tier="starter")
    queue = TaskQueue(fast(platform.settings))
    backups = BackupService(platform)
    usage = UsageService(platform)
    rounds = Fanout(platform, queue, usage, BackupScheduler(backups))
    await queue.open()
    try:
        assert await rounds.usage_round() == "usage of 2 tenant(s) queued, 0 still queued from before"
        waiting = await jobs(platform, USAGE_TASK)
        assert sorted(j["queueing_lock"] for j in waiting) == sorted(f"usage:{t.id}" for t in (acme, beta))
        cycle = datetime.fromisoformat(waiting[0]["args"]["cycle"])

        pending = await backups.request("acme")
        outcome = await rounds.backup_round()
        assert ", 1 queued, " in outcome, outcome
        assert await rounds.backup_round() == outcome.replace("1 queued", "0 queued")  # it still waits

        await queue.run_worker(services(platform, backups=backups), wait=False)
        assert await jobs(platform, USAGE_TASK) == []  # succeeded: deleted as they ended
        for tenant in (acme, beta):
            assert await scanned(platform, tenant.id)
            assert await points_at(platform, tenant.id, cycle) == 1
        assert (await backups.get(pending.id)).status is BackupStatus.SUCCEEDED

        # The same cycle's task once more (a retry after its worker's commit): nothing is written twice.
        assert await queue.enqueue_usage(acme.id, cycle)
        await queue.run_worker(services(platform, backups=backups), wait=False)
        assert await jobs(platform, USAGE_TASK) == []
        assert await points_at(platform, acme.id, cycle) == 1

        # The next round reports on the previous one (the stats /metrics shows); a tenant whose task still
        # waits is not queued again, and counts as failed if the round after finds it unmeasured.
        assert await rounds.usage_round() == (
            "usage of 2 tenant(s) queued, 0 still queued from before; "
            "previous round: 2 tenant(s) on 1 server(s): 2 scanned, 0 unchanged, 0 failed"
        )
        assert usage.snapshot.last is not None and usage.snapshot.last.started_at == cycle
        assert await rounds.usage_round() == (
            "usage of 0 tenant(s) queued, 2 still queued from before; previous round: 2 tenant(s) on 0 server(s): "
            "0 scanned, 0 unchanged, 2 failed, 1 server(s) unreachable (acme, beta)"
        )
        assert len(await jobs(platform, USAGE_TASK)) == 2
    finally:
        await queue.close()
        await backups.stop()


@pytest.mark.slow
async def test_a_worker_killed_mid_task_is_retried_elsewhere_and_writes_once(
    platform: Platform, service: TenantService, control_dsn: str, tenant_template_name: str, tmp_path: Path
) -> None:
    acme = await service.create(name="Acme", slug="acme", tier="starter")
    queue = TaskQueue(fast(platform.settings))
    backups = BackupService(platform)
    await queue.open()
    try:
        cycle = datetime.now(UTC)
        assert await queue.enqueue_usage(acme.id, cycle)
        # It kills itself right after committing the usage.
        await worker_killed_at(
            AFTER_COMMIT, control_dsn, tenant_template_name, platform.settings.data_dir, tmp_path / "worker.log"
        )
        [job] = await jobs(platform, USAGE_TASK)
        assert job["status"] == "doing"  # the queue never heard the task ended
        assert await points_at(platform, acme.id, cycle) == 1

        worker = asyncio.create_task(queue.run_worker(services(platform, backups=backups)))
        try:

            async def succeeded() -> bool:
                return await jobs(platform, USAGE_TASK) == []

            await eventually(succeeded, "the stalled task was retried by the other worker", within=30)
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        assert await points_at(platform, acme.id, cycle) == 1
    finally:
        await queue.close()
        await backups.stop()


async def registered_workers(platform: Platform) -> int:
    async with platform.control.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM procrastinate.procrastinate_workers")
        row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def test_serve_runs_a_worker_unless_turned_off(platform: Platform, service: TenantService) -> None:
    acme = await service.create(name="Acme", slug="acme", tier="starter")
    cycle = datetime.now(UTC)
    off = platform.settings.replace(tasks=dataclasses.replace(FAST, worker=False))
    async with AsyncTestClient(app=create_app(off)):
        queue = TaskQueue(off)
        await queue.open()
        try:
            assert await queue.enqueue_usage(acme.id, cycle)
        finally:
            await queue.close()
        assert await registered_workers(platform) == 0
        assert [j["status"] for j in await jobs(platform, USAGE_TASK)] == ["todo"]

    async with AsyncTestClient(app=create_app(fast(platform.settings))):

        async def done() -> bool:
            return await jobs(platform, USAGE_TASK) == []

        await eventually(done, "the service's own worker ran the queued task")
        assert await registered_workers(platform) == 1
    assert await points_at(platform, acme.id, cycle) == 1
    assert await registered_workers(platform) == 0  # unregistered when the service stopped


async def test_prune_deletes_only_failed_jobs_older_than_a_day(platform: Platform, service: TenantService) -> None:
    acme = await service.create(name="Acme", slug="acme", tier="starter")
    queue = TaskQueue(fast(platform.settings))
    await queue.open()
    try:
        for _ in range(2):
            assert await queue.enqueue_usage(acme.id, datetime.now(UTC))
            async with platform.control.connection() as conn:
                await conn.execute(
                    "UPDATE procrastinate.procrastinate_jobs SET status = 'failed' WHERE status = 'todo'"
                )
        old, recent = await jobs(platform, USAGE_TASK)
        async with platform.control.connection() as conn:
            await conn.execute(
                "UPDATE procrastinate.procrastinate_events SET at = now() - interval '25 hours' WHERE job_id = %s",
                (old["id"],),
            )
        await queue.prune()
        assert [j["id"] for j in await jobs(platform, USAGE_TASK)] == [recent["id"]]
    finally:
        await queue.close()


async def test_a_stalled_job_is_queued_again_unless_its_tenant_has_one_waiting(
    platform: Platform, service: TenantService
) -> None:
    acme = await service.create(name="Acme", slug="acme", tier="starter")
    queue = TaskQueue(fast(platform.settings))
    await queue.open()
    try:

        async def stall_waiting() -> None:  # as if its worker took it and vanished (no worker row left)
            async with platform.control.connection() as conn:
                await conn.execute(
                    "UPDATE procrastinate.procrastinate_jobs SET status = 'doing', worker_id = NULL"
                    " WHERE status = 'todo'"
                )

        assert await queue.enqueue_usage(acme.id, datetime.now(UTC))
        await stall_waiting()
        assert await queue.retry_stalled() == 1
        [job] = await jobs(platform, USAGE_TASK)
        assert job["status"] == "todo"

        await stall_waiting()
        assert await queue.enqueue_usage(acme.id, datetime.now(UTC))  # the next round's, for the same tenant
        assert await queue.retry_stalled() == 0
        assert [j["status"] for j in await jobs(platform, USAGE_TASK)] == ["failed", "todo"]
    finally:
        await queue.close()
