"""Tenant moves on the task queue: the ``moves.move_tenant`` task, and ``MoveTasks``, the queue as drains and
rebalances use it (``controlplane.moves.fleet_models.MoveQueue``).

One task per tenant (``tenant_id``, ``source`` server id, ``to`` server name, ``requested_by``), with
``queueing_lock`` = ``move:<tenant id>`` (a tenant is queued once until its task starts) and ``lock`` =
``move-from:<source server id>``: moves off one server run one at a time, whichever workers take them (a
drained server copies one tenant at a time, gently, rather than several that contend for its replication
slots and I/O); moves off different servers run side by side. The body is ``FleetMoves.run_move``: a
tenant no longer on ``source`` is left alone, so a task run twice (a retry, a drain asked twice) moves the
tenant once. A move that failed (undone, the tenant stays) raises and is retried like the other tasks
(``definitions.RETRY``).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Protocol

from procrastinate import App, JobContext, RetryStrategy, exceptions

from controlplane.moves.fleet_moves import FleetMoves
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService

MOVE_TASK = "moves.move_tenant"
QUEUE = "moves"


class _HasPlatform(Protocol):
    @property
    def platform(self) -> Platform: ...


def lock_of(tenant_id: uuid.UUID) -> str:
    """The ``queueing_lock`` of the tenant's move: one waits at most."""
    return f"move:{tenant_id}"


def source_lock(server_id: uuid.UUID) -> str:
    """The ``lock`` of every move off the server: one runs at a time."""
    return f"move-from:{server_id}"


def register(app: App, services_key: str, retry: RetryStrategy) -> None:
    """Add the move task to ``app``; the worker's services (with a ``platform``) are at ``services_key``."""

    async def move_tenant(
        context: JobContext, tenant_id: str, source: str, to: str, requested_by: str | None = None
    ) -> str:
        services: _HasPlatform = context.additional_context[services_key]
        platform = services.platform
        moves = FleetMoves(platform, TenantService(platform))
        return await moves.run_move(uuid.UUID(tenant_id), uuid.UUID(source), to, requested_by=requested_by)

    app.task(name=MOVE_TASK, queue=QUEUE, pass_context=True, retry=retry)(move_tenant)


class MoveTasks:
    """Queue moves and see which wait (``MoveQueue``), on a process's procrastinate app."""

    def __init__(self, app: App) -> None:
        self._app = app

    async def enqueue_move(self, tenant_id: uuid.UUID, *, source: uuid.UUID, to: str, requested_by: str | None) -> bool:
        task = self._app.configure_task(
            MOVE_TASK, lock=source_lock(source), queueing_lock=lock_of(tenant_id), allow_unknown=False
        )
        try:
            await task.defer_async(tenant_id=str(tenant_id), source=str(source), to=to, requested_by=requested_by)
        except exceptions.AlreadyEnqueued:
            return False
        return True

    async def pending_moves(self, tenant_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
        wanted = {str(t): t for t in tenant_ids}
        found: set[uuid.UUID] = set()
        for status in ("todo", "doing"):
            for job in await self._app.job_manager.list_jobs_async(task=MOVE_TASK, status=status):
                tenant = str(job.task_kwargs.get("tenant_id"))
                if tenant in wanted:
                    found.add(wanted[tenant])
        return found
