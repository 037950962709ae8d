"""Quotas on create (``max_cards``, ``max_users``) and the usage counters behind them.

Proven here: over the limit a create is 403 ``quota_exceeded`` with ``quota``, ``limit`` and ``usage``;
20 creates racing at limit-1 - each on its own pooled connection and transaction, all queued on the
counter at once - leave exactly the limit, for cards over HTTP and for users through ``enforce_quota``;
the triggers of tenant_schema 0002 keep ``usage_counters`` equal to the real counts through bulk
inserts, deletes, file size changes and TRUNCATE; and revision 0002 seeds the counters from existing
rows and downgrades cleanly. Uses the test app of ``test_cards_api``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import psycopg
import pytest
from psycopg import sql

from controlplane import db
from controlplane.cards.errors import QuotaExceeded
from controlplane.cards.service import enforce_quota
from controlplane.registry.models import QuotaType, fixed_limits
from controlplane.schemas.alembic_runner import tenant_scripts
from controlplane.settings import ProvisioningSettings
from tests.integration.cards_support import ApiTenant, CardApi, assert_error, open_card_api

PARALLEL = 20


@pytest.fixture(scope="module")
async def card_api(
    pg_admin_dsn: str, control_template: str, tenant_template_name: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[CardApi]:
    storage = tmp_path_factory.mktemp("storage")
    async with open_card_api(pg_admin_dsn, control_template, tenant_template_name, storage, ("acme",)) as api:
        yield api


async def counters(api: CardApi) -> dict[str, int]:
    rows = await api.sql("acme", "SELECT name, value FROM usage_counters")
    return {r["name"]: int(r["value"]) for r in rows}


async def real_counts(api: CardApi) -> dict[str, int]:
    (row,) = await api.sql(
        "acme",
        """
        SELECT (SELECT count(*) FROM cards) AS cards, (SELECT count(*) FROM users) AS users,
               (SELECT coalesce(sum(bytes), 0) FROM files) AS storage_bytes
        """,
    )
    return {name: int(value) for name, value in row.items()}


@asynccontextmanager
async def counter_gate(tenant: ApiTenant, counter: str) -> AsyncIterator[Callable[[int], Awaitable[None]]]:
    """Hold the counter row locked until the block ends; ``await queued(n)`` returns once ``n`` of the
    tenant role's sessions wait behind it, i.e. once they are all at the quota check together."""
    async with (
        await psycopg.AsyncConnection.connect(tenant.admin_dsn) as gate,
        await psycopg.AsyncConnection.connect(tenant.admin_dsn, autocommit=True) as watcher,
    ):
        await gate.execute("SELECT value FROM usage_counters WHERE name = %s FOR UPDATE", (counter,))

        async def queued(n: int) -> None:
            for _ in range(2000):  # a bound, not a timing assertion: 20 s at most
                cur = await watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND usename = %s AND wait_event_type = 'Lock'",
                    (tenant.record.role_name,),
                )
                row = await cur.fetchone()
                if row is not None and row[0] >= n:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"{n} sessions never queued on the {counter} counter")

        yield queued
        await gate.commit()


async def test_over_the_limit_is_403_with_the_numbers(api: CardApi) -> None:
    api.tenants["acme"].limits[QuotaType.CARDS] = 2
    first = await api.create("acme", "/cards", {"cardnumber": "1"})
    await api.create("acme", "/cards", {"cardnumber": "2"})

    body = assert_error(await api.request("POST", "acme", "/cards", json={"cardnumber": "3"}), 403, "quota_exceeded")
    assert (body["quota"], body["limit"], body["usage"]) == ("cards", 2, 2)

    # Freeing a slot lets the next one in; a lowered limit refuses even with usage above it.
    assert (await api.request("DELETE", "acme", f"/cards/{first['id']}")).status_code == 204
    await api.create("acme", "/cards", {"cardnumber": "3"})
    api.tenants["acme"].limits[QuotaType.CARDS] = 1
    body = assert_error(await api.request("POST", "acme", "/cards", json={"cardnumber": "4"}), 403, "quota_exceeded")
    assert (body["limit"], body["usage"]) == (1, 2)
    assert (await real_counts(api))["cards"] == 2


async def test_unlimited_and_zero_limits(api: CardApi) -> None:
    api.tenants["acme"].limits[QuotaType.CARDS] = None
    for i in range(5):
        await api.create("acme", "/cards", {"cardnumber": str(i)})
    api.tenants["acme"].limits.pop(QuotaType.CARDS)  # no limit known at all: unlimited too
    await api.create("acme", "/cards", {"cardnumber": "5"})
    api.tenants["acme"].limits[QuotaType.CARDS] = 0
    assert_error(await api.request("POST", "acme", "/cards", json={"cardnumber": "6"}), 403, "quota_exceeded")
    # Other resources are not metered.
    await api.create("acme", "/players", {"last_name": "Unmetered"})


async def test_parallel_card_creates_at_limit_minus_one_leave_exactly_the_limit(api: CardApi) -> None:
    limit = 10
    tenant = api.tenants["acme"]
    tenant.limits[QuotaType.CARDS] = limit
    await api.sql("acme", "INSERT INTO cards (cardnumber) SELECT 'seed' FROM generate_series(1, %s)", (limit - 1,))

    async with counter_gate(tenant, "cards") as queued:
        requests = [
            asyncio.create_task(api.request("POST", "acme", "/cards", json={"cardnumber": f"race-{i}"}))
            for i in range(PARALLEL)
        ]
        await queued(PARALLEL)
    responses = await asyncio.gather(*requests)

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [403] * (PARALLEL - 1), [r.text for r in responses]
    for response in responses:
        if response.status_code == 403:
            body = assert_error(response, 403, "quota_exceeded")
            assert (body["quota"], body["limit"], body["usage"]) == ("cards", limit, limit)
    assert (await real_counts(api))["cards"] == limit
    assert (await counters(api))["cards"] == limit


