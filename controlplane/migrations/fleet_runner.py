"""Run one job (typically a schema upgrade) over many tenant databases at once.

``run_fleet_async`` awaits ``work(target)`` for at most ``concurrency`` targets at a time, in this event
loop; ``run_fleet`` does the same with a synchronous ``work`` in a private thread pool (or the executor
given). A target whose work raises fails alone: its outcome carries the error text and the others carry
on. Each outcome is handed to ``on_outcome`` (the caller records it in the registry ledger) as soon as
it is known, and to an optional ``Progress`` that shows the run live. Nothing here is global: every run
owns its pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TextIO

__all__ = ["Outcome", "Progress", "Target", "run_fleet", "run_fleet_async"]


@dataclasses.dataclass(frozen=True)
class Target:
    """One tenant database to work on."""

    tenant_id: str
    slug: str
    #: libpq DSN; may hold a password, so it stays out of ``repr()`` (and thus out of logs).
    dsn: str = dataclasses.field(repr=False)


@dataclasses.dataclass
class Outcome:
    """What ``work`` did for one target: the revision it returned, or the error it raised."""

    target: Target
    ok: bool
    revision: str | None
    error: str | None
    seconds: float


async def _attempt(work: Callable[[Target], Awaitable[str]], target: Target) -> Outcome:
    """Run ``work`` for one target; any exception becomes a failed outcome."""
    started = time.perf_counter()
    try:
        revision = await work(target)
    except Exception as exc:
        text = str(exc).strip()
        error = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        return Outcome(target, False, None, error, time.perf_counter() - started)
    return Outcome(target, True, revision, None, time.perf_counter() - started)


async def run_fleet(
    targets: Sequence[Target],
    work: Callable[[Target], str],
    *,
    concurrency: int,
    on_outcome: Callable[[Outcome], Awaitable[None]] | None = None,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> list[Outcome]:
    """``run_fleet_async`` for a synchronous ``work``, run in a private thread pool of ``concurrency``
    threads unless ``executor`` is given (the caller owns it; a process pool needs a picklable ``work``)."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    loop = asyncio.get_running_loop()
    own_executor = executor is None
    pool = executor or ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fleet")

    async def call(target: Target) -> str:
        return await loop.run_in_executor(pool, work, target)

    try:
        return await run_fleet_async(targets, call, concurrency=concurrency, on_outcome=on_outcome, progress=progress)
    finally:
        if own_executor:
            pool.shutdown(wait=False, cancel_futures=True)


async def run_fleet_async(
    targets: Sequence[Target],
    work: Callable[[Target], Awaitable[str]],
    *,
    concurrency: int,
    on_outcome: Callable[[Outcome], Awaitable[None]] | None = None,
    progress: Progress | None = None,
) -> list[Outcome]:
    """Await ``work`` over ``targets``, at most ``concurrency`` at a time; outcomes in target order.

    An exception from ``on_outcome`` (say, the ledger cannot be written) stops the run: no new target
    is started and the exception propagates. So does cancellation. Either way the ``work`` calls
    already running are finished first (a migration is never abandoned half-way), but their outcomes
    are not reported.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if progress is not None:
        progress.start(len(targets))
    outcomes: list[Outcome | None] = [None] * len(targets)
    queue = iter(enumerate(targets))
    running: set[asyncio.Future[Outcome]] = set()

    async def worker() -> None:
        # Workers share one iterator: each takes the next target when it is free, so a slow
        # database holds up one worker only.
        for index, target in queue:
            attempt = asyncio.ensure_future(_attempt(work, target))
            running.add(attempt)
            attempt.add_done_callback(running.discard)
            # Shielded: cancelling the run must not interrupt a migration half-way.
            outcome = await asyncio.shield(attempt)
            outcomes[index] = outcome
            if progress is not None:
                progress.record(outcome)
            if on_outcome is not None:
                await on_outcome(outcome)

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(targets)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await asyncio.gather(*running, return_exceptions=True)
        raise
    if progress is not None:
        progress.finish()
    return [outcome for outcome in outcomes if outcome is not None]


class Progress:
    """Live progress of a fleet run: done, failed, remaining, rate and ETA.

    On a terminal the status line is redrawn in place (``\\r``) at most ``redraw`` times a second;
    elsewhere (logs, CI) a line is printed every ``every`` targets or ``interval`` seconds, whichever
    comes first. ``finish()`` prints a summary either way.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        label: str = "migrate",
        every: int = 100,
        interval: float = 5.0,
        redraw: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.every = max(1, every)
        self.interval = interval
        self.min_redraw = 1.0 / redraw
        self.clock = clock
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self.total = self.ok = self.failed = 0
        self._started = self._last_output = clock()
        self._width = 0

    @property
    def done(self) -> int:
        return self.ok + self.failed

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.done)

    def start(self, total: int) -> None:
        self.total, self.ok, self.failed = total, 0, 0
        self._started = self._last_output = self.clock()

    def record(self, outcome: Outcome) -> None:
        if outcome.ok:
            self.ok += 1
        else:
            self.failed += 1
        now = self.clock()
        if self.tty:
            if now - self._last_output >= self.min_redraw or self.remaining == 0:
                self._redraw(now)
        elif self.done % self.every == 0 or now - self._last_output >= self.interval:
            self._print(self.status(now))

    def finish(self) -> None:
        now = self.clock()
        if self.tty:
            self._redraw(now)
            self.stream.write("\n")
        elapsed = now - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        self._print(
            f"{self.label}: finished {self.done}/{self.total}: {self.ok} ok, {self.failed} failed"
            f" in {elapsed:.1f}s ({rate:.1f}/s)"
        )

    def status(self, now: float | None = None) -> str:
        """The one-line status, e.g. ``migrate 500/1000 (3 failed, 500 left) 41.2/s ETA 0:12``."""
        elapsed = (self.clock() if now is None else now) - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = _clock_time(self.remaining / rate) if rate > 0 else "?"
        return (
            f"{self.label} {self.done}/{self.total} ({self.failed} failed, {self.remaining} left)"
            f" {rate:.1f}/s ETA {eta}"
        )

    def _redraw(self, now: float) -> None:
        line = self.status(now)
        # Pad over the previous, possibly longer, line.
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)
        self._last_output = now

    def _print(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last_output = self.clock()


def _clock_time(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
