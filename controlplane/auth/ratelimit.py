"""Per-tenant rate limiting and login throttling primitives (no HTTP here; routes/middleware use these).

Algorithm: **fixed windows aligned to the epoch**. A limit "``limit`` calls per ``window`` seconds" counts
calls in the window ``int(now // window)``; the count starts again from zero when the next window begins.
Why fixed windows rather than sliding logs or token buckets:

- one integer per (key, window) and one atomic ``INCR`` on Redis, so every control-plane instance sharing
  a Redis sees the same count without Lua scripts or read-modify-write races;
- keys expire on their own (TTL = rest of the window), so Redis needs no clean-up job;
- the reset time is trivially known, which gives exact ``RateLimit-Reset`` / ``Retry-After`` headers.

The known cost is a burst of up to ``2 * limit`` across a window boundary; for abuse protection and login
throttling that is acceptable. Window indices come from the caller's clock, so instances are assumed to be
NTP-synchronised; skew only moves the boundary by the skew.

Pieces: a :class:`Counter` (storage: :class:`MemoryCounter` for a single process and tests,
:class:`RedisCounter` for a fleet), a :class:`RateLimiter` turning counts into :class:`Decision` values,
and :func:`counter_from_url` choosing the storage from configuration.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from controlplane.errors import CardVaultError

Clock = Callable[[], float]


class LimiterUnavailable(CardVaultError):
    """The rate-limiter backend (Redis) cannot be reached; the request is refused rather than let through."""

    status = 503
    code = "rate_limiter_unavailable"


class Decision(msgspec.Struct, frozen=True):
    """Outcome of one rate-limit check, with what a client needs to back off correctly."""

    allowed: bool
    limit: int
    remaining: int  # calls left in the current window, never negative
    reset_after: int  # whole seconds until the current window ends, >= 1

    def headers(self) -> dict[str, str]:
        """IETF draft ``RateLimit-*`` headers, plus ``Retry-After`` when the call was refused."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_after),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_after)
        return headers

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """``headers()`` as an ASGI response start message carries them (lower-case names, bytes); built
        for every tenant API response, so without a detour through ``str``."""
        headers = [
            (b"ratelimit-limit", b"%d" % self.limit),
            (b"ratelimit-remaining", b"%d" % self.remaining),
            (b"ratelimit-reset", b"%d" % self.reset_after),
        ]
        if not self.allowed:
            headers.append((b"retry-after", b"%d" % self.reset_after))
        return headers


class Counter(Protocol):
    """Storage of per-key counts in fixed, epoch-aligned windows of ``window`` seconds.

    Each method returning a tuple gives ``(count, seconds until the current window ends, >= 1)``.
    """

    async def incr(self, key: str, window: int, amount: int = 1) -> tuple[int, int]:
        """Atomically add ``amount`` to the current window's count and return it."""
        ...

    async def peek(self, key: str, window: int) -> tuple[int, int]:
        """The current window's count, without counting."""
        ...

    async def reset(self, key: str, window: int) -> None:
        """Forget the current window's count (e.g. after a successful login)."""
        ...

    async def close(self) -> None:
        """Release connections; the counter is not used afterwards."""
        ...