async def test_parallel_user_creates_at_limit_minus_one_leave_exactly_the_limit(api: CardApi) -> None:
    """Whoever creates users (the auth module) takes the same path: enforce_quota, then insert."""
    limit = 5
    tenant = api.tenants["acme"]
    await api.sql(
        "acme",
        "INSERT INTO users (email, password_hash) SELECT 'seed' || g || '@example.com', 'x'"
        " FROM generate_series(1, %s) AS g",
        (limit - 1,),
    )

    async def create_user(i: int) -> bool:
        async with tenant.pool.connection() as conn:  # its own connection and transaction
            try:
                await enforce_quota(conn, QuotaType.USERS, fixed_limits({QuotaType.USERS: limit}))
            except QuotaExceeded as exc:
                assert (exc.quota, exc.limit, exc.usage) == ("users", limit, limit)
                return False
            await conn.execute("INSERT INTO users (email, password_hash) VALUES (%s, 'x')", (f"race{i}@example.com",))
            return True

    async with counter_gate(tenant, "users") as queued:
        attempts = [asyncio.create_task(create_user(i)) for i in range(PARALLEL)]
        await queued(PARALLEL)
    created = await asyncio.gather(*attempts)

    assert sorted(created) == [False] * (PARALLEL - 1) + [True]
    assert (await real_counts(api))["users"] == limit
    assert (await counters(api))["users"] == limit


async def test_counters_follow_every_kind_of_write(api: CardApi) -> None:
    assert await counters(api) == {"cards": 0, "users": 0, "storage_bytes": 0}
    await api.sql("acme", "INSERT INTO cards (cardnumber) SELECT 'bulk' FROM generate_series(1, 100)")
    await api.sql("acme", "DELETE FROM cards WHERE id % 3 = 0")
    await api.sql("acme", "UPDATE cards SET notes = 'updates do not count'")
    await api.sql(
        "acme",
        "INSERT INTO users (email, password_hash) SELECT 'u' || g || '@example.com', 'x' FROM generate_series(1, 7) g",
    )
    await api.sql("acme", "DELETE FROM users WHERE id = 1")
    sha = "0" * 64
    await api.sql(
        "acme",
        "INSERT INTO files (key, content_type, bytes, sha256, card_id)"
        " SELECT 'k' || g, 'image/png', g * 10, %s, nullif(g, 3) FROM generate_series(1, 5) g",
        (sha,),
    )
    await api.sql("acme", "UPDATE files SET bytes = bytes + 1 WHERE id <= 2")
    await api.sql("acme", "UPDATE files SET card_id = NULL WHERE id = 3")  # no size change
    await api.sql("acme", "DELETE FROM cards WHERE id = 5")  # its file survives (card_id set NULL)
    await api.sql("acme", "DELETE FROM files WHERE id = 4")
    # Rolled-back writes leave the counters alone.
    with pytest.raises(psycopg.errors.CheckViolation):
        await api.sql("acme", "INSERT INTO cards (cardnumber, year) VALUES ('a', 1990), ('b', 1700)")
    assert await counters(api) == await real_counts(api)
    assert await counters(api) == {"cards": 66, "users": 6, "storage_bytes": 10 + 20 + 30 + 50 + 2}

    async with await psycopg.AsyncConnection.connect(api.tenants["acme"].admin_dsn, autocommit=True) as admin:
        await admin.execute("TRUNCATE cards, files, users CASCADE")
    assert await counters(api) == {"cards": 0, "users": 0, "storage_bytes": 0}


async def test_revision_0002_seeds_the_counters_and_downgrades(pg_admin_dsn: str) -> None:
    scripts = tenant_scripts(ProvisioningSettings())
    name = f"cvtest_counters_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(pg_admin_dsn, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = db.with_database(pg_admin_dsn, name)
    try:
        await asyncio.to_thread(scripts.upgrade, dsn, "0001")
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("INSERT INTO cards (cardnumber) VALUES ('a'), ('b'), ('c')")
            await conn.execute("INSERT INTO users (email, password_hash) VALUES ('x@example.com', 'x')")
            await conn.execute(
                "INSERT INTO files (key, content_type, bytes, sha256) VALUES ('k', 'image/png', 1234, %s)", ("0" * 64,)
            )
        assert await asyncio.to_thread(scripts.upgrade, dsn, "0002") == "0002"
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT name, value FROM usage_counters ORDER BY name")
            assert await cur.fetchall() == [("cards", 3), ("storage_bytes", 1234), ("users", 1)]
        assert await asyncio.to_thread(scripts.downgrade, dsn, "0001") == "0001"
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT to_regclass('usage_counters') IS NULL,"
                " (SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%%_count_%%'),"
                " (SELECT count(*) FROM pg_proc WHERE proname LIKE 'cardvault_%%count%%')"
            )
            assert await cur.fetchone() == (True, 0, 0)
            await conn.execute("INSERT INTO cards (cardnumber) VALUES ('still works')")
    finally:
        async with await psycopg.AsyncConnection.connect(pg_admin_dsn, autocommit=True) as admin:
            await admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
