"""How a tenant's pool comes and goes under the budget: its creation (one per tenant, after reserving one
connection of ``connection_budget`` or waiting for one), its growth (one connection at a time while the
budget has room), its eviction or invalidation, and its closing once its last request is done.
``PoolLifecycle`` is the base of ``TenantPools`` (``service``), which hands the connections out; the
invariants are in that module's docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from functools import partial
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from controlplane.errors import TenantUnavailable
from controlplane.pools.connection import TenantConnection, tenant_conninfo, via_pgbouncer
from controlplane.pools.gate import Gate
from controlplane.settings import DatabaseSettings, PoolSettings

log = logging.getLogger(__name__)

#: Seconds a pool keeps retrying a failed connection attempt in the background before it gives up; it
#: is then dropped and its waiters fail. Short on purpose: a fresh pool costs nothing, and a request
#: should learn within about this long (plus ``connect_timeout``) that its server is down.
RECONNECT_TIMEOUT = 1.0

#: ``Retry-After`` seconds when the pools are saturated (budget or a tenant's ``per_tenant_max``).
BUSY_RETRY_AFTER = 1


Pool = AsyncConnectionPool[TenantConnection]


class Entry:
    """One tenant's pool, its reservation of the budget and the requests using it."""

    __slots__ = (
        "checking",
        "closed",
        "closing",
        "gate",
        "held",
        "in_flight",
        "pool",
        "retired",
        "served",
        "size",
        "tenant_id",
        "woken",
    )

    def __init__(self, tenant_id: uuid.UUID, size: int, make_pool: Callable[[Entry], Pool], patience: float) -> None:
        self.tenant_id = tenant_id
        self.size = size  # budget reserved: the pool's max_size (grows up to per_tenant_max)
        self.pool = make_pool(self)  # its callbacks are bound to this entry
        self.in_flight = 0  # requests acquiring or holding one of its connections
        self.held = 0  # connections checked out
        self.served = False  # a request got a connection from it (it may grow from then on)
        self.retired = False  # out of the LRU: closes once in_flight drops to 0
        self.closing = False  # pool.close() started
        self.closed = False  # pool.close() done; the reservation goes once in_flight is 0 too
        self.gate = Gate(size, patience)  # one turn per connection: who may be inside pool.getconn()
        self.checking: set[asyncio.Task[Any]] = set()  # requests whose getconn checked a connection
        self.woken: set[asyncio.Task[Any]] = set()  # those of them _fail() has cancelled


def _sizes(entries: Iterable[Entry]) -> int:
    return sum(e.size for e in entries)


class Creation:
    """A pool being created for one tenant; concurrent first requests await the same task."""

    __slots__ = ("counted", "stale", "task", "waiters")

    def __init__(self) -> None:
        self.task: asyncio.Task[Entry] | None = None
        self.stale = False  # invalidated meanwhile: the new pool must not enter the LRU
        self.waiters = 0  # requests awaiting it
        self.counted = False  # the new pool was handed to them already counted in flight


