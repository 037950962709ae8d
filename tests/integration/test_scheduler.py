"""The scheduler with two instances on one control database: one leader runs the leader jobs, every
instance runs its own jobs, and when the leader dies (its database session is killed, as a crash or a
network loss would) the other takes over within one interval. Jobs keep their last success time,
duration and failures, and log one outcome line per run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import psycopg
import pytest

from controlplane.platform import Platform
from controlplane.scheduler.service import Scheduler
from tests.conftest import eventually

INTERVAL = 0.2


@pytest.fixture
async def two(platform: Platform) -> AsyncIterator[tuple[Scheduler, Scheduler, dict[str, list[str]]]]:
    runs: dict[str, list[str]] = {"leader": [], "instance": []}
    schedulers = (Scheduler(platform), Scheduler(platform))
    for name, scheduler in zip(("one", "two"), schedulers, strict=True):

        async def leader_job(name: str = name) -> str:
            runs["leader"].append(name)
            return f"ran on {name}"

        async def instance_job(name: str = name) -> str:
            runs["instance"].append(name)
            return "counted"

        scheduler.add_leader_job("tick", leader_job, INTERVAL)
        scheduler.add_instance_job("local", instance_job, INTERVAL)
        scheduler.start()
    try:
        yield schedulers[0], schedulers[1], runs
    finally:
        for scheduler in schedulers:
            await scheduler.stop()


async def test_one_leader_runs_leader_jobs_and_every_instance_its_own(
    two: tuple[Scheduler, Scheduler, dict[str, list[str]]],
) -> None:
    one, other, runs = two
    await eventually(lambda: len(runs["leader"]) >= 6, "six leader runs")
    assert len(set(runs["leader"])) == 1, runs["leader"]  # always the same instance
    await eventually(lambda: {"one", "two"} <= set(runs["instance"]), "both instances run their own job")
    leaders = [await s.is_leader() for s in (one, other)]
    assert sorted(leaders) == [False, True]


async def test_the_other_instance_takes_over_when_the_leader_dies(
    two: tuple[Scheduler, Scheduler, dict[str, list[str]]], control_dsn: str
) -> None:
    one, other, runs = two
    await eventually(lambda: len(runs["leader"]) >= 2, "the leader runs")
    first = runs["leader"][-1]
    # Kill the leader's session, as a crashed process or a lost network would end it.
    with psycopg.connect(control_dsn, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND pid <> pg_backend_pid()"
        ).fetchall()
    assert killed, "no backend held the leader lock"
    # The dead leader must stop too: take it out, as its process would be gone.
    await (one if first == "one" else other).stop()
    before = len(runs["leader"])
    survivor = "two" if first == "one" else "one"
    await eventually(
        lambda: survivor in runs["leader"][before:], f"{survivor} takes over the leader job", within=5 + 3 * INTERVAL
    )


async def test_job_stats_and_one_outcome_line_per_run(platform: Platform, caplog: pytest.LogCaptureFixture) -> None:
    scheduler = Scheduler(platform)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("second run fails")
        await asyncio.sleep(0.01)
        return f"run {calls} fine"

    scheduler.add_leader_job("flaky", flaky, INTERVAL)
    caplog.set_level(logging.INFO, logger="controlplane.scheduler.service")
    scheduler.start()

    def outcomes() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("job flaky")]

    try:
        await eventually(lambda: len(outcomes()) >= 3, "three runs logged")
    finally:
        await scheduler.stop()
    stats = scheduler.stats["flaky"]
    assert stats.runs >= 3 and stats.failures == 1 and stats.last_error is None
    assert stats.last_success is not None and stats.last_duration is not None and stats.last_duration >= 0.01
    first = outcomes()[:3]
    assert first[0].startswith("job flaky: run 1 fine"), first
    assert first[1].startswith("job flaky failed"), first
    assert first[2].startswith("job flaky: run 3 fine"), first


def test_a_disabled_interval_adds_no_job(platform: Platform) -> None:
    scheduler = Scheduler(platform)

    async def job() -> str:
        return "never"

    scheduler.add_leader_job("off", job, 0)
    assert "off" not in scheduler.stats
