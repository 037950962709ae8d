"""When each tenant is backed up, and the leader's backup job.

**Planning** (pure functions of the tenants' backup standing and a clock, so tests drive time):

- Each tier has an interval and a retention (``CARDVAULT_BACKUP_SCHEDULE``). A tenant's backups fall on
  *slots* ``offset + k * interval``, where ``offset`` is a stable hash of its id modulo the interval: a
  thousand tenants of one tier are spread over the whole interval instead of all starting together.
- A tenant is due when a slot has passed since its newest backup that did not fail (pending, running,
  succeeded or expired). One never backed up is due at its first slot after it was created, or, for
  tenants older than the backup job, at its next slot (the slots of the last two job runs count, so one
  missed run loses nothing): the first round is staggered too.
- A tenant whose newest backup failed is tried again ``retry_after`` later, not at every job run; one
  with a backup pending or running is not due. Only active and suspended tenants are planned.
- **Unchanged tenants are not skipped.** Proving a database unchanged since its last backup would need
  a change marker that survives everything: ``pg_stat_database`` counters (``xact_commit``,
  ``tup_inserted`` ...) reset with ``pg_stat_reset``, a crash or an upgrade, are not transactional and
  miss DDL; the database size stays the same under updates. A skip we cannot prove safe could leave a
  tenant without a backup of its latest data, so every due tenant is backed up.

**Bounds.** The backup service holds one of its server's ``CARDVAULT_BACKUP_CONCURRENCY`` slots
(``service.ServerSlots``) around each dump, so a due round never runs more than that per server.

**The job** (``BackupScheduler.job``, leader, every ``CARDVAULT_BACKUP_INTERVAL``): expire what is past its
retention, request the due tenants' backups, then start every open backup nobody runs (the new ones, ones
asked for through the API whose process died, ``running`` ones whose runner died). ``refresh_job`` (every
replica) recomputes the ``BackupOverview`` that ``/metrics`` shows.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from controlplane.backups import repository
from controlplane.backups.models import BackupInProgress, BackupOverview, BackupTrigger, TenantBackupState
from controlplane.backups.service import BackupService
from controlplane.errors import InvalidState, TenantNotFound
from controlplane.settings import BackupSchedule

log = logging.getLogger(__name__)

#: Seconds between refreshes of the backup overview on every replica (``/metrics``).
STATUS_INTERVAL = 60.0
#: Seconds between runs of the backup job when scheduled backups are off (expiry and recovery go on).
UNSCHEDULED_INTERVAL = 300.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


@functools.lru_cache(maxsize=65536)
def stagger_offset(tenant_id: uuid.UUID, interval: float) -> float:
    """The tenant's stable offset (seconds) within ``interval``: its id's hash modulo the interval."""
    if interval <= 0:
        return 0.0
    millis = max(1, int(interval * 1000))
    return (int.from_bytes(hashlib.sha256(tenant_id.bytes).digest()[:8], "big") % millis) / 1000


def slot_index(at: datetime, offset: float, interval: float) -> int:
    """Which slot period ``at`` falls in (slots are ``offset + k * interval`` seconds after the epoch)."""
    return math.floor((at.timestamp() - offset) / interval)


def retry_after(schedule: BackupSchedule, job_interval: float) -> float:
    """Seconds before a failed backup is tried again: a quarter of the interval, at most an hour, at least
    one job run."""
    return max(job_interval, min(schedule.interval / 4, 3600.0))


def is_due(state: TenantBackupState, schedule: BackupSchedule, now: datetime, *, job_interval: float) -> bool:
    if state.open or schedule.interval <= 0:
        return False
    failed_last = state.last_failed is not None and (
        state.last_requested is None or state.last_failed > state.last_requested
    )
    if failed_last:
        assert state.last_failed is not None
        return (now - state.last_failed).total_seconds() >= retry_after(schedule, job_interval)
    offset = stagger_offset(state.tenant_id, schedule.interval)
    if state.last_requested is not None:
        since = state.last_requested
    else:  # never backed up: its next slot, the slots of the last two job runs included
        since = max(state.created_at, now - timedelta(seconds=2 * job_interval))
    return slot_index(now, offset, schedule.interval) > slot_index(since, offset, schedule.interval)


def plan(
    states: Sequence[TenantBackupState],
    schedules: Mapping[str, BackupSchedule],
    now: datetime,
    *,
    job_interval: float,
) -> list[TenantBackupState]:
    """The tenants due for a backup at ``now``, servers interleaved (each server's first, then seconds...)."""
    per_server: dict[uuid.UUID, list[TenantBackupState]] = {}
    for state in states:
        schedule = schedules.get(state.tier)
        if state.status not in ("active", "suspended") or schedule is None:
            continue
        if is_due(state, schedule, now, job_interval=job_interval):
            per_server.setdefault(state.server_id, []).append(state)
    queues = [per_server[k] for k in sorted(per_server)]
    return [q[i] for i in range(max((len(q) for q in queues), default=0)) for q in queues if i < len(q)]


def is_stale(state: TenantBackupState, schedule: BackupSchedule | None, now: datetime, factor: float) -> bool:
    """No successful backup within ``factor`` intervals (counted from its creation if it never had one)."""
    if schedule is None or schedule.interval <= 0:
        return False
    reference = state.last_succeeded or state.created_at
    return (now - reference).total_seconds() > factor * schedule.interval


def overview(
    states: Sequence[TenantBackupState],
    schedules: Mapping[str, BackupSchedule],
    now: datetime,
    *,
    stale_factor: float,
    retained_bytes: int,
    retained: int,
) -> BackupOverview:
    return BackupOverview(
        refreshed_at=now,
        last_success={s.slug: s.last_succeeded.timestamp() if s.last_succeeded else None for s in states},
        stale={s.slug: is_stale(s, schedules.get(s.tier), now, stale_factor) for s in states},
        retained_bytes=retained_bytes,
        retained=retained,
    )


class BackupScheduler:
    """The leader's backup job and every replica's backup overview (``overview``, for ``/metrics``)."""

    def __init__(self, service: BackupService, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self.service = service
        self._settings = service.platform.settings.backups
        self._clock = clock
        self._overview: BackupOverview | None = None

    @property
    def overview(self) -> BackupOverview | None:
        """The last refresh (replaced whole); None before the first."""
        return self._overview

    @property
    def interval(self) -> float:
        """How often the leader's job runs."""
        return self._settings.interval if self._settings.interval > 0 else UNSCHEDULED_INTERVAL

    async def job(self) -> str:
        expired = await self.service.expire()
        requested = 0
        if self._settings.interval > 0:
            async with self.service.platform.control.connection() as conn:
                states = await repository.tenant_states(conn)
            for state in plan(states, self._settings.schedules, self._clock(), job_interval=self._settings.interval):
                try:
                    await self.service.request(state.tenant_id, BackupTrigger.SCHEDULED, requested_by="scheduler")
                    requested += 1
                except (BackupInProgress, InvalidState, TenantNotFound) as exc:  # changed since it was read
                    log.info("backup of %s not requested: %s", state.slug, exc)
        started = await self.service.recover()
        await self.refresh()
        return f"{requested} scheduled, {started} started, {expired} expired"

    async def refresh(self) -> BackupOverview:
        async with self.service.platform.control.connection() as conn:
            states = await repository.tenant_states(conn)
            size, count = await repository.retained_totals(conn)
        self._overview = overview(
            states,
            self._settings.schedules,
            self._clock(),
            stale_factor=self._settings.stale_factor,
            retained_bytes=size,
            retained=count,
        )
        return self._overview

    async def refresh_job(self) -> str:
        board = await self.refresh()
        return f"{sum(board.stale.values())} stale tenant(s) of {len(board.stale)}, {board.retained} retained backup(s)"
