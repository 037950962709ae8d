"""An outage of one database server, through the whole app: its tenants fail fast, the others carry on.

A second PostgreSQL cluster is registered as server ``second`` and hosts tenant ``faraway``; ``nearby``
lives on ``default`` (the cluster the control database is on). While ``second`` is stopped, requests for
``faraway`` answer 503 ``tenant_unavailable`` with ``Retry-After`` within a bound (no hang), a burst of
them leaves no pool or waiter behind, and ``nearby`` is served as usual. When ``second`` is back,
``faraway`` is served again without anyone doing anything, and every write that was acknowledged (201)
before or after the outage is there, while writes refused during it were not applied.

Bounds are generous deadlines that prove "no hang", never performance assertions.

The app runs in the test's own event loop behind ``httpx.ASGITransport`` (its lifespan entered by hand):
Litestar's ``AsyncTestClient`` runs the app on a portal thread and blocks the calling loop for each
request, so ``asyncio.gather`` over it would send the "concurrent" requests one after another.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
import pytest
from litestar import Litestar
from psycopg import conninfo

from controlplane.app import create_app
from controlplane.crypto import SecretBox
from controlplane.http.state import TENANT_POOLS_STATE_KEY
from controlplane.pools.lifecycle import RECONNECT_TIMEOUT
from controlplane.pools.service import TenantPools
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN, SECRET_KEY, eventually
from tests.harness import LocalClusterHandle
from tests.integration.tenant_support import provision_with_admin

Client = httpx.AsyncClient
StartCluster = Callable[[], LocalClusterHandle]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: The ``Authorization`` header of each tenant's admin, by slug.
Tokens = dict[str, dict[str, str]]

#: How long the server may take to come back and be served again (a restart takes about a second).
RECOVERY_DEADLINE = 60.0


def cards(slug: str) -> str:
    return f"/t/{slug}/api/cards"


def failure_bound(settings: Settings) -> float:
    """No hang: the pools promise an answer within about RECONNECT_TIMEOUT + connect_timeout; +5 s slack."""
    return settings.database.connect_timeout + RECONNECT_TIMEOUT + 5.0


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "tenant_unavailable", response.text
    assert int(response.headers["retry-after"]) >= 1, response.headers


async def create_tenant(client: Client, tokens: Tokens, slug: str) -> dict[str, Any]:
    """Create ``slug`` with a tenant_admin, whose token goes into ``tokens``; the new tenant."""
    body, tokens[slug] = await provision_with_admin(client, slug)
    return body


async def add_card(client: Client, tokens: Tokens, slug: str, number: str) -> dict[str, Any]:
    response = await client.post(
        cards(slug), json={"cardnumber": number, "notes": f"written to {slug}"}, headers=tokens[slug]
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def card_numbers(client: Client, tokens: Tokens, slug: str) -> set[str]:
    response = await client.get(cards(slug), params={"limit": 200}, headers=tokens[slug])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_cursor"] is None
    return {c["cardnumber"] for c in body["items"]}


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[Litestar, Client]]:
    """The whole app started in the test's event loop, and a client that really sends concurrent requests.

    A context manager entered in the test itself, not a fixture: the lifespan opens an anyio task group,
    which must be left by the task that entered it (pytest-asyncio tears fixtures down in another one).
    """
    app = create_app(settings)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=120) as client:
            yield app, client


async def two_servers(client: Client, second: LocalClusterHandle) -> tuple[uuid.UUID, uuid.UUID, Tokens]:
    """``faraway`` on ``second``, ``nearby`` on ``default``, each with one card; their tenant ids and the
    tokens of their admins."""
    response = await client.post("/admin/servers", json={"name": "second", "dsn": second.dsn}, headers=ADMIN)
    assert response.status_code == 201, response.text
    assert (await client.post("/admin/servers/default/drain", headers=ADMIN)).status_code == 200
    tokens: Tokens = {}
    faraway = await create_tenant(client, tokens, "faraway")
    assert (await client.post("/admin/servers/default/activate", headers=ADMIN)).status_code == 200
    nearby = await create_tenant(client, tokens, "nearby")
    assert (faraway["server_name"], nearby["server_name"]) == ("second", "default")
    for slug in ("faraway", "nearby"):
        await add_card(client, tokens, slug, f"{slug}-before")
    return uuid.UUID(faraway["id"]), uuid.UUID(nearby["id"]), tokens


def pools_of(app: Litestar) -> TenantPools:
    pools: TenantPools = app.state[TENANT_POOLS_STATE_KEY]
    return pools


async def tenant_row(control_dsn: str, tenant_id: uuid.UUID) -> tuple[str, str, str]:
    """The tenant's role, database and decrypted role password, read straight from the registry."""
    async with await psycopg.AsyncConnection.connect(control_dsn) as conn:
        cur = await conn.execute(
            "SELECT role_name, database_name, role_password_encrypted FROM tenants WHERE id = %s", (tenant_id,)
        )
        row = await cur.fetchone()
    assert row is not None
    return row[0], row[1], SecretBox(SECRET_KEY).decrypt(row[2])


@pytest.mark.slow
async def test_a_server_outage_fails_its_tenants_fast_and_they_recover_by_themselves(
    settings: Settings, extra_cluster: StartCluster
) -> None:
    second = extra_cluster()
    async with serve(settings) as (app, client):
        await outage_and_recovery(app, client, settings, second)


