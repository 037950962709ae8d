"""``TaskQueue``: the procrastinate app on the control database, how work is enqueued, and the worker.

**Why procrastinate.** It is a maintained PostgreSQL task queue on psycopg 3 (async): the queue is rows of
the control database every process already shares (no broker to run), workers wake on LISTEN/NOTIFY,
``queueing_lock`` keeps a tenant from being queued twice, ``lock`` keeps two of its tasks from running at
once, and (3.x) workers keep a heartbeat, so a dead worker's running jobs can be found and retried.
A job that succeeds is deleted as it ends; failed ones stay a day for inspection (``prune``).

**Connections.** The app has its own small pool on the control database (``concurrency`` + 4: the
worker's listener, heartbeat and abort poll, the stalled-job check and enqueuing), with procrastinate's
schema (``procrastinate``, migration 0023) on the search path.

**Enqueueing** (``enqueue_*``, called by the leader's jobs; other parts may add their own the same way):
one job per tenant and kind of work, with ``queueing_lock`` and ``lock`` = ``<kind>:<tenant id>``. A
tenant whose previous job of that kind still waits is not queued again (the call returns False).

**The worker** (``start_worker`` in ``cardvault serve``, ``run_worker`` for ``cardvault worker``) runs up to
``CARDVAULT_WORKER_CONCURRENCY`` tasks at once and heartbeats every ``CARDVAULT_WORKER_HEARTBEAT``. Every
worker also checks, every half ``CARDVAULT_WORKER_STALLED_AFTER``, for running jobs whose worker has been
silent that long (killed, frozen, cut off) and puts them back in the queue (``retry_stalled``), so another
worker runs them. Tasks are written so that running one twice has the effect of running it once (see
``definitions``). A worker whose loop fails (the control database went away) is started again after a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import datetime

from procrastinate import App, PsycopgConnector, exceptions, jobs
from psycopg import conninfo

from controlplane.settings import Settings
from controlplane.tasks import definitions
from controlplane.tasks.repository import SCHEMA

log = logging.getLogger(__name__)

#: Seconds before a worker whose loop failed is started again.
RESTART_PAUSE = 5.0
#: Seconds a stopping worker waits for its running tasks before it cancels them (they are retried).
SHUTDOWN_GRACE = 10.0
#: Connections of the pool besides one per concurrent task.
EXTRA_CONNECTIONS = 4
#: Seconds between a worker's looks for jobs it was not notified of: a job whose ``lock`` was held (the next
#: move off a server) or whose retry time came (procrastinate's default is 5).
FETCH_POLL = 1.0
#: Hours a failed or aborted job is kept for inspection (succeeded ones are deleted as they end).
KEEP_FINISHED_HOURS = 24


def migration_key(tenant_id: uuid.UUID) -> str:
    """The ``lock`` and ``queueing_lock`` of a tenant's schema upgrade (``migrate tenants --queue`` waits on it)."""
    return f"migrate:{tenant_id}"


def queue_conninfo(settings: Settings) -> str:
    """The control database's DSN for the queue's pool: timeouts, a name, procrastinate's search path."""
    database = settings.database
    return conninfo.make_conninfo(
        database.url,
        connect_timeout=max(1, int(database.connect_timeout)),
        application_name="cardvault-tasks",
        options=f"-c statement_timeout={int(database.statement_timeout * 1000)} -c search_path={SCHEMA}",
    )