class PoolLifecycle:
    """Creating, retiring and closing tenant pools within the budget (the base of ``TenantPools``)."""

    _settings: PoolSettings
    _db: DatabaseSettings
    _conninfo_for: Callable[[uuid.UUID], Awaitable[str]]
    _lru: OrderedDict[uuid.UUID, Entry]
    _retired: set[Entry]
    _creating: dict[uuid.UUID, Creation]
    _opening: int
    _slots: int
    _infos: dict[str, str]
    _freed: asyncio.Event
    _tasks: set[asyncio.Task[Any]]
    _closed: bool
    _evictions: int

    # -- creation and the budget --------------------------------------------------------------------

    async def _grow(self, entry: Entry) -> None:
        """One more connection for a pool with more requests in flight than connections, if the budget has
        room (otherwise they queue for the ones it has). Only once the pool has served a request: a burst of
        first requests is served by the first connection, one by one, rather than paying for more connects
        (a cold tenant's burst is usually over by the time a second connection would be open)."""
        if entry.size >= self._settings.per_tenant_max or entry.retired:
            return
        if self._reserved() >= self._settings.connection_budget:
            return
        entry.size += 1
        self._slots += 1
        await entry.pool.resize(0, entry.size)
        entry.gate.widen()

    async def _create(self, tenant_id: uuid.UUID, creation: Creation) -> Entry:
        try:
            info = self._conninfo(await self._conninfo_for(tenant_id))
            await self._reserve()
            try:
                entry = Entry(tenant_id, 1, partial(self._new_pool, info), self._settings.acquire_timeout)
            finally:
                self._opening -= 1
            self._slots += entry.size
            try:
                await entry.pool.open(wait=False)
            except BaseException:
                self._slots -= entry.size
                raise
            finally:
                self._notify()
            if creation.stale or self._closed:
                self._retire(entry)  # nobody uses it yet: closes at once; waiters take a fresh one
            else:
                entry.in_flight = creation.waiters
                creation.counted = True
                self._lru[tenant_id] = entry
                log.debug("tenant pool %s opened (%d in the LRU)", tenant_id, len(self._lru))
            return entry
        finally:
            if self._creating.get(tenant_id) is creation:
                del self._creating[tenant_id]

    def _conninfo(self, dsn: str) -> str:
        info = self._infos.get(dsn)
        if info is None:
            if len(self._infos) >= 2 * self._settings.capacity:
                self._infos.clear()  # credentials of evicted tenants, or changed ones: simply start over
            info = self._infos[dsn] = tenant_conninfo(dsn, self._db)
        return info

    def _new_pool(self, info: str, entry: Entry) -> Pool:
        return AsyncConnectionPool(
            info,
            connection_class=TenantConnection,
            kwargs={
                "row_factory": dict_row,
                "autocommit": False,
                "on_connect_error": partial(self._connect_failed, entry),
                # Server-side prepared statements live in a server session, which PgBouncer in transaction
                # mode may swap between two transactions: never prepare through it.
                **({"prepare_threshold": None} if via_pgbouncer(info) else {}),
            },
            # min_size=0: with thousands of tenants most pools are idle most of the time, and min_size
            # connections are never closed by max_idle; 0 lets an idle tenant's pool shrink to nothing
            # (server backends cost memory) at the price of one connect after an idle period.
            min_size=0,
            max_size=entry.size,
            # One worker: it only opens connections (one at a time: the pool grows one by one) and shrinks
            # the pool; two more would be two more tasks to start and stop with every cold tenant's pool.
            num_workers=1,
            open=False,
            name=f"tenant-{entry.tenant_id}",
            timeout=self._settings.acquire_timeout,
            max_idle=self._settings.idle_timeout,
            reconnect_timeout=RECONNECT_TIMEOUT,
            # Gave up reconnecting: drop the pool (and fail its waiters) rather than keep it half-alive.
            reconnect_failed=lambda _: self._fail(entry),
            # A connection killed by the server (pg_terminate_backend, restart) is replaced, not handed
            # out - but only connections idle for a while are checked: a round trip per request would
            # cost a hot tenant a tenth of its throughput, and a just-used connection is alive.
            check=partial(self._check_if_idle, entry),
        )

    async def _check_if_idle(self, entry: Entry, conn: TenantConnection) -> None:
        if time.monotonic() - conn.returned_at >= self._settings.check_after_idle:
            # The request checking it may sleep in psycopg_pool's check loop if the check fails, out of
            # the queue that close() fails: _fail() wakes it (see TenantPools._getconn).
            task = asyncio.current_task()
            if task is not None:
                entry.checking.add(task)
            # Bounded like a connect: a half-open connection to a vanished server would hang the check
            # (and its request). A check that fails or times out makes the pool drop the connection.
            async with asyncio.timeout(self._db.connect_timeout):
                await AsyncConnectionPool.check_connection(conn)

    async def _reserve(self) -> None:
        """Take budget and capacity for one more pool, evicting and then waiting (bounded) if needed."""
        need = 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.acquire_timeout
        while True:
            if self._closed:
                raise TenantUnavailable("tenant connections are shutting down", retry_after=BUSY_RETRY_AFTER)
            self._make_room(need)
            if self._reserved() + need <= self._settings.connection_budget and (
                len(self._lru) + self._opening < self._settings.capacity
            ):
                self._opening += 1
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TenantUnavailable(
                    f"connection budget ({self._settings.connection_budget}) is held by requests in flight",
                    retry_after=BUSY_RETRY_AFTER,
                )
            freed = self._freed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await freed.wait()

    def _make_room(self, need: int) -> None:
        """Evict LRU pools so that ``need`` more fits once the evicted pools are closed."""
        budget = self._settings.connection_budget
        while self._lru and len(self._lru) + self._opening >= self._settings.capacity:
            self._evict(next(iter(self._lru.values())))
        # Idle pools first (least recently used first): they close at once, nobody waits on them.
        while self._reserved() - _sizes(e for e in self._retired if e.in_flight == 0) + need > budget:
            victim = next((e for e in self._lru.values() if e.in_flight == 0), None)
            if victim is None:
                break
            self._evict(victim)
        # Then busy ones, so that the new pool fits once their requests are done.
        while self._lru and self._reserved() - _sizes(self._retired) + need > budget:
            self._evict(next(iter(self._lru.values())))

    def _reserved(self) -> int:
        """Budget held by pools in the LRU, retired pools not yet closed and drained, and openings.

        O(1) (this runs for every waiter on every wake-up).
        """
        return self._slots + self._opening

    # -- retiring and closing ---------------------------------------------------------------------

    def _evict(self, entry: Entry) -> None:
        del self._lru[entry.tenant_id]
        self._evictions += 1
        log.debug("tenant pool %s evicted (in flight: %d)", entry.tenant_id, entry.in_flight)
        self._retire(entry)

    def _retire(self, entry: Entry) -> None:
        """Out of the LRU (already removed by the caller); closed once its requests are done."""
        entry.retired = True
        self._retired.add(entry)
        if entry.in_flight == 0:
            self._start_close(entry)

    def _fail(self, entry: Entry) -> None:
        """Drop a pool that cannot connect and close it now, failing its waiters."""
        if self._lru.get(entry.tenant_id) is entry:
            del self._lru[entry.tenant_id]
        if not entry.retired:
            log.warning("tenant pool %s cannot connect: dropped", entry.tenant_id)
            entry.retired = True
            self._retired.add(entry)
        self._start_close(entry)
        # Its waiters fail now: those at the gate at once, those in psycopg_pool's queue by close(), and
        # those that checked a connection (psycopg_pool's check loop may sleep between attempts, out of
        # that queue) by a cancellation that _getconn turns into this error.
        entry.gate.fail(self._unreachable)
        for task in entry.checking - entry.woken:
            entry.woken.add(task)
            task.cancel()

    def _unreachable(self) -> TenantUnavailable:
        return TenantUnavailable("tenant database unreachable", retry_after=self._retry_after_unreachable())

    def _retry_after_unreachable(self) -> int:
        return max(1, math.ceil(self._db.connect_timeout))

    def _connect_failed(self, entry: Entry) -> None:
        """A connection attempt failed: if the pool has nothing to give, its waiters fail now."""
        if entry.held == 0 and not entry.pool.get_stats().get("pool_available", 0):
            self._fail(entry)

    def _start_close(self, entry: Entry) -> None:
        if not entry.closing:
            entry.closing = True
            self._spawn(self._close_entry(entry), f"tenant-pool-close-{entry.tenant_id}")

    async def _close_entry(self, entry: Entry) -> None:
        try:
            await entry.pool.close()
        except Exception:
            log.warning("closing tenant pool %s failed", entry.tenant_id, exc_info=True)
        finally:
            entry.closed = True
            self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        """Release the reservation of a closed pool whose last connection is back."""
        if entry.closed and entry.in_flight == 0 and entry in self._retired:
            self._retired.discard(entry)
            self._slots -= entry.size
            self._notify()

    def _notify(self) -> None:
        """Wake every creation waiting for budget or capacity."""
        self._freed.set()
        self._freed = asyncio.Event()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the requests awaiting it report it
