"""TenantPools against real PostgreSQL: LRU, budget, single flight, draining eviction, failures, stats.

Tenant databases here are plain databases with their own login role (``cvpool_<hex>``, CONNECT revoked
from PUBLIC), made and dropped by this module; ``Directory`` is the ``conninfo_for`` that maps a tenant
id to such a DSN and counts its calls. What the server sees is read from ``pg_stat_activity`` through
separate superuser connections, never through the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from controlplane.errors import ConfigError, TenantNotFound, TenantUnavailable
from controlplane.pools.models import APPLICATION_NAME
from controlplane.pools.service import TenantPools
from controlplane.settings import DatabaseSettings, PoolSettings
from tests.conftest import eventually
from tests.harness import LocalClusterHandle

MODULE_TENANTS = 8


@dataclasses.dataclass(frozen=True)
class TenantDb:
    id: uuid.UUID
    name: str  # database and role
    dsn: str  # as the tenant's own role


def create_tenant_db(admin_dsn: str) -> TenantDb:
    name = f"cvpool_{uuid.uuid4().hex[:16]}"
    password = uuid.uuid4().hex
    ident = sql.Identifier(name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(ident, sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, ident))
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(ident))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(ident, ident))
    dsn = conninfo.make_conninfo(admin_dsn, dbname=name, user=name, password=password)
    return TenantDb(uuid.uuid4(), name, dsn)


def drop_tenant_db(admin_dsn: str, tenant: TenantDb) -> None:
    with contextlib.suppress(psycopg.OperationalError), psycopg.connect(admin_dsn, autocommit=True) as conn:
        ident = sql.Identifier(tenant.name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))


@pytest.fixture(scope="module")
def tenants(pg_admin_dsn: str) -> Iterator[list[TenantDb]]:
    made: list[TenantDb] = []
    try:
        for _ in range(MODULE_TENANTS):
            made.append(create_tenant_db(pg_admin_dsn))
        yield made
    finally:
        for tenant in made:
            drop_tenant_db(pg_admin_dsn, tenant)


@pytest.fixture
def fresh_tenant(pg_admin_dsn: str) -> Iterator[TenantDb]:
    """A tenant of its own, for tests that change its role."""
    tenant = create_tenant_db(pg_admin_dsn)
    yield tenant
    drop_tenant_db(pg_admin_dsn, tenant)


class Directory:
    """``conninfo_for``: tenant id -> DSN, counting calls; an unknown id is TenantNotFound."""

    def __init__(self, tenants: list[TenantDb], delay: float = 0.0) -> None:
        self.dsns = {t.id: t.dsn for t in tenants}
        self.calls: Counter[uuid.UUID] = Counter()
        self.delay = delay
        self.looked_up = asyncio.Event()

    async def __call__(self, tenant_id: uuid.UUID) -> str:
        self.calls[tenant_id] += 1
        self.looked_up.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        try:
            return self.dsns[tenant_id]
        except KeyError:
            raise TenantNotFound(f"no tenant {tenant_id}") from None


MakePools = Callable[..., TenantPools]


@pytest.fixture
async def make_pools() -> AsyncIterator[MakePools]:
    """``make_pools(directory, connect_timeout=..., **pool_settings)``; all are closed at teardown."""
    made: list[TenantPools] = []

    def make(directory: Directory, connect_timeout: float = 3.0, **overrides: Any) -> TenantPools:
        settings = dataclasses.replace(
            PoolSettings(capacity=10, connection_budget=20, per_tenant_max=2, acquire_timeout=10.0), **overrides
        )
        pools = TenantPools(settings, DatabaseSettings(connect_timeout=connect_timeout), directory)
        made.append(pools)
        return pools

    yield make
    for pools in made:
        await pools.close()


async def server_connections(admin_dsn: str, tenants: list[TenantDb]) -> list[dict[str, Any]]:
    """Our tenant sessions on the server (application_name and database)."""
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        await cur.execute(
            "SELECT pid, datname FROM pg_stat_activity WHERE application_name = %s AND datname = ANY(%s)",
            (APPLICATION_NAME, [t.name for t in tenants]),
        )
        return await cur.fetchall()


async def count_connections(admin_dsn: str, tenants: list[TenantDb]) -> int:
    return len(await server_connections(admin_dsn, tenants))


async def backend_pid(pools: TenantPools, tenant: TenantDb) -> int:
    async with pools.connection(tenant.id) as conn:
        cur = await conn.execute("SELECT pg_backend_pid() AS pid")
        row = await cur.fetchone()
        assert row is not None
        return int(row["pid"])


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
