"""TenantPools against real PostgreSQL: the connection budget, draining, stats, close and outages.

Tenants, ``Directory`` and the ``pg_stat_activity`` helpers are in this package's ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import psycopg
import pytest

from controlplane.errors import ConfigError, TenantUnavailable
from controlplane.pools.models import APPLICATION_NAME
from controlplane.pools.service import TenantPools
from controlplane.settings import DatabaseSettings, PoolSettings
from tests.conftest import eventually
from tests.harness import LocalClusterHandle
from tests.integration.pools.pool_support import (
    Directory,
    MakePools,
    TenantDb,
    backend_pid,
    count_connections,
    create_tenant_db,
    drop_tenant_db,
)

# -- budget ---------------------------------------------------------------------------------------


def test_a_tenant_pool_larger_than_the_budget_is_a_config_error() -> None:
    async def nowhere(tenant_id: uuid.UUID) -> str:
        raise AssertionError("not called")

    with pytest.raises(ConfigError, match="exceeds the connection budget"):
        TenantPools(PoolSettings(connection_budget=3, per_tenant_max=4), DatabaseSettings(), nowhere)


async def test_the_server_never_sees_more_connections_than_the_budget(
    make_pools: MakePools, tenants: list[TenantDb], pg_admin_dsn: str
) -> None:
    budget = 6
    pools = make_pools(Directory(tenants), capacity=10, connection_budget=budget, per_tenant_max=2)
    seen: list[int] = []
    done = asyncio.Event()

    async def sample() -> None:
        async with await psycopg.AsyncConnection.connect(pg_admin_dsn, autocommit=True) as admin:
            names = [t.name for t in tenants]
            while not done.is_set():
                cur = await admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND datname = ANY(%s)",
                    (APPLICATION_NAME, names),
                )
                row = await cur.fetchone()
                seen.append(int(row[0]) if row else 0)
                assert pools.stats().connections_open <= budget
                await asyncio.sleep(0.005)

    async def worker(tenant: TenantDb) -> int:
        served = 0
        for _ in range(4):
            async with pools.connection(tenant.id) as conn:
                await conn.execute("SELECT pg_sleep(0.01)")
                served += 1
        return served

    sampler = asyncio.create_task(sample())
    try:
        results = await asyncio.gather(*(worker(t) for t in tenants for _ in range(4)))
    finally:
        done.set()
        await sampler
    assert sum(results) == len(tenants) * 4 * 4  # every request was served
    assert max(seen) <= budget, f"server saw {max(seen)} connections, budget {budget}"
    assert max(seen) >= 2  # the sampler did see the load
    stats = pools.stats()
    assert stats.evictions >= len(tenants) - budget
    assert stats.open_pools <= budget and stats.connections_open <= budget and stats.budget == budget


async def test_a_cold_pool_reserves_one_connection_so_more_tenants_fit_the_budget(
    make_pools: MakePools, tenants: list[TenantDb], pg_admin_dsn: str
) -> None:
    cold = tenants[:4]
    pools = make_pools(Directory(tenants), capacity=10, connection_budget=len(cold), per_tenant_max=2)
    for tenant in cold:
        await backend_pid(pools, tenant)
    stats = pools.stats()
    assert stats.evictions == 0 and stats.open_pools == len(cold)
    assert all(pools.is_open(t.id) for t in cold)
    assert await count_connections(pg_admin_dsn, cold) == len(cold)  # one each


async def test_a_busy_pool_grows_to_per_tenant_max_only_while_the_budget_has_room(
    make_pools: MakePools, tenants: list[TenantDb], pg_admin_dsn: str
) -> None:
    hot, others = tenants[0], tenants[1:3]
    pools = make_pools(Directory(tenants), capacity=10, connection_budget=4, per_tenant_max=3)

    async def hold(tenant: TenantDb) -> int:
        async with pools.connection(tenant.id) as conn:
            cur = await conn.execute("SELECT pg_backend_pid() AS pid FROM pg_sleep(0.3)")
            row = await cur.fetchone()
            assert row is not None
            return int(row["pid"])

    # A burst of first requests is served by the pool's first connection, one by one.
    assert len(set(await asyncio.gather(*(hold(hot) for _ in range(3))))) == 1
    # Room in the budget: once it serves, three requests at once get three connections.
    assert len(set(await asyncio.gather(*(hold(hot) for _ in range(3))))) == 3
    await pools.invalidate(hot.id)
    await eventually(lambda: pools.stats().connections_open == 0, "the hot pool closed")
    # Two cold tenants take two of the four connections: the hot one grows to two and no further; its
    # third request waits for one of them instead of evicting anybody.
    for tenant in [*others, hot]:
        await backend_pid(pools, tenant)
    pids = await asyncio.gather(*(hold(hot) for _ in range(3)))
    assert len(set(pids)) == 2
    stats = pools.stats()
    assert stats.evictions == 0 and all(pools.is_open(t.id) for t in others)
    assert stats.connections_open <= 4 and await count_connections(pg_admin_dsn, tenants) <= 4


async def test_the_transaction_mode_is_set_for_every_checkout(make_pools: MakePools, tenants: list[TenantDb]) -> None:
    pools = make_pools(Directory(tenants))
    tenant = tenants[0]

    async def status(*, autocommit: bool) -> tuple[int, bool, psycopg.pq.TransactionStatus]:
        async with pools.connection(tenant.id, autocommit=autocommit) as conn:
            cur = await conn.execute("SELECT pg_backend_pid() AS pid")
            row = await cur.fetchone()
            assert row is not None
            return int(row["pid"]), conn.autocommit, conn.info.transaction_status

    intrans, idle = psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.IDLE
    first = await status(autocommit=True)
    assert first[1:] == (True, idle)  # a read: no transaction around the statement
    # The same connection, handed to a request that writes: in a transaction again.
    assert await status(autocommit=False) == (first[0], False, intrans)
    assert await status(autocommit=True) == (first[0], True, idle)


async def test_a_new_pool_waits_for_a_draining_one_then_gives_up(
    make_pools: MakePools, tenants: list[TenantDb]
) -> None:
    a, b = tenants[3], tenants[4]
    pools = make_pools(Directory(tenants), capacity=5, connection_budget=1, per_tenant_max=1, acquire_timeout=0.3)
    async with pools.connection(a.id) as held:
        with pytest.raises(TenantUnavailable) as refused:
            await backend_pid(pools, b)  # a must go first, and its request is still running
        assert refused.value.retry_after >= 1
        assert refused.value.code == "tenant_unavailable"
        assert not pools.is_open(a.id) and not pools.is_open(b.id)
        await held.execute("SELECT 1")  # unharmed
    await backend_pid(pools, b)  # a drained and closed: b fits
    assert pools.is_open(b.id)


async def test_a_new_pool_is_served_as_soon_as_a_draining_one_is_done(
    make_pools: MakePools, tenants: list[TenantDb]
) -> None:
    a, b = tenants[3], tenants[4]
    pools = make_pools(Directory(tenants), capacity=5, connection_budget=1, per_tenant_max=1, acquire_timeout=10.0)
    async with pools.connection(a.id):
        request = asyncio.create_task(backend_pid(pools, b))
        await eventually(lambda: pools.stats().requests_waiting == 1, "b waits for budget")
        assert not request.done()
    await request
    assert pools.is_open(b.id) and not pools.is_open(a.id)
    assert pools.stats().evictions == 1


async def test_a_saturated_tenant_pool_is_busy_not_broken(make_pools: MakePools, tenants: list[TenantDb]) -> None:
    tenant = tenants[6]
    pools = make_pools(Directory(tenants), per_tenant_max=1, acquire_timeout=0.3)
    async with pools.connection(tenant.id) as held:
        with pytest.raises(TenantUnavailable, match="busy") as busy:
            await backend_pid(pools, tenant)
        assert busy.value.retry_after >= 1
        assert pools.is_open(tenant.id)  # a pool timeout under load does not drop the pool
        await held.execute("SELECT 1")
    await backend_pid(pools, tenant)
    assert pools.stats().misses == 1


# -- stats ----------------------------------------------------------------------------------------


async def test_stats_count_connections_in_use_idle_and_waiting(make_pools: MakePools, tenants: list[TenantDb]) -> None:
    tenant = tenants[5]
    pools = make_pools(Directory(tenants), per_tenant_max=1, connection_budget=7, capacity=3)
    empty = pools.stats()
    assert (empty.open_pools, empty.connections_open, empty.budget, empty.capacity) == (0, 0, 7, 3)
    async with pools.connection(tenant.id):
        stats = pools.stats()
        assert (stats.open_pools, stats.connections_open, stats.connections_in_use, stats.connections_idle) == (
            1,
            1,
            1,
            0,
        )
        second = asyncio.create_task(backend_pid(pools, tenant))
        await eventually(lambda: pools.stats().requests_waiting == 1, "the second request queues")
    await second
    stats = pools.stats()
    assert (stats.connections_open, stats.connections_in_use, stats.connections_idle) == (1, 0, 1)
    assert (stats.hits, stats.misses, stats.requests_waiting) == (1, 1, 0)


async def test_close_closes_every_pool_and_refuses_later_requests(
    make_pools: MakePools, tenants: list[TenantDb], pg_admin_dsn: str
) -> None:
    pools = make_pools(Directory(tenants))
    for tenant in tenants[:3]:
        await backend_pid(pools, tenant)
    assert await count_connections(pg_admin_dsn, tenants) == 3
    await pools.close()
    assert pools.stats().open_pools == 0
    await eventually(lambda: _zero(count_connections(pg_admin_dsn, tenants)), "no session is left")
    with pytest.raises(TenantUnavailable):
        await backend_pid(pools, tenants[0])


async def _zero(count: Awaitable[int]) -> bool:
    return await count == 0


# -- outages --------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_server_down_is_tenant_unavailable_and_recovers_when_it_is_back(
    make_pools: MakePools, extra_cluster: Callable[[], LocalClusterHandle]
) -> None:
    server = extra_cluster()
    tenant = create_tenant_db(server.dsn)
    directory = Directory([tenant])
    pools = make_pools(directory, connect_timeout=2.0, acquire_timeout=5.0)
    try:
        await backend_pid(pools, tenant)
        server.stop()

        # The pooled connection is dead and new ones are refused: fail, drop the pool.
        with pytest.raises(TenantUnavailable) as down:
            await backend_pid(pools, tenant)
        assert down.value.status == 503 and down.value.retry_after >= 1
        assert not pools.is_open(tenant.id)

        # A burst while the server is down: every request fails, no pool is left behind.
        lookups = directory.calls[tenant.id]
        results = await asyncio.gather(*(backend_pid(pools, tenant) for _ in range(10)), return_exceptions=True)
        assert all(isinstance(r, TenantUnavailable) and "unreachable" in r.detail for r in results), results
        assert directory.calls[tenant.id] == lookups + 1  # the burst shared one (failed) pool
        await eventually(lambda: pools.stats().open_pools == 0, "failed pools are closed")

        server.start()
        await backend_pid(pools, tenant)
        assert pools.is_open(tenant.id)
    finally:
        if not server.is_running():
            server.start()
        drop_tenant_db(server.dsn, tenant)


@pytest.mark.slow
async def test_a_request_checking_dead_connections_fails_when_the_pool_is_dropped_not_after_a_backoff(
    make_pools: MakePools, extra_cluster: Callable[[], LocalClusterHandle]
) -> None:
    """Both idle connections of a pool are dead (their server is gone): psycopg_pool's check fails on the
    first, at once on the second, and then it backs off (~1 s) before trying again, out of the queue its
    close() fails. When the pool is dropped as unable to connect (its replacement connection is refused,
    a few ms later), that request fails at once."""
    server = extra_cluster()
    tenant = create_tenant_db(server.dsn)
    pools = make_pools(Directory([tenant]), connect_timeout=1.0, acquire_timeout=30.0, check_after_idle=0.0)
    try:
        async with pools.connection(tenant.id), pools.connection(tenant.id):  # the pool grows to 2
            pass
        assert pools.stats().connections_idle == 2
        server.stop()
        started = time.monotonic()
        with pytest.raises(TenantUnavailable, match="unreachable"):
            await backend_pid(pools, tenant)
        assert time.monotonic() - started < 0.6  # not after the backoff (0.9 s at least), nor acquire_timeout
        assert not pools.is_open(tenant.id)
    finally:
        if not server.is_running():
            server.start()
        drop_tenant_db(server.dsn, tenant)
