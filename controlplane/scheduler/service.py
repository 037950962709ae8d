"""Periodic jobs inside the service, run by exactly one replica: the leader.

The leader is whichever replica holds a session advisory lock on the control database, on a
connection of its own (outside the pool). If that replica dies its session ends, the lock is free,
and the next replica to try takes it on its next tick. Each job logs one outcome line per run and
keeps its last success time and duration for the metrics endpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import psycopg
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from controlplane import db
from controlplane.platform import Platform

log = logging.getLogger(__name__)

LEADER_LOCK = db.lock_key("cardvault:scheduler-leader")


@dataclass
class JobStats:
    runs: int = 0
    failures: int = 0
    last_success: float | None = None
    last_duration: float | None = None
    last_error: str | None = None
    #: How often the job runs, whether only on the leader, and when its last run here started (Unix time):
    #: the dashboard shows when it runs next.
    every_seconds: float = 0.0
    leader_only: bool = False
    last_started: float | None = None


class Scheduler:
    def __init__(self, platform: Platform) -> None:
        self._p = platform
        self._scheduler = AsyncIOScheduler()
        self._leader_conn: db.AsyncConn | None = None
        self.stats: dict[str, JobStats] = {}

    def add_leader_job(self, name: str, job: Callable[[], Awaitable[str]], every_seconds: float) -> None:
        """Run ``job`` every ``every_seconds`` on the leader; ``job`` returns its one-line outcome."""
        self._add(name, job, every_seconds, leader_only=True)

    def add_instance_job(self, name: str, job: Callable[[], Awaitable[str]], every_seconds: float) -> None:
        """Run ``job`` every ``every_seconds`` on every instance (for state of the instance itself)."""
        self._add(name, job, every_seconds, leader_only=False)

    def _add(self, name: str, job: Callable[[], Awaitable[str]], every_seconds: float, *, leader_only: bool) -> None:
        if every_seconds <= 0:
            return
        self.stats[name] = JobStats(every_seconds=every_seconds, leader_only=leader_only)
        self._scheduler.add_job(
            self._run,
            "interval",
            seconds=every_seconds,
            args=[name, job, leader_only],
            id=name,
            max_instances=1,
            coalesce=True,
        )

    def start(self) -> None:
        self._scheduler.start()

    async def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self._leader_conn is not None:
            await self._leader_conn.close()
            self._leader_conn = None

    async def is_leader(self) -> bool:
        """Hold (or try to take) the leader lock; a lost connection means lost leadership."""
        conn = self._leader_conn
        if conn is not None and not conn.closed:
            try:
                await conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                await conn.close()
        self._leader_conn = None
        try:
            conn = await psycopg.AsyncConnection.connect(
                db.management_conninfo(self._p.settings.database.url, self._p.settings.database, role="leader"),
                autocommit=True,
                row_factory=psycopg.rows.dict_row,
            )
        except psycopg.Error as exc:
            log.warning("leader election: control database unreachable: %s", exc)
            return False
        if await db.try_advisory_lock(conn, LEADER_LOCK):
            self._leader_conn = conn
            log.info("this replica is now the scheduler leader")
            return True
        await conn.close()
        return False

    async def _run(self, name: str, job: Callable[[], Awaitable[str]], leader_only: bool) -> None:
        if leader_only and not await self.is_leader():
            return
        stats = self.stats[name]
        started = time.perf_counter()
        stats.runs += 1
        stats.last_started = time.time()
        try:
            outcome = await job()
        except Exception as exc:
            stats.failures += 1
            stats.last_error = str(exc)
            log.exception("job %s failed after %.2fs", name, time.perf_counter() - started)
            return
        stats.last_duration = time.perf_counter() - started
        stats.last_success = time.time()
        stats.last_error = None
        log.info("job %s: %s (%.2fs)", name, outcome, stats.last_duration)