async def outage_and_recovery(app: Litestar, client: Client, settings: Settings, second: LocalClusterHandle) -> None:
    faraway_id, nearby_id, tokens = await two_servers(client, second)
    far, near = tokens["faraway"], tokens["nearby"]
    pools = pools_of(app)
    assert pools.is_open(faraway_id) and pools.is_open(nearby_id)
    bound = failure_bound(settings)

    second.stop()
    try:
        # The pooled connection died with the server and new ones are refused: 503 at once, no hang.
        assert_unavailable(await asyncio.wait_for(client.get(cards("faraway"), headers=far), bound))
        refused = await asyncio.wait_for(
            client.post(cards("faraway"), json={"cardnumber": "during-0"}, headers=far), bound
        )
        assert_unavailable(refused)
        assert await card_numbers(client, tokens, "nearby") == {"nearby-before"}

        # A burst for the tenant whose server is down, mixed with traffic for the other one.
        burst = [client.get(cards("faraway"), headers=far) for _ in range(20)]
        others = [client.get(cards("nearby"), headers=near) for _ in range(5)]
        responses = await asyncio.wait_for(asyncio.gather(*burst, *others), bound)
        for response in responses[:20]:
            assert_unavailable(response)
        assert [r.status_code for r in responses[20:]] == [200] * 5

        # Nothing piles up: the failed pools are closed, nobody waits, nothing is checked out.
        def settled() -> bool:
            stats = pools.stats()
            # (A connection the burst made the nearby pool open may still be on its way: wait for it.)
            return (stats.open_pools, stats.requests_waiting, stats.connections_in_use) == (1, 0, 0) and (
                stats.connections_open == stats.connections_idle
            )

        await eventually(settled, f"only nearby's pool is left, nothing waits or is held: {pools.stats()}")
        assert not pools.is_open(faraway_id) and pools.is_open(nearby_id)
        stats = pools.stats()
        assert stats.connections_open == stats.connections_idle <= settings.pools.per_tenant_max, stats

        # nearby is still served, reads and writes.
        await add_card(client, tokens, "nearby", "nearby-during")
        assert await card_numbers(client, tokens, "nearby") == {"nearby-before", "nearby-during"}
    finally:
        second.start()

    # Back up: faraway is served again by itself (no restart, no admin action). Each attempt is a write;
    # those refused while the server was coming back must not be applied, the acknowledged one must be.
    refused_numbers = {"during-0"}
    deadline = time.monotonic() + RECOVERY_DEADLINE
    attempt = 0
    while True:
        attempt += 1
        number = f"recovery-{attempt}"
        response = await asyncio.wait_for(
            client.post(cards("faraway"), json={"cardnumber": number}, headers=far), bound
        )
        if response.status_code == 201:
            break
        assert_unavailable(response)
        refused_numbers.add(number)
        assert time.monotonic() < deadline, f"faraway not served {RECOVERY_DEADLINE} s after its server is back"
        await asyncio.sleep(0.2)
    assert pools.is_open(faraway_id)

    await add_card(client, tokens, "faraway", "after-recovery")
    numbers = await card_numbers(client, tokens, "faraway")
    assert numbers == {"faraway-before", number, "after-recovery"}, numbers
    assert not numbers & refused_numbers
    assert await card_numbers(client, tokens, "nearby") == {"nearby-before", "nearby-during"}

    # What the API says is what the server holds (read as the tenant's own role, bypassing the app).
    role, database, password = await tenant_row(settings.database.url, faraway_id)
    dsn = conninfo.make_conninfo(second.dsn, user=role, password=password, dbname=database)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT cardnumber FROM cards")
        assert {r[0] for r in await cur.fetchall()} == numbers


@pytest.mark.slow
async def test_a_request_in_flight_when_its_server_goes_down_is_a_503(
    settings: Settings, extra_cluster: StartCluster
) -> None:
    """The server dies under a running query: the request answers 503 tenant_unavailable, not 500."""
    second = extra_cluster()
    async with serve(settings) as (app, client):
        await death_under_a_query(app, client, settings, second)


async def death_under_a_query(app: Litestar, client: Client, settings: Settings, second: LocalClusterHandle) -> None:
    faraway_id, _, tokens = await two_servers(client, second)
    far = tokens["faraway"]
    role, database, _ = await tenant_row(settings.database.url, faraway_id)

    # Hold a lock that the tenant's next query waits on, so that the request is in flight.
    locker = await psycopg.AsyncConnection.connect(conninfo.make_conninfo(second.dsn, dbname=database))
    await locker.execute("LOCK TABLE cards IN ACCESS EXCLUSIVE MODE")
    request = asyncio.create_task(client.get(cards("faraway"), headers=far))
    try:

        async def waiting_on_the_lock() -> bool:
            async with await psycopg.AsyncConnection.connect(second.dsn, autocommit=True) as watch:
                cur = await watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND wait_event_type = 'Lock'", (role,)
                )
                found = await cur.fetchone()
            return bool(found and found[0])

        await eventually(waiting_on_the_lock, "the tenant's query waits on the lock")
        # Immediate: with a fast shutdown the locker's backend may end first, and the waiting query
        # could get its lock and finish before its own backend is told to end. The test cluster commits
        # asynchronously: a checkpoint first, so the crash loses no committed row.
        async with await psycopg.AsyncConnection.connect(second.dsn, autocommit=True) as admin:
            await admin.execute("CHECKPOINT")
        second.stop(immediate=True)
        response = await asyncio.wait_for(request, failure_bound(settings))
        assert_unavailable(response)
    finally:
        if not request.done():
            request.cancel()
        await locker.close()
        if not second.is_running():
            second.start()

    pools = pools_of(app)
    await eventually(lambda: pools.stats().connections_in_use == 0, "the broken connection went back")

    async def served() -> bool:
        response = await client.get(cards("faraway"), headers=far)
        if response.status_code != 200:
            assert_unavailable(response)
        return response.status_code == 200

    await eventually(served, "faraway is served again", within=RECOVERY_DEADLINE)
    assert await card_numbers(client, tokens, "faraway") == {"faraway-before"}
