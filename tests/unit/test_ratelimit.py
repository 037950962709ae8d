"""Rate limiter on the in-process counter: fixed windows, decisions, headers, pruning (with a fake clock)."""

from __future__ import annotations

import pytest

from controlplane.auth.ratelimit import Decision, MemoryCounter, RateLimiter, counter_from_url


class FakeClock:
    """A settable clock; ``limiter.hit`` never sleeps, so tests move time by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_040.5)  # 20.5 s into a 60 s window (which starts at 1_000_020 = 16667 * 60)


@pytest.fixture
def counter(clock: FakeClock) -> MemoryCounter:
    return MemoryCounter(clock)


@pytest.fixture
def limiter(counter: MemoryCounter) -> RateLimiter:
    return RateLimiter(counter)


async def test_exactly_limit_calls_allowed_then_refused(limiter: RateLimiter) -> None:
    decisions = [await limiter.hit("t1", limit=3, window=60) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert {d.reset_after for d in decisions} == {40}  # ceil(60 - 20.5)
    assert decisions[2].headers() == {"RateLimit-Limit": "3", "RateLimit-Remaining": "0", "RateLimit-Reset": "40"}
    assert decisions[3] == Decision(allowed=False, limit=3, remaining=0, reset_after=40)
    assert decisions[3].headers() == {
        "RateLimit-Limit": "3",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "40",
        "Retry-After": "40",
    }
    assert not (await limiter.hit("t1", limit=3, window=60)).allowed  # remaining never goes negative
    assert (await limiter.hit("t1", limit=3, window=60)).remaining == 0


async def test_reset_after_is_whole_seconds_and_at_least_one(limiter: RateLimiter, clock: FakeClock) -> None:
    clock.now = 1_000_079.9  # 0.1 s before the window ends
    assert (await limiter.hit("k", limit=1, window=60)).reset_after == 1
    clock.now = 1_000_080.0  # exactly at a boundary: a whole new window
    assert (await limiter.hit("k", limit=1, window=60)).reset_after == 60


async def test_new_window_resets_the_count(limiter: RateLimiter, clock: FakeClock) -> None:
    for _ in range(2):
        await limiter.hit("t1", limit=2, window=60)
    assert not (await limiter.hit("t1", limit=2, window=60)).allowed
    clock.now += 39.4  # 59.9 s into the window: still refused
    assert not (await limiter.hit("t1", limit=2, window=60)).allowed
    clock.now += 0.6  # next window
    decision = await limiter.hit("t1", limit=2, window=60)
    assert decision == Decision(allowed=True, limit=2, remaining=1, reset_after=60)


async def test_keys_and_window_lengths_are_independent(limiter: RateLimiter) -> None:
    assert (await limiter.hit("a", limit=1, window=60)).allowed
    assert not (await limiter.hit("a", limit=1, window=60)).allowed
    assert (await limiter.hit("b", limit=1, window=60)).allowed
    assert (await limiter.hit("a", limit=1, window=3600)).allowed  # another policy on the same key


async def test_check_does_not_count(limiter: RateLimiter) -> None:
    for _ in range(5):
        decision = await limiter.check("t1", limit=2, window=60)
        assert decision.allowed and decision.remaining == 2
    await limiter.hit("t1", limit=2, window=60)
    assert (await limiter.check("t1", limit=2, window=60)).remaining == 1
    await limiter.hit("t1", limit=2, window=60)
    refused = await limiter.check("t1", limit=2, window=60)
    assert not refused.allowed and refused.remaining == 0 and "Retry-After" in refused.headers()


async def test_login_throttling_counts_failures_and_clear_forgets_them(limiter: RateLimiter) -> None:
    key = "login:acme:alice@example.com"
    for expected in (1, 2, 3):
        assert (await limiter.check(key, limit=3, window=900)).allowed
        assert await limiter.fail(key, window=900) == expected
    assert not (await limiter.check(key, limit=3, window=900)).allowed  # locked out
    await limiter.clear(key, window=900)
    assert (await limiter.check(key, limit=3, window=900)).remaining == 3


async def test_expired_windows_are_pruned(counter: MemoryCounter, clock: FakeClock) -> None:
    limiter = RateLimiter(counter)
    for window_number in range(1000):  # many windows, fresh keys in each
        for i in range(10):
            await limiter.hit(f"tenant-{window_number}-{i}", limit=5, window=1)
            await limiter.hit(f"tenant-{window_number}-{i}", limit=5, window=60)
        clock.now += 1
    assert len(counter) <= 10 + 10 * 60  # only the current 1 s window and the current 60 s window
    clock.now += 60
    await limiter.check("x", limit=1, window=1)
    await limiter.check("x", limit=1, window=60)
    assert len(counter) == 0


async def test_window_must_be_positive(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError, match="window"):
        await limiter.hit("k", limit=1, window=0)


async def test_counter_from_url_without_url_is_in_memory() -> None:
    counter = counter_from_url(None)
    assert isinstance(counter, MemoryCounter)
    await counter.close()


@pytest.mark.parametrize("allowed", [True, False])
def test_raw_headers_are_the_headers_as_sent(allowed: bool) -> None:
    decision = Decision(allowed, 1000, 0 if not allowed else 12, 3599)
    as_sent = [(name.lower().encode(), value.encode()) for name, value in decision.headers().items()]
    assert decision.raw_headers() == as_sent
    assert ((b"retry-after", b"3599") in as_sent) is not allowed
