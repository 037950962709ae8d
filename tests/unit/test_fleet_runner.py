"""run_fleet and Progress: failures stay isolated, concurrency is bounded, progress is readable."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import pytest

from controlplane.migrations.fleet_runner import Outcome, Progress, Target, run_fleet, run_fleet_async


def targets(count: int) -> list[Target]:
    return [Target(tenant_id=f"id-{n}", slug=f"tenant-{n}", dsn=f"dbname=t_{n} password=pw{n}") for n in range(count)]


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class Ticker:
    """A clock that advances by ``step`` seconds every time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def test_one_failure_fails_alone() -> None:
    fleet = targets(6)
    recorded: list[Outcome] = []

    def work(target: Target) -> str:
        if target.slug == "tenant-3":
            raise RuntimeError('relation "cards" does not exist')
        if target.slug == "tenant-5":
            time.sleep(0.05)  # its outcome is timed from the start of its own work
        return "0002"

    async def on_outcome(outcome: Outcome) -> None:
        recorded.append(outcome)

    outcomes = await run_fleet(fleet, work, concurrency=2, on_outcome=on_outcome)

    assert [o.target for o in outcomes] == fleet  # in target order, whatever the finishing order
    failed = [o for o in outcomes if not o.ok]
    assert [o.target.slug for o in failed] == ["tenant-3"]
    assert failed[0].revision is None
    assert failed[0].error == 'RuntimeError: relation "cards" does not exist'
    assert all(o.ok and o.revision == "0002" and o.error is None for o in outcomes if o not in failed)
    slow = next(o for o in outcomes if o.target.slug == "tenant-5")
    assert slow.seconds >= 0.05, slow
    assert sorted(recorded, key=lambda o: o.target.tenant_id) == sorted(outcomes, key=lambda o: o.target.tenant_id)


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_concurrency_bound_is_respected(concurrency: int) -> None:
    lock = threading.Lock()
    running = peak = 0

    def work(target: Target) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.03)
        with lock:
            running -= 1
        return "head"

    started = time.perf_counter()
    outcomes = await run_fleet(targets(12), work, concurrency=concurrency)
    elapsed = time.perf_counter() - started

    assert all(o.ok for o in outcomes)
    assert peak == concurrency
    # 12 calls of 30 ms in waves of `concurrency`: parallel, but never more than allowed.
    assert elapsed >= 0.03 * 12 / concurrency * 0.9


async def test_empty_fleet_and_bad_concurrency() -> None:
    assert await run_fleet([], lambda target: "x", concurrency=4) == []
    with pytest.raises(ValueError, match="concurrency"):
        await run_fleet(targets(1), lambda target: "x", concurrency=0)


async def test_on_outcome_failure_stops_the_run() -> None:
    started: list[str] = []

    def work(target: Target) -> str:
        started.append(target.slug)
        return "head"

    async def on_outcome(outcome: Outcome) -> None:
        raise ConnectionError("registry unavailable")

    with pytest.raises(ConnectionError, match="registry unavailable"):
        await run_fleet(targets(20), work, concurrency=2, on_outcome=on_outcome)
    assert len(started) <= 2


async def test_async_work_runs_in_the_loop_bounded_and_isolated() -> None:
    running = peak = 0

    async def work(target: Target) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        if target.slug == "tenant-4":
            raise RuntimeError("lock timeout")
        return "head"

    outcomes = await run_fleet_async(targets(10), work, concurrency=3)

    assert peak == 3
    assert [o.target for o in outcomes] == targets(10)
    assert [o.target.slug for o in outcomes if not o.ok] == ["tenant-4"]
    assert [o.error for o in outcomes if not o.ok] == ["RuntimeError: lock timeout"]


async def test_a_cancelled_run_finishes_the_work_in_flight() -> None:
    """Cancelling (Ctrl-C) never abandons a migration half-way: the ones running complete, no new one starts."""
    started: list[str] = []
    finished: list[str] = []

    async def work(target: Target) -> str:
        started.append(target.slug)
        await asyncio.sleep(0.1)
        finished.append(target.slug)
        return "head"

    run = asyncio.create_task(run_fleet_async(targets(10), work, concurrency=2))
    await asyncio.sleep(0.03)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    assert started == ["tenant-0", "tenant-1"]
    assert finished == started  # already done when the cancellation propagated


async def test_a_ledger_failure_stops_async_work_after_the_work_in_flight() -> None:
    finished: list[str] = []

    async def work(target: Target) -> str:
        await asyncio.sleep(0.05 if target.slug == "tenant-0" else 0.1)
        finished.append(target.slug)
        return "head"

    async def on_outcome(outcome: Outcome) -> None:
        raise ConnectionError("registry unavailable")

    with pytest.raises(ConnectionError):
        await run_fleet_async(targets(10), work, concurrency=2, on_outcome=on_outcome)
    assert finished == ["tenant-0", "tenant-1"]


def test_target_repr_hides_the_dsn() -> None:
    target = targets(1)[0]
    assert "pw0" not in repr(target)
    assert "pw0" not in repr(Outcome(target, True, "0001", None, 0.1))


async def test_progress_lines_when_not_a_tty() -> None:
    stream = io.StringIO()
    progress = Progress(stream, every=4, interval=3600)

    def work(target: Target) -> str:
        if target.slug == "tenant-5":
            raise ValueError("boom")
        return "head"

    await run_fleet(targets(10), work, concurrency=2, progress=progress)

    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0].startswith("migrate 4/10 (")
    assert lines[1].startswith("migrate 8/10 (1 failed, 2 left)")
    assert "ETA" in lines[0]
    assert lines[-1].startswith("migrate: finished 10/10: 9 ok, 1 failed in ")
    assert len(lines) == 3
    assert (progress.done, progress.failed, progress.remaining) == (10, 1, 0)


def test_progress_prints_on_interval_too() -> None:
    stream = io.StringIO()
    progress = Progress(stream, every=1000, interval=5.0, clock=Ticker(2.0))
    progress.start(100)
    outcome = Outcome(targets(1)[0], True, "head", None, 0.0)
    for _ in range(6):
        progress.record(outcome)
    # Clock reads advance 2 s each: a line roughly every 5 s, not per target.
    lines = stream.getvalue().splitlines()
    assert 1 <= len(lines) <= 3
    assert lines[0].startswith("migrate ")


def test_progress_redraws_one_line_on_a_tty() -> None:
    stream = FakeTTY()
    progress = Progress(stream, clock=Ticker(0.01), redraw=10)
    progress.start(50)
    outcome = Outcome(targets(1)[0], True, "head", None, 0.0)
    for _ in range(50):
        progress.record(outcome)
    progress.finish()

    text = stream.getvalue()
    redraws = text.count("\r")
    # 50 outcomes over ~0.5-1 s of fake time: about 10 redraws a second, not one per outcome.
    assert 3 <= redraws <= 15
    assert "\r" + "migrate 50/50 (0 failed, 0 left)" in text
    assert text.endswith("\n")
    assert text.splitlines()[-1].startswith("migrate: finished 50/50: 50 ok, 0 failed")


def test_progress_eta() -> None:
    progress = Progress(io.StringIO(), clock=Ticker(0.0))
    progress.start(1000)
    progress.ok = 250
    progress._started = 0.0
    assert progress.status(now=10.0) == "migrate 250/1000 (0 failed, 750 left) 25.0/s ETA 0:30"
    assert progress.status(now=0.0).endswith("ETA ?")
