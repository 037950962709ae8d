"""The tenant API's hourly call limit without a round trip to the shared counter on every call.

With ``CARDVAULT_REDIS_URL`` every instance counts a tenant's calls in one Redis key, and an ``INCR`` per
call put a network round trip on every tenant API request. ``BatchedLimiter`` adds a key's calls to the
shared count in batches instead:

- a call that leaves its key far from the limit (more than ``margin`` of it, and at least
  ``exact_below`` calls, left) is counted here and answered from the last shared count plus the calls
  not added yet; the shared count is brought up to date (one ``INCRBY``) at most every ``interval``
  seconds per key;
- near the limit every call adds itself and whatever is pending, and is answered from the shared count
  as it then is: exactly as ``RateLimiter.hit``.

So a hot key costs one round trip per ``interval`` per instance while far from its limit. What another
instance has not added yet is missing from this one's view: at most what it counted in one ``interval``
(plus what an idle key still holds, until ``flush``, which the ``flush_api_calls`` job runs). The
``margin`` is there so that such calls are added before the limit is near. The login throttle, which
must fail closed and count exactly, keeps ``RateLimiter``.
"""

from __future__ import annotations

import time

from controlplane.auth.ratelimit import Clock, Counter, Decision, window_position

#: Keys (tenants) held at most; past it all batches are dropped (calls they still held never reach the shared
#: count: other instances undercount by them, this one forgets them).
MAX_KEYS = 100_000


class _Batch:
    __slots__ = ("due", "index", "pending", "shared", "window")

    def __init__(self, window: int, index: int) -> None:
        self.window = window  # its length (seconds)
        self.index = index  # the window this batch counts
        self.shared = 0  # the shared count as last seen (this instance's added calls included)
        self.pending = 0  # calls counted here and not added to the shared count yet
        self.due = 0.0  # when the pending calls are added at the latest (clock time)


class BatchedLimiter:
    """``hit(key, limit, window)`` as ``RateLimiter.hit`` answers it, with the shared counter spared."""

    def __init__(
        self,
        counter: Counter,
        *,
        interval: float = 0.25,
        margin: float = 0.1,
        exact_below: int = 100,
        clock: Clock = time.time,
    ) -> None:
        self._counter = counter
        self._interval = interval
        self._margin = margin
        self._exact_below = exact_below
        self._clock = clock
        self._batches: dict[str, _Batch] = {}

    async def hit(self, key: str, limit: int, window: int) -> Decision:
        """Count this call; exactly ``limit`` calls per window are allowed once the key is near its limit."""
        now = self._clock()
        index, reset_after = window_position(now, window)
        batch = self._batches.get(key)
        if batch is None or batch.index != index or batch.window != window:  # a new window: start over
            if batch is None and len(self._batches) >= MAX_KEYS:
                self._batches.clear()
            batch = self._batches[key] = _Batch(window, index)  # the old one's pending calls count no more
        estimate = batch.shared + batch.pending + 1
        if now < batch.due and limit - estimate >= max(self._exact_below, limit * self._margin):
            batch.pending += 1
            return Decision(True, limit, limit - estimate, reset_after)
        adding, batch.pending = batch.pending + 1, 0
        batch.due = now + self._interval
        # If the counter is down this call is added next time: ApiCalls admits it all the same.
        count, reset_after = await self._add(key, batch, adding)
        count += batch.pending  # counted here meanwhile
        return Decision(count <= limit, limit, max(0, limit - count), reset_after)

    async def flush(self) -> int:
        """Add every pending call to the shared count (keys gone idle hold theirs until then); how many."""
        now = self._clock()
        added = 0
        for key, batch in list(self._batches.items()):
            if int(now // batch.window) != batch.index:  # its window is over: nothing left to add to
                del self._batches[key]
            elif batch.pending:
                adding, batch.pending = batch.pending, 0
                await self._add(key, batch, adding)
                added += adding
        return added

    async def _add(self, key: str, batch: _Batch, adding: int) -> tuple[int, int]:
        """Add ``adding`` calls to the shared count: ``(count, reset_after)``. If it fails they stay pending."""
        try:
            count, reset_after = await self._counter.incr(key, batch.window, adding)
        except BaseException:
            batch.pending += adding
            raise
        batch.shared = max(batch.shared, count)  # replies to concurrent additions may come out of order
        return count, reset_after
