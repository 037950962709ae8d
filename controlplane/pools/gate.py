"""The queue in front of one tenant pool: at most as many requests inside ``pool.getconn()`` as the pool
has connections, the rest waiting here in arrival order.

Why not let psycopg_pool queue them: its waiting path (a client object, a condition and ``wait_for``,
which starts a task and a timer per wait) cost a hot tenant ~27 µs of CPU per request when 64 requests
shared 2 connections (126 against 99 µs per pooled ``SELECT 1``; README "Routing"). A waiter here is one
future, handed its turn by the request that leaves. Inside the pool a request then finds a connection
ready (or one being opened for it), so psycopg_pool's own queue stays empty.
"""

from __future__ import annotations

import asyncio
import collections


class Gate:
    """Turns (one per connection the pool may hold): ``take`` one without waiting, or ``wait`` for one;
    every turn taken is given back with ``give``. ``widen`` adds a turn (the pool grew)."""

    __slots__ = ("_free", "_queue")

    def __init__(self, turns: int) -> None:
        self._free = turns
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()

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
        """Wait for a turn (after ``take`` said no). Cancelled (the caller's timeout), it takes none."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.give()  # handed a turn in the same moment it was cancelled: pass it on
            else:
                self._queue.remove(fut)  # O(n), but only a wait that times out gets here
            raise

    def give(self) -> None:
        """Give a turn back: to the first request waiting, else to the free ones."""
        if self._queue:
            self._queue.popleft().set_result(None)
        else:
            self._free += 1

    def widen(self) -> None:
        """One more turn (the pool may hold one more connection)."""
        self.give()
