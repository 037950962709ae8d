"""Rate limiter on a real Redis: one count shared by instances, atomic under concurrency, expiring keys,
and a dead Redis failing fast with a 503 instead of hanging a request.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from controlplane.auth.batched_limit import BatchedLimiter
from controlplane.auth.ratelimit import LimiterUnavailable, RateLimiter, RedisCounter, counter_from_url
from tests.processes import free_port

WINDOW = 3600


@pytest.fixture
def now() -> float:
    """The frozen clock of one test (taken when it starts), so a window boundary can never fall mid-test."""
    return time.time()


@pytest.fixture
def key() -> str:
    """A key prefix no other test (or earlier run against a shared Redis) uses."""
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
async def make_counter(redis_url: str, now: float) -> AsyncIterator[Callable[[], RedisCounter]]:
    """Builds RedisCounters, each with its own client and connection pool (like separate instances)."""
    counters: list[RedisCounter] = []

    def make() -> RedisCounter:
        counters.append(RedisCounter(redis_url, clock=lambda: now))
        return counters[-1]

    yield make
    for counter in counters:
        await counter.close()


async def test_two_instances_share_one_count(make_counter: Callable[[], RedisCounter], key: str) -> None:
    first, second = RateLimiter(make_counter()), RateLimiter(make_counter())
    decisions = []
    for i in range(10):
        limiter = first if i % 2 == 0 else second
        decisions.append(await limiter.hit(key, limit=6, window=WINDOW))
    assert [d.allowed for d in decisions] == [True] * 6 + [False] * 4
    assert [d.remaining for d in decisions] == [5, 4, 3, 2, 1, 0, 0, 0, 0, 0]
    assert not (await first.check(key, limit=6, window=WINDOW)).allowed
    await second.clear(key, window=WINDOW)
    assert (await first.check(key, limit=6, window=WINDOW)).remaining == 6


async def test_concurrent_hits_allow_exactly_the_limit(make_counter: Callable[[], RedisCounter], key: str) -> None:
    limiters = [RateLimiter(make_counter()), RateLimiter(make_counter())]
    decisions = await asyncio.gather(*(limiters[i % 2].hit(key, limit=20, window=WINDOW) for i in range(50)))
    assert sum(d.allowed for d in decisions) == 20
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(20))


async def test_keys_expire_after_their_window(
    make_counter: Callable[[], RedisCounter], key: str, redis_url: str, now: float
) -> None:
    limiter = RateLimiter(make_counter())
    decision = await limiter.hit(key, limit=5, window=WINDOW)
    client = aioredis.Redis.from_url(redis_url)
    try:
        names = [name async for name in client.scan_iter(match=f"cardvault:rl:{key}:*")]
        assert names == [f"cardvault:rl:{key}:{WINDOW}:{int(now // WINDOW)}".encode()]
        assert 0 < await client.ttl(names[0]) <= decision.reset_after + 1
    finally:
        await client.aclose()


async def test_check_peeks_and_fail_counts(make_counter: Callable[[], RedisCounter], key: str) -> None:
    limiter = RateLimiter(make_counter())
    assert (await limiter.check(key, limit=2, window=WINDOW)).remaining == 2  # a missing key counts as zero
    assert [await limiter.fail(key, window=WINDOW) for _ in range(2)] == [1, 2]
    refused = await limiter.check(key, limit=2, window=WINDOW)
    assert not refused.allowed and refused.headers()["Retry-After"] == str(refused.reset_after)


async def _assert_fails_fast(call: Awaitable[object], within: float) -> None:
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable) as info:
        await asyncio.wait_for(call, timeout=30)  # a hang shows up as TimeoutError, not as passing
    assert time.monotonic() - started < within
    assert info.value.status == 503 and info.value.code == "rate_limiter_unavailable"


async def test_closed_port_gives_503_quickly(key: str) -> None:
    counter = counter_from_url(f"redis://127.0.0.1:{free_port()}/0")
    assert isinstance(counter, RedisCounter)
    try:
        await _assert_fails_fast(RateLimiter(counter).hit(key, limit=1, window=60), within=2)
        await _assert_fails_fast(RateLimiter(counter).check(key, limit=1, window=60), within=2)
    finally:
        await counter.close()


async def test_unresponsive_server_gives_503_within_the_timeouts(key: str) -> None:
    with socket.socket() as blackhole:  # accepts TCP connections (backlog) but never answers
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        counter = RedisCounter(f"redis://127.0.0.1:{blackhole.getsockname()[1]}/0")
        try:
            await _assert_fails_fast(RateLimiter(counter).hit(key, limit=1, window=60), within=5)
        finally:
            await counter.close()


async def test_batched_instances_allow_exactly_the_limit(make_counter: Callable[[], RedisCounter], key: str) -> None:
    limiters = [BatchedLimiter(make_counter()), BatchedLimiter(make_counter())]
    decisions = await asyncio.gather(*(limiters[i % 2].hit(key, limit=20, window=WINDOW) for i in range(50)))
    assert sum(d.allowed for d in decisions) == 20


async def test_batched_calls_reach_redis_at_the_flush(
    make_counter: Callable[[], RedisCounter], key: str, now: float
) -> None:
    counter = make_counter()
    limiter = BatchedLimiter(counter, clock=lambda: now)  # the clock stands still: no interval ends
    for _ in range(200):
        assert (await limiter.hit(key, limit=1_000_000, window=WINDOW)).allowed
    assert (await counter.peek(key, WINDOW))[0] == 1  # one round trip for 200 calls
    assert await limiter.flush() == 199
    assert (await make_counter().peek(key, WINDOW))[0] == 200  # what another instance sees
