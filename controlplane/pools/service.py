"""TenantPools: at most ``capacity`` per-tenant ``AsyncConnectionPool``s and ``connection_budget`` connections.

Every tenant API request takes its connection here. The invariants:

- **Budget.** A pool may open as many connections as it has reserved budget for, from its creation
  until it is closed *and* its last checked-out connection is back (evicted pools that are still
  draining count too). A new pool reserves one connection (most tenants are cold: one request at a
  time); it grows its reservation one connection at a time, up to ``per_tenant_max``, when more of its
  requests are in flight than it has connections and the budget has room (otherwise they queue for
  the connections it has). A new pool is opened only when its reservation fits; otherwise least
  recently used pools are evicted (idle ones first, they close at once) and, if the remaining reservations
  belong to pools whose requests still hold connections, the creation waits for them (at most
  ``acquire_timeout``) and then fails with ``TenantUnavailable``. A closed connection waits for the
  server to end its session, so the servers never see more than ``connection_budget`` of our
  connections, without coordinating the pools' growth.
- **One pool per tenant.** Concurrent first requests for a tenant share one creation (single flight):
  ``conninfo_for`` is called once and one pool is opened.
- **Eviction never breaks a request.** An evicted or invalidated pool leaves the LRU at once (new requests
  get a new pool) but is closed in the background only when its in-flight requests are done.
- **Failures are fast and leave nothing behind.** A pool that cannot produce a connection (server down,
  refused, authentication failure) is dropped and closed, its waiters get ``TenantUnavailable``, and the
  next request tries a fresh pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import PoolClosed, PoolTimeout

from controlplane.db import AsyncConn
from controlplane.errors import ConfigError, TenantUnavailable
from controlplane.pools.connection import TenantConnection
from controlplane.pools.gate import GateExpired
from controlplane.pools.lifecycle import BUSY_RETRY_AFTER, Creation, Entry, PoolLifecycle
from controlplane.pools.models import PoolStats
from controlplane.settings import DatabaseSettings, PoolSettings

log = logging.getLogger(__name__)


class TenantPools(PoolLifecycle):
    """The bounded LRU of per-tenant connection pools (see the module docstring for the invariants).

    ``conninfo_for(tenant_id)`` gives the DSN of the tenant's own database with its own login role; it is
    called once per pool creation, so ``invalidate()`` after any change of it (suspend, delete, move,
    new password) makes the next request see the change. Everything lives in the instance.
    """

    def __init__(
        self, settings: PoolSettings, db: DatabaseSettings, conninfo_for: Callable[[uuid.UUID], Awaitable[str]]
    ) -> None:
        if settings.per_tenant_max < 1 or settings.capacity < 1:
            raise ConfigError("pool capacity and per-tenant pool size must be >= 1")
        if settings.per_tenant_max > settings.connection_budget:
            raise ConfigError(
                f"per-tenant pool size ({settings.per_tenant_max}) exceeds the connection budget "
                f"({settings.connection_budget}): not even one tenant pool would fit"
            )
        if settings.acquire_timeout <= 0:
            raise ConfigError("the pool acquire timeout must be > 0")
        self._settings = settings
        self._db = db
        self._conninfo_for = conninfo_for
        self._lru: OrderedDict[uuid.UUID, Entry] = OrderedDict()  # least recently used first
        self._retired: set[Entry] = set()  # out of the LRU, still holding budget
        self._creating: dict[uuid.UUID, Creation] = {}
        self._opening = 0  # reservations taken by pools being opened, not yet in the LRU
        self._slots = 0  # budget reserved by the pools in the LRU and the retired ones: sum of their sizes
        self._infos: dict[str, str] = {}  # DSN -> its conninfo with our settings (parsing costs per pool)
        self._freed = asyncio.Event()  # replaced on every notification; waiters keep the one they saw
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._hits = self._misses = self._evictions = self._invalidations = 0

    # -- public API -------------------------------------------------------------------------------

    def connection(self, tenant_id: uuid.UUID, *, autocommit: bool = False) -> AbstractAsyncContextManager[AsyncConn]:
        """A ``dict_row`` connection to the tenant's database, in a transaction unless ``autocommit``.

        Like ``pool.connection()``: the transaction is committed when the block exits normally and rolled
        back when it raises. ``autocommit``: every statement commits on its own (no BEGIN and COMMIT
        round trips; for requests that only read, see ``http.tenant_api``). Raises
        ``TenantUnavailable`` when no connection can be had within ``acquire_timeout`` (server down,
        pools saturated), when the connection is lost while in use (server gone, backend terminated) and
        whatever ``conninfo_for`` raises.
        """
        return _Lease(self, tenant_id, autocommit)

    async def _acquire(self, tenant_id: uuid.UUID, autocommit: bool) -> tuple[Entry, TenantConnection]:
        entry = await self._checkout(tenant_id)
        try:
            if entry.in_flight > entry.size and entry.served:
                await self._grow(entry)
            conn = await self._getconn(entry)
        except BaseException:
            self._checkin(entry)
            raise
        entry.held += 1
        entry.served = True
        if conn.autocommit is not autocommit:  # set per checkout: a pooled connection is always idle here
            try:
                await conn.set_autocommit(autocommit)
            except BaseException:
                await self._release(entry, conn)
                raise
        return entry, conn

    async def _release(self, entry: Entry, conn: TenantConnection) -> None:
        # Stamped here, not by a pool ``reset`` callback: one makes psycopg_pool return every
        # connection through its worker task, a scheduling round per request.
        conn.returned_at = time.monotonic()
        try:
            await entry.pool.putconn(conn)
        finally:
            entry.held -= 1
            entry.gate.give()
            self._checkin(entry)

    def _lost(self, entry: Entry, exc: psycopg.OperationalError) -> TenantUnavailable:
        """The connection broke under a request: its siblings probably died with it (server restart), so
        the next request gets a new pool."""
        if self._lru.get(entry.tenant_id) is entry:
            del self._lru[entry.tenant_id]
            self._retire(entry)
        error = TenantUnavailable(
            "lost the connection to the tenant database", retry_after=self._retry_after_unreachable()
        )
        error.__cause__ = exc
        return error

    async def invalidate(self, tenant_id: uuid.UUID) -> None:
        """Drop the tenant's pool now; it is closed once its in-flight connections come back."""
        creation = self._creating.get(tenant_id)
        if creation is not None:
            creation.stale = True
        entry = self._lru.pop(tenant_id, None)
        if entry is not None:
            self._invalidations += 1
            log.info("tenant pool %s invalidated", tenant_id)
            self._retire(entry)

    def stats(self) -> PoolStats:
        """Counters and gauges of all pools, including evicted ones still draining."""
        pools = opened = idle = 0
        waiting = sum(c.waiters for c in self._creating.values())  # for their pool to be made
        in_use = 0
        for entry in [*self._lru.values(), *self._retired]:
            in_use += entry.held
            if entry.closed:
                opened += entry.held  # closed pool: only the connections still checked out remain
                continue
            pools += 1
            measures = entry.pool.get_stats()
            opened += max(measures.get("pool_size", 0), entry.held)
            idle += measures.get("pool_available", 0)
            waiting += measures.get("requests_waiting", 0) + len(entry.gate)
        return PoolStats(
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            invalidations=self._invalidations,
            open_pools=pools,
            connections_open=opened,
            connections_in_use=in_use,
            connections_idle=idle,
            requests_waiting=waiting,
            budget=self._settings.connection_budget,
            capacity=self._settings.capacity,
        )

    def is_open(self, tenant_id: uuid.UUID) -> bool:
        """Whether the tenant has a pool in the LRU (the next request would be a hit)."""
        return tenant_id in self._lru

    async def close(self) -> None:
        """Close every pool now (application shutdown); later requests get ``TenantUnavailable``."""
        self._closed = True
        for creation in self._creating.values():
            creation.stale = True
        while self._lru:
            self._retire(self._lru.popitem(last=False)[1])
        for entry in list(self._retired):
            self._start_close(entry)  # shutting down: do not wait for in-flight requests
        self._notify()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- taking and returning a pool ----------------------------------------------------------------

    async def _checkout(self, tenant_id: uuid.UUID) -> Entry:
        """The tenant's pool, counted as in flight (so it is not closed under the request)."""
        entry = self._lru.get(tenant_id)
        if entry is not None and not self._closed:
            self._hits += 1
            self._lru.move_to_end(tenant_id)
            entry.in_flight += 1
            return entry
        self._misses += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.acquire_timeout
        while True:
            if self._closed:
                raise TenantUnavailable("tenant connections are shutting down", retry_after=BUSY_RETRY_AFTER)
            entry = self._lru.get(tenant_id)
            if entry is not None:
                self._lru.move_to_end(tenant_id)
                entry.in_flight += 1
                return entry
            entry = await self._await_creation(tenant_id)
            if entry is not None:
                return entry
            # The pool made for us was invalidated before we could use it: take a fresh one.
            if loop.time() >= deadline:
                raise TenantUnavailable("the tenant's pool keeps being invalidated", retry_after=BUSY_RETRY_AFTER)

    async def _await_creation(self, tenant_id: uuid.UUID) -> Entry | None:
        """The pool being created for the tenant, already counted in flight for us; None if it was stale.

        Counting happens in the creating task, before any waiter resumes: otherwise a fresh, still idle
        pool could be evicted and closed by another creation before its requests get to it.
        """
        creation = self._creating.get(tenant_id)
        if creation is None:
            creation = self._creating[tenant_id] = Creation()
            creation.task = self._spawn(self._create(tenant_id, creation), f"tenant-pool-create-{tenant_id}")
        task = creation.task
        assert task is not None
        creation.waiters += 1
        try:
            entry = await asyncio.shield(task)
        except BaseException:
            if creation.counted:  # cancelled just after the pool was handed over
                self._checkin(task.result())
            else:
                creation.waiters -= 1
            raise
        return entry if creation.counted else None

    def _checkin(self, entry: Entry) -> None:
        entry.in_flight -= 1
        if entry.retired and entry.in_flight == 0:
            if entry.closed:
                self._forget(entry)
            else:
                self._start_close(entry)

    async def _getconn(self, entry: Entry) -> TenantConnection:
        # A request whose turn must wait (all connections busy: ``pools.gate``) waits at most acquire_timeout;
        # inside the pool, its own timeout and the connection check's (``_check_if_idle``) bound the wait.
        # No timer per request: the gate has one, psycopg_pool starts one only when a request must wait in
        # its queue. _fail() ends every wait at once, at the gate or inside (after a connection check: a
        # cancellation, turned here into TenantUnavailable).
        gate = entry.gate
        if not gate.take():
            try:
                await gate.wait()
            except GateExpired:
                if entry.held:
                    raise _busy() from None
                # Nobody holds a connection, yet no turn came: those inside getconn cannot connect.
                self._fail(entry)
                raise self._unreachable() from None
        try:
            return await entry.pool.getconn()
        except BaseException as exc:
            gate.give()  # (a request that got its connection gives its turn back in _release)
            if isinstance(exc, asyncio.CancelledError):
                task = asyncio.current_task()
                if task is None or task not in entry.woken or task.uncancel():
                    raise  # cancelled by someone else (too)
            elif isinstance(exc, PoolTimeout):
                if entry.held:
                    raise _busy() from None
                # Nothing checked out, yet nothing handed out in acquire_timeout: the pool cannot connect.
            elif not isinstance(exc, PoolClosed):  # PoolClosed: failed (dropped as unable to connect) or closing
                raise
        finally:
            if entry.checking:  # (rare: a connection idle for check_after_idle was checked)
                task = asyncio.current_task()
                entry.checking.discard(task)
                entry.woken.discard(task)
        if entry.held == 0:
            self._fail(entry)
        raise self._unreachable()