def window_position(now: float, window: int) -> tuple[int, int]:
    """(index of the window containing ``now``, whole seconds until it ends, at least 1)."""
    if window < 1:
        raise ValueError(f"window must be at least 1 second, got {window}")
    index = int(now // window)
    return index, max(1, math.ceil((index + 1) * window - now))


class MemoryCounter:
    """In-process :class:`Counter` for a single instance and for tests (``clock`` is injectable).

    Counts are grouped per window length: ``{window: (index, {key: count})}``. When a window length's
    index moves on, its whole bucket is replaced, so expired counts are dropped in O(1) amortised time
    without ever scanning, and memory holds only current windows (one bucket per window length in use,
    which is a handful of configured policies). No ``await`` happens inside a method, so each one is
    atomic with respect to other tasks on the event loop.
    """

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._buckets: dict[int, tuple[int, dict[str, int]]] = {}

    def __len__(self) -> int:
        """Number of counts held (for tests and metrics)."""
        return sum(len(counts) for _, counts in self._buckets.values())

    def _current(self, window: int) -> tuple[dict[str, int], int]:
        index, reset_after = window_position(self._clock(), window)
        bucket = self._buckets.get(window)
        if bucket is None or bucket[0] != index:
            bucket = (index, {})  # the previous window is over: drop all its counts at once
            self._buckets[window] = bucket
        return bucket[1], reset_after

    async def incr(self, key: str, window: int, amount: int = 1) -> tuple[int, int]:
        counts, reset_after = self._current(window)
        counts[key] = count = counts.get(key, 0) + amount
        return count, reset_after

    async def peek(self, key: str, window: int) -> tuple[int, int]:
        counts, reset_after = self._current(window)
        return counts.get(key, 0), reset_after

    async def reset(self, key: str, window: int) -> None:
        counts, _ = self._current(window)
        counts.pop(key, None)

    async def close(self) -> None:
        self._buckets.clear()


class RedisCounter:
    """:class:`Counter` in Redis, shared by every control-plane instance using the same server.

    Keys are ``cardvault:rl:{key}:{window}:{index}`` and expire one second after their window ends.
    The client fails fast (1 s timeouts, one immediate retry for a stale pooled connection) and its pool
    is bounded; any Redis failure becomes :class:`LimiterUnavailable` (503) so callers fail closed.
    """

    PREFIX = "cardvault:rl"

    def __init__(self, url: str, *, clock: Clock = time.time, timeout: float = 1.0, max_connections: int = 32) -> None:
        self._clock = clock
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,  # wait at most this long for a free pooled connection
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),  # redis-py's default retries with backoff for seconds
            decode_responses=True,
        )
        self._redis = aioredis.Redis.from_pool(pool)  # the client owns (and closes) the pool

    def _key(self, key: str, window: int) -> tuple[str, int]:
        index, reset_after = window_position(self._clock(), window)
        return f"{self.PREFIX}:{key}:{window}:{index}", reset_after

    async def incr(self, key: str, window: int, amount: int = 1) -> tuple[int, int]:
        name, reset_after = self._key(key, window)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:  # MULTI ... EXEC
                pipe.incrby(name, amount)
                pipe.expire(name, reset_after + 1)
                count, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable("rate limiter backend is unavailable") from exc
        return int(count), reset_after

    async def peek(self, key: str, window: int) -> tuple[int, int]:
        name, reset_after = self._key(key, window)
        try:
            value = await self._redis.get(name)
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable("rate limiter backend is unavailable") from exc
        return int(value or 0), reset_after

    async def reset(self, key: str, window: int) -> None:
        name, _ = self._key(key, window)
        try:
            await self._redis.delete(name)
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable("rate limiter backend is unavailable") from exc

    async def close(self) -> None:
        await self._redis.aclose()


def counter_from_url(redis_url: str | None) -> Counter:
    """A :class:`RedisCounter` when a Redis URL is configured, else a process-local :class:`MemoryCounter`."""
    return RedisCounter(redis_url) if redis_url else MemoryCounter()


class RateLimiter:
    """Turns counts into decisions: ``limit`` calls per fixed ``window`` seconds for each key.

    Keys are chosen by the caller, e.g. ``f"tenant:{slug}:api"`` or ``f"login:{slug}:{email}"``.
    Login throttling: :meth:`check` before verifying a password, :meth:`fail` on a wrong one,
    :meth:`clear` on success, so only failures count against the limit.
    """

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    async def hit(self, key: str, limit: int, window: int) -> Decision:
        """Count this call; exactly ``limit`` calls per window are allowed."""
        count, reset_after = await self.counter.incr(key, window)
        return Decision(count <= limit, limit, max(0, limit - count), reset_after)

    async def check(self, key: str, limit: int, window: int) -> Decision:
        """Would one more call be allowed? Counts nothing."""
        count, reset_after = await self.counter.peek(key, window)
        return Decision(count < limit, limit, max(0, limit - count), reset_after)

    async def fail(self, key: str, window: int) -> int:
        """Count one failure (e.g. a wrong password); returns the failures so far in this window."""
        count, _ = await self.counter.incr(key, window)
        return count

    async def clear(self, key: str, window: int) -> None:
        """Forget the current window's count for ``key`` (e.g. after a successful login)."""
        await self.counter.reset(key, window)
