"""BatchedLimiter: calls reach the shared count in batches far from the limit, one by one near it."""

from __future__ import annotations

import pytest

from controlplane.auth.batched_limit import BatchedLimiter
from controlplane.auth.ratelimit import LimiterUnavailable, MemoryCounter

WINDOW = 3600


class FakeClock:
    def __init__(self, now: float = 1_000_800.0) -> None:  # 1,200 s into an hour window
        self.now = now

    def __call__(self) -> float:
        return self.now


class SharedCounter(MemoryCounter):
    """The shared count (Redis in production), counting the round trips made to it; ``down`` fails them."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.trips = 0
        self.down = False

    async def incr(self, key: str, window: int, amount: int = 1) -> tuple[int, int]:
        self.trips += 1
        if self.down:
            raise LimiterUnavailable("rate limiter backend is unavailable")
        return await super().incr(key, window, amount)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def shared(clock: FakeClock) -> SharedCounter:
    return SharedCounter(clock)


def instance(shared: SharedCounter, clock: FakeClock) -> BatchedLimiter:
    return BatchedLimiter(shared, interval=0.25, margin=0.1, exact_below=100, clock=clock)


async def test_far_from_the_limit_one_round_trip_per_interval(shared: SharedCounter, clock: FakeClock) -> None:
    limiter = instance(shared, clock)
    decisions = [await limiter.hit("t", limit=100_000, window=WINDOW) for _ in range(500)]
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions[:3]] == [99_999, 99_998, 99_997]  # its own calls are counted
    assert shared.trips == 1  # the first call learns the shared count; the rest wait for the interval
    assert (await shared.peek("t", WINDOW))[0] == 1
    clock.now += 0.25
    await limiter.hit("t", limit=100_000, window=WINDOW)
    assert shared.trips == 2 and (await shared.peek("t", WINDOW))[0] == 501


async def test_near_the_limit_two_instances_allow_exactly_the_limit(shared: SharedCounter, clock: FakeClock) -> None:
    first, second = instance(shared, clock), instance(shared, clock)
    decisions = [await (first if i % 2 == 0 else second).hit("t", limit=50, window=WINDOW) for i in range(60)]
    assert [d.allowed for d in decisions] == [True] * 50 + [False] * 10
    assert [d.remaining for d in decisions[:50]] == list(range(49, -1, -1))
    assert shared.trips == 60  # within exact_below of the limit: every call is added at once


async def test_batched_instances_are_exact_by_the_time_they_reach_the_limit(
    shared: SharedCounter, clock: FakeClock
) -> None:
    first, second = instance(shared, clock), instance(shared, clock)
    allowed = 0
    for i in range(1_200):
        clock.now += 0.01  # 100 calls a second over both: an interval holds 25 calls, the margin 100
        allowed += (await (first if i % 2 == 0 else second).hit("t", limit=1_000, window=WINDOW)).allowed
    assert allowed == 1_000
    assert shared.trips < 1_200 - 150  # the first ~900 went in batches


async def test_flush_adds_what_idle_keys_hold_and_forgets_finished_windows(
    shared: SharedCounter, clock: FakeClock
) -> None:
    limiter = instance(shared, clock)
    for _ in range(40):
        await limiter.hit("t", limit=100_000, window=WINDOW)
    assert (await shared.peek("t", WINDOW))[0] == 1
    assert await limiter.flush() == 39
    assert (await shared.peek("t", WINDOW))[0] == 40
    assert await limiter.flush() == 0
    await limiter.hit("t", limit=100_000, window=WINDOW)
    clock.now += WINDOW  # the next hour: its pending call counted for an hour that is over
    assert await limiter.flush() == 0


async def test_a_new_window_starts_from_zero(shared: SharedCounter, clock: FakeClock) -> None:
    limiter = instance(shared, clock)
    for _ in range(3):
        await limiter.hit("t", limit=3, window=WINDOW)
    assert not (await limiter.hit("t", limit=3, window=WINDOW)).allowed
    clock.now += WINDOW
    assert (await limiter.hit("t", limit=3, window=WINDOW)).remaining == 2


async def test_calls_that_could_not_be_added_are_added_later(shared: SharedCounter, clock: FakeClock) -> None:
    limiter = instance(shared, clock)
    for _ in range(10):
        await limiter.hit("t", limit=100_000, window=WINDOW)  # 1 added, 9 pending
    shared.down = True
    clock.now += 0.25
    with pytest.raises(LimiterUnavailable):
        await limiter.hit("t", limit=100_000, window=WINDOW)  # the caller (ApiCalls) admits it anyway
    shared.down = False
    clock.now += 0.25
    decision = await limiter.hit("t", limit=100_000, window=WINDOW)
    assert (await shared.peek("t", WINDOW))[0] == 12
    assert decision.remaining == 100_000 - 12