def _busy() -> TenantUnavailable:
    return TenantUnavailable("all of the tenant's connections are busy", retry_after=BUSY_RETRY_AFTER)


class _Lease:
    """``TenantPools.connection()``: a class rather than a generator-based context manager, because it
    runs twice in every tenant request (entering and leaving a generator costs more than these calls)."""

    __slots__ = ("_autocommit", "_conn", "_entry", "_pools", "_tenant_id")

    def __init__(self, pools: TenantPools, tenant_id: uuid.UUID, autocommit: bool) -> None:
        self._pools = pools
        self._tenant_id = tenant_id
        self._autocommit = autocommit

    async def __aenter__(self) -> AsyncConn:
        self._entry, self._conn = await self._pools._acquire(self._tenant_id, self._autocommit)
        return self._conn

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        conn = self._conn
        try:
            failure = exc if isinstance(exc, psycopg.OperationalError) else None
            if conn.pgconn.transaction_status == pq.TransactionStatus.IDLE:
                pass  # no transaction: autocommit, or no statement ran (commit and rollback would do nothing)
            elif exc_type is None:
                try:
                    await conn.commit()
                except psycopg.OperationalError as commit_failure:
                    failure = commit_failure
            else:
                try:
                    await conn.rollback()
                except Exception as rollback_failure:  # what went wrong first is what the caller hears
                    log.debug("rollback of a failed tenant request failed: %s", rollback_failure)
            if failure is not None and (conn.broken or conn.closed):
                raise self._pools._lost(self._entry, failure)
            if failure is not None and failure is not exc:
                raise failure  # an error of the commit itself (say, a timeout): the connection is fine
        finally:
            await self._pools._release(self._entry, conn)
