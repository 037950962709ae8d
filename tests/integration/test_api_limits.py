"""The tenant API's hourly call limit: exactly N calls, counted for usage, shared by instances through
Redis, and without a Redis round trip per call while a tenant is far from its limit."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import psycopg
from litestar.testing import AsyncTestClient

from controlplane.app import create_app
from controlplane.auth.ratelimit import RedisCounter
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.integration.auth_support import create_tenant

Client = AsyncTestClient[Any]


async def set_api_limit(control_dsn: str, tenant_id: uuid.UUID, limit: int) -> None:
    with psycopg.connect(control_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE tenant_quotas SET quota_limit = %s WHERE tenant_id = %s AND quota_type = 'api_calls_per_hour'",
            (limit, tenant_id),
        )


async def test_exactly_the_hourly_limit_is_allowed(client: Client, control_dsn: str) -> None:
    acme = await create_tenant(client, "acme")
    await set_api_limit(control_dsn, acme.id, 5)
    # The limit is cached for up to a minute: a new app instance reads it fresh.
    client.headers.pop("Authorization")
    remaining = []
    for _ in range(5):
        response = await client.get(acme.api("/teams"), headers=acme.auth)
        assert response.status_code == 200, response.text
        remaining.append(int(response.headers["RateLimit-Remaining"]))
        assert response.headers["RateLimit-Limit"] == "5"
    assert remaining == [4, 3, 2, 1, 0]
    refused = await client.get(acme.api("/teams"), headers=acme.auth)
    assert (refused.status_code, refused.json()["error"]) == (429, "rate_limited")
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    assert refused.headers["RateLimit-Remaining"] == "0"


async def test_calls_are_counted_for_usage(client: Client, control_dsn: str) -> None:
    acme = await create_tenant(client, "acme")
    for _ in range(3):
        assert (await client.get(acme.api("/cards"), headers=acme.auth)).status_code == 200
    api_calls = client.app.state["api_calls"]
    async with client.app.state.platform.control.connection() as conn:
        await api_calls.flush(conn)
    with psycopg.connect(control_dsn) as conn:
        row = conn.execute("SELECT sum(calls) FROM tenant_api_calls WHERE tenant_id = %s", (acme.id,)).fetchone()
    assert row == (3,)


async def test_two_instances_share_the_limit_through_redis(settings: Settings, redis_url: str) -> None:
    shared = settings.replace(auth=dataclasses.replace(settings.auth, redis_url=redis_url))
    async with (
        AsyncTestClient(app=create_app(shared)) as one,
        AsyncTestClient(app=create_app(shared)) as two,
    ):
        one.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        acme = await create_tenant(one, "acme")
        await set_api_limit(settings.database.url, acme.id, 6)
        statuses = []
        for i in range(8):
            client = one if i % 2 == 0 else two
            statuses.append((await client.get(acme.api("/teams"), headers=acme.auth)).status_code)
        assert statuses == [200] * 6 + [429] * 2


async def test_calls_far_from_the_limit_reach_redis_in_batches(settings: Settings, redis_url: str) -> None:
    shared = settings.replace(auth=dataclasses.replace(settings.auth, redis_url=redis_url))
    async with AsyncTestClient(app=create_app(shared)) as one:
        one.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        acme = await create_tenant(one, "acme")
        await set_api_limit(settings.database.url, acme.id, 100_000)
        remaining = []
        for _ in range(30):
            response = await one.get(acme.api("/teams"), headers=acme.auth)
            remaining.append(int(response.headers["RateLimit-Remaining"]))
        assert remaining == list(range(99_999, 99_969, -1))  # the instance counts its own calls at once

        async def flush_api_calls() -> None:  # the 30 s job; on the app's own event loop (its Redis client's)
            async with one.app.state.platform.control.connection() as conn:
                await one.app.state["api_calls"].flush(conn)

        redis = RedisCounter(redis_url)
        try:
            before = (await redis.peek(f"api:{acme.id}", 3600))[0]
            one.blocking_portal.call(flush_api_calls)
            after = (await redis.peek(f"api:{acme.id}", 3600))[0]
        finally:
            await redis.close()
        assert before < 30  # not one round trip per call
        assert after == 30  # the flush job adds what the instance held
