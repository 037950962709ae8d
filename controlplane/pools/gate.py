"""The queue in front of one tenant pool: at most as many requests inside ``pool.getconn()`` as the pool
has connections, the rest waiting here in arrival order, each for at most ``patience`` seconds.

Why not let psycopg_pool queue them: its waiting path (a client object, a condition and ``wait_for``,
which starts a task and a timer per wait) cost a hot tenant ~27 µs of CPU per request when 64 requests
shared 2 connections (126 against 99 µs per pooled ``SELECT 1``; README "Routing"). A waiter here is one
future, handed its turn by the request that leaves. Every waiter has the same patience and they are
served in arrival order, so the first in the queue always has the earliest deadline: one timer per
gate, armed for the first waiter, expires them all; no timer per request. Inside the pool a request
then finds a connection ready (or one being opened for it), so psycopg_pool's own queue stays empty.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable


class GateExpired(Exception):
    """No turn came within the gate's patience."""


class Gate:
    """Turns (one per connection the pool may hold): ``take`` one without waiting, or ``wait`` for one;
    every turn taken is given back with ``give``. ``widen`` adds a turn (the pool grew); ``fail`` ends
    every wait with an error (the pool cannot connect)."""

    __slots__ = ("_free", "_patience", "_queue", "_timer")

    def __init__(self, turns: int, patience: float) -> None:
        self._free = turns
        self._patience = patience
        self._queue: collections.deque[tuple[float, asyncio.Future[None]]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Requests waiting for a turn."""
        return len(self._queue)

    def take(self) -> bool:
        """A turn now, if one is free and nobody waits for one (first come, first served)."""
        if self._free > 0 and not self._queue:
            self._free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Wait for a turn (after ``take`` said no): ``GateExpired`` after ``patience`` seconds, or what
        ``fail`` gives. Cancelled, it takes no turn."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.append((loop.time() + self._patience, fut))
        if self._timer is None:
            self._timer = loop.call_at(self._queue[0][0], self._expire)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.cancelled():  # leave the queue, if nobody has skipped it yet (O(n): only cancelled waits)
                for item in self._queue:
                    if item[1] is fut:
                        self._queue.remove(item)
                        break
            elif fut.exception() is None:
                self.give()  # handed a turn in the same moment it was cancelled: pass it on
            raise

    def give(self) -> None:
        """Give a turn back: to the first request waiting, else to the free ones."""
        queue = self._queue
        while queue:
            fut = queue.popleft()[1]
            if not fut.done():  # (a cancelled one has not left yet)
                fut.set_result(None)
                return
        self._free += 1

    def widen(self) -> None:
        """One more turn (the pool may hold one more connection)."""
        self.give()

    def fail(self, error: Callable[[], BaseException]) -> None:
        """End every wait now with ``error()``."""
        while self._queue:
            fut = self._queue.popleft()[1]
            if not fut.done():
                fut.set_exception(error())

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        queue = self._queue
        now = loop.time()
        while queue and queue[0][0] <= now:
            fut = queue.popleft()[1]
            if not fut.done():
                fut.set_exception(GateExpired())
        if queue:
            self._timer = loop.call_at(queue[0][0], self._expire)