class TaskQueue:
    """The queue of one process: enqueue from anywhere in it, and run at most one worker."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings.tasks
        connector = PsycopgConnector(
            conninfo=queue_conninfo(settings),
            min_size=1,
            max_size=self._settings.concurrency + EXTRA_CONNECTIONS,
        )
        self.app = App(connector=connector)
        definitions.register(self.app)
        self._worker: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def open(self) -> None:
        await self.app.open_async()

    async def close(self) -> None:
        await self.stop_worker()
        await self.app.close_async()

    # -- enqueueing -------------------------------------------------------------------------------

    async def _enqueue(self, task: str, key: str, **args: str) -> bool:
        try:
            await self.app.configure_task(task, lock=key, queueing_lock=key, allow_unknown=False).defer_async(**args)
        except exceptions.AlreadyEnqueued:
            return False
        return True

    async def enqueue_usage(self, tenant_id: uuid.UUID, cycle: datetime) -> bool:
        """Queue the tenant's usage collection of the cycle that started at ``cycle``; False if one waits."""
        return await self._enqueue(
            definitions.USAGE_TASK, f"usage:{tenant_id}", tenant_id=str(tenant_id), cycle=cycle.isoformat()
        )

    async def enqueue_backup(self, tenant_id: uuid.UUID, backup_id: uuid.UUID) -> bool:
        """Queue the run of the tenant's open backup ``backup_id``; False if a backup run of it waits."""
        return await self._enqueue(definitions.BACKUP_TASK, f"backup:{tenant_id}", backup_id=str(backup_id))

    async def enqueue_migration(self, tenant_id: uuid.UUID, revision: str) -> bool:
        """Queue the tenant's schema upgrade to ``revision``; False if one of it waits."""
        return await self._enqueue(
            definitions.MIGRATION_TASK, migration_key(tenant_id), tenant_id=str(tenant_id), revision=revision
        )

    async def enqueue_billing(self, tenant_id: uuid.UUID, now: datetime) -> bool:
        """Queue the report of the tenant's overage rows due at ``now``; False if its report waits."""
        return await self._enqueue(
            definitions.BILLING_TASK, f"billing:{tenant_id}", tenant_id=str(tenant_id), now=now.isoformat()
        )

    # -- the worker ---------------------------------------------------------------------------------

    async def retry_stalled(self) -> int:
        """Put the running jobs of workers silent for ``CARDVAULT_WORKER_STALLED_AFTER`` back in the queue;
        how many. One whose tenant has another job waiting already is marked failed instead (the waiting
        one does the work)."""
        manager = self.app.job_manager
        retried = 0
        for job in await manager.get_stalled_jobs(seconds_since_heartbeat=self._settings.stalled_after):
            try:
                await manager.retry_job(job)
            except exceptions.UniqueViolation:  # the tenant's next job already waits: it does the work
                with contextlib.suppress(exceptions.ConnectorException):
                    await manager.finish_job(job, status=jobs.Status.FAILED, delete_job=False)
                continue
            except exceptions.ConnectorException:  # another worker's check retried it first
                continue
            retried += 1
            log.warning("task %s (job %s): its worker stopped answering; queued again", job.task_name, job.id)
        return retried

    async def prune(self) -> str:
        """Delete failed and aborted jobs older than ``KEEP_FINISHED_HOURS`` (the leader's ``prune_tasks``)."""
        await self.app.job_manager.delete_old_jobs(
            KEEP_FINISHED_HOURS, include_failed=True, include_cancelled=True, include_aborted=True
        )
        return f"finished tasks older than {KEEP_FINISHED_HOURS} h deleted"

    async def _reap_stalled(self) -> None:
        while True:
            await asyncio.sleep(self._settings.stalled_after / 2)
            try:
                await self.retry_stalled()
            except Exception:
                log.exception("stalled task check failed; trying again later")

    async def run_worker(self, services: definitions.Services, *, wait: bool = True) -> None:
        """Run the worker (and the stalled-job check) until ``stop_worker``; with ``wait`` False, until the
        queue is empty. A failed worker loop is started again after ``RESTART_PAUSE``."""
        self._stopping.clear()
        reaper = asyncio.create_task(self._reap_stalled(), name="tasks-stalled-check")
        try:
            while not self._stopping.is_set():
                try:
                    await self.app.run_worker_async(
                        name=f"{socket.gethostname()}-{os.getpid()}",
                        concurrency=self._settings.concurrency,
                        wait=wait,
                        install_signal_handlers=False,
                        update_heartbeat_interval=self._settings.heartbeat,
                        stalled_worker_timeout=self._settings.stalled_after,
                        fetch_job_polling_interval=FETCH_POLL,
                        shutdown_graceful_timeout=SHUTDOWN_GRACE,
                        delete_jobs=jobs.DeleteJobCondition.SUCCESSFUL,
                        additional_context={definitions.SERVICES: services},
                    )
                    if not wait:
                        return
                except Exception:
                    log.exception("task worker failed; starting it again in %.0fs", RESTART_PAUSE)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), RESTART_PAUSE)
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper

    def start_worker(self, services: definitions.Services) -> None:
        """Run the worker in the background of this process (``cardvault serve``)."""
        if self._worker is None:
            self._worker = asyncio.create_task(self.run_worker(services), name="tasks-worker")

    async def stop_worker(self) -> None:
        """Stop the worker: running tasks get ``SHUTDOWN_GRACE`` to end, then are cancelled (and retried)."""
        self._stopping.set()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
