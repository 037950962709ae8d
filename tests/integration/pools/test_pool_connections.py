"""TenantPools against real PostgreSQL: connections, single flight, LRU, eviction and invalidation.

Tenants, ``Directory`` and the ``pg_stat_activity`` helpers are in this package's ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from psycopg import conninfo, sql

from controlplane.errors import TenantNotFound
from controlplane.pools.models import APPLICATION_NAME
from tests.conftest import eventually
from tests.integration.pools.pool_support import (
    Directory,
    MakePools,
    TenantDb,
    backend_pid,
    count_connections,
    server_connections,
)

# -- connections ----------------------------------------------------------------------------------


async def test_connection_is_the_tenants_own_dict_row_transaction_with_timeouts(
    make_pools: MakePools, tenants: list[TenantDb]
) -> None:
    tenant = tenants[0]
    pools = make_pools(Directory(tenants))
    async with pools.connection(tenant.id) as conn:
        assert conn.autocommit is False
        cur = await conn.execute(
            "SELECT current_user AS usr, current_database() AS db, current_setting('application_name') AS app,"
            " current_setting('statement_timeout') AS st"
        )
        assert await cur.fetchone() == {"usr": tenant.name, "db": tenant.name, "app": APPLICATION_NAME, "st": "30s"}
        assert "connect_timeout=3" in conn.info.dsn
        await conn.execute("CREATE TABLE pool_probe (note text)")
        await conn.execute("INSERT INTO pool_probe VALUES ('committed on exit')")

    with pytest.raises(RuntimeError, match="boom"):
        async with pools.connection(tenant.id) as conn:
            await conn.execute("INSERT INTO pool_probe VALUES ('rolled back')")
            raise RuntimeError("boom")

    async with pools.connection(tenant.id) as conn:
        cur = await conn.execute("SELECT note FROM pool_probe")
        assert await cur.fetchall() == [{"note": "committed on exit"}]
        await conn.execute("DROP TABLE pool_probe")


async def test_a_burst_of_first_requests_creates_one_pool(
    make_pools: MakePools, tenants: list[TenantDb], pg_admin_dsn: str
) -> None:
    tenant = tenants[0]
    directory = Directory(tenants, delay=0.05)  # the registry lookup takes a while: the burst piles up
    pools = make_pools(directory, per_tenant_max=3)

    async def request() -> int:
        async with pools.connection(tenant.id) as conn:
            cur = await conn.execute("SELECT 1 AS one")
            row = await cur.fetchone()
            assert row is not None
            await asyncio.sleep(0.01)
            return int(row["one"])

    assert await asyncio.gather(*(request() for _ in range(50))) == [1] * 50
    stats = pools.stats()
    assert directory.calls[tenant.id] == 1
    assert stats.open_pools == 1
    assert stats.hits + stats.misses == 50 and stats.misses >= 1
    assert stats.evictions == 0
    assert 1 <= stats.connections_open <= 3
    assert await count_connections(pg_admin_dsn, tenants) <= 3


async def test_requests_for_a_busy_tenant_take_its_connections_in_arrival_order(
    make_pools: MakePools, tenants: list[TenantDb]
) -> None:
    tenant = tenants[1]
    pools = make_pools(Directory(tenants), per_tenant_max=1)
    served: list[int] = []

    async def request(i: int) -> None:
        async with pools.connection(tenant.id, autocommit=True) as conn:
            served.append(i)
            await conn.execute("SELECT 1")

    async with pools.connection(tenant.id) as held:
        queued = []
        for i in range(5):
            queued.append(asyncio.create_task(request(i)))
            await eventually(lambda n=i + 1: pools.stats().requests_waiting == n, f"request {i} queues")
        await held.execute("SELECT 1")
        assert served == []
    await asyncio.gather(*queued)
    assert served == [0, 1, 2, 3, 4]
    stats = pools.stats()
    assert (stats.connections_open, stats.connections_in_use, stats.requests_waiting) == (1, 0, 0)


async def test_a_connection_killed_by_the_server_is_not_handed_out(
    make_pools: MakePools, tenants: list[TenantDb], pg_admin_dsn: str
) -> None:
    tenant = tenants[1]
    pools = make_pools(Directory(tenants), per_tenant_max=1, check_after_idle=0.0)
    pid = await backend_pid(pools, tenant)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    assert await backend_pid(pools, tenant) != pid
    assert pools.stats().open_pools == 1  # same pool, fresh connection


# -- LRU, eviction, invalidation ----------------------------------------------------------------


async def test_lru_hits_move_a_tenant_to_the_front_and_the_oldest_is_evicted(
    make_pools: MakePools, tenants: list[TenantDb]
) -> None:
    a, b, c = tenants[:3]
    directory = Directory(tenants)
    pools = make_pools(directory, capacity=2)
    for tenant in (a, b, a, c):  # a is used again after b: b is the least recently used when c comes
        await backend_pid(pools, tenant)
    assert (pools.is_open(a.id), pools.is_open(b.id), pools.is_open(c.id)) == (True, False, True)
    stats = pools.stats()
    assert (stats.hits, stats.misses, stats.evictions, stats.invalidations) == (1, 3, 1, 0)
    assert stats.capacity == 2
    await eventually(lambda: pools.stats().open_pools == 2, "the evicted pool is closed")

    await backend_pid(pools, b)  # comes back with a new pool, evicting a (now the oldest)
    assert directory.calls[b.id] == 2
    assert (pools.is_open(a.id), pools.is_open(b.id), pools.is_open(c.id)) == (False, True, True)


async def test_eviction_never_breaks_a_request_holding_a_connection(
    make_pools: MakePools, tenants: list[TenantDb], pg_admin_dsn: str
) -> None:
    a, others = tenants[0], tenants[1:4]
    pools = make_pools(Directory(tenants), capacity=3)
    async with pools.connection(a.id) as held:
        cur = await held.execute("SELECT pg_backend_pid() AS pid")
        first = await cur.fetchone()
        assert first is not None
        for tenant in others:  # `capacity` other tenants push a out of the LRU
            await backend_pid(pools, tenant)
        assert not pools.is_open(a.id)
        assert pools.stats().evictions == 1
        assert pools.stats().open_pools == 4  # a is draining, not closed under the request
        await asyncio.sleep(0.05)  # give a background close every chance to (wrongly) happen
        cur = await held.execute("SELECT pg_backend_pid() AS pid, count(*) AS n FROM generate_series(1, 10)")
        assert await cur.fetchone() == {"pid": first["pid"], "n": 10}
        assert pools.stats().connections_in_use == 1
        assert [r["datname"] for r in await server_connections(pg_admin_dsn, [a])] == [a.name]

    async def a_closed() -> bool:
        return pools.stats().open_pools == 3 and not await server_connections(pg_admin_dsn, [a])

    await eventually(a_closed, "a's pool is closed once its connection is back")


async def test_invalidate_drops_the_pool_and_the_next_request_sees_new_credentials(
    make_pools: MakePools, tenants: list[TenantDb], fresh_tenant: TenantDb, pg_admin_dsn: str
) -> None:
    directory = Directory([*tenants, fresh_tenant])
    pools = make_pools(directory)
    old_pid = await backend_pid(pools, fresh_tenant)

    # The password changes (e.g. rotated by the control plane): the open pool still works from its
    # connections, the new DSN is only picked up after invalidate().
    new_password = uuid.uuid4().hex
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(fresh_tenant.name), sql.Literal(new_password))
        )
    directory.dsns[fresh_tenant.id] = conninfo.make_conninfo(fresh_tenant.dsn, password=new_password)
    async with pools.connection(fresh_tenant.id) as held:
        await pools.invalidate(fresh_tenant.id)
        assert not pools.is_open(fresh_tenant.id)
        await held.execute("SELECT 1")  # the request in flight is not broken
    new_pid = await backend_pid(pools, fresh_tenant)
    assert new_pid != old_pid
    assert directory.calls[fresh_tenant.id] == 2
    assert pools.stats().invalidations == 1

    async def only_new_session() -> bool:
        return [r["pid"] for r in await server_connections(pg_admin_dsn, [fresh_tenant])] == [new_pid]

    await eventually(only_new_session, "the invalidated pool's connections are closed")

    # Suspended / deleted: the lookup refuses, and after invalidate() so do requests.
    del directory.dsns[fresh_tenant.id]
    await backend_pid(pools, fresh_tenant)  # still served by the open pool until invalidated
    await pools.invalidate(fresh_tenant.id)
    with pytest.raises(TenantNotFound):
        await backend_pid(pools, fresh_tenant)
    assert not pools.is_open(fresh_tenant.id)
    assert pools.stats().invalidations == 2


async def test_invalidate_during_creation_keeps_the_stale_pool_out_of_the_lru(
    make_pools: MakePools, tenants: list[TenantDb]
) -> None:
    tenant = tenants[2]
    directory = Directory(tenants, delay=0.1)
    pools = make_pools(directory)
    request = asyncio.create_task(backend_pid(pools, tenant))
    await directory.looked_up.wait()
    await pools.invalidate(tenant.id)  # the DSN being fetched may already be stale
    await request
    assert directory.calls[tenant.id] == 2  # the request was served by a pool made after invalidate()
    assert pools.is_open(tenant.id)
    await eventually(lambda: pools.stats().open_pools == 1, "the stale pool is closed")
