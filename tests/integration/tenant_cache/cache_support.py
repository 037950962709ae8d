"""Helpers of the tenant cache tests: polling, settling, a locked registry, a one-route tenant app."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.testing import AsyncTestClient

from controlplane.context import TenantContext
from controlplane.http.errors import EXCEPTION_HANDLERS
from controlplane.http.state import BASE_DOMAIN_STATE_KEY, TENANT_CACHE_STATE_KEY
from controlplane.http.tenant_api import tenant_dependencies
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import Tenant, TenantStatus
from controlplane.routing.cache import TENANTS_CHANNEL, TenantCache
from tests.integration.tenant_support import execute, fetch

BASE_DOMAIN = "cardvault.test"
#: The bound the issue sets for another replica to stop serving a changed tenant.
PROPAGATION = 1.0

Client = AsyncTestClient[Litestar]


async def eventually(check: Callable[[], Awaitable[bool]], within: float = PROPAGATION, what: str = "") -> None:
    """Poll ``check`` until it is true; fail if it is still false after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what or check}")
        await asyncio.sleep(0.01)


async def create(service: TenantService, slug: str) -> Tenant:
    return await service.create(name=slug.title(), slug=slug, tier="starter")


async def settle(cache: TenantCache, control_dsn: str) -> None:
    """Wait until ``cache`` has handled every notification committed so far.

    Notifications arrive in commit order; one naming no id makes the cache reset, which we can see.
    Tests call this after creating tenants, so that a late creation notice cannot drop what they cache.
    """
    resets = cache.stats.resets
    await execute(control_dsn, "SELECT pg_notify(%s, 'settle')", (TENANTS_CHANNEL,))
    await eventually(lambda: truthy(cache.stats.resets > resets), within=5, what="cache settled")


class Recorder:
    """An ``on_invalidate`` callback that remembers the tenant ids it was called with."""

    def __init__(self) -> None:
        self.ids: list[uuid.UUID] = []

    async def __call__(self, tenant_id: uuid.UUID) -> None:
        self.ids.append(tenant_id)


async def truthy(value: bool) -> bool:
    return value


async def positive(count: Awaitable[int]) -> bool:
    return await count > 0


async def is_none(value: Awaitable[object]) -> bool:
    return await value is None


async def slug_is(cache: TenantCache, slug: str, status: TenantStatus | None) -> bool:
    context = await cache.get_by_slug(slug)
    return (context.status if context else None) is status


class LockedRegistry:
    """An admin transaction holding ACCESS EXCLUSIVE on ``tenants``: every registry read blocks."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> LockedRegistry:
        self._conn = await psycopg.AsyncConnection.connect(self._dsn)
        await self._conn.execute("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._conn is not None
        await self._conn.rollback()
        await self._conn.close()

    async def waiters(self) -> int:
        """Sessions waiting for the lock (that is: trying to read the registry)."""
        (row,) = await fetch(
            self._dsn, "SELECT count(*) AS n FROM pg_locks WHERE relation = 'tenants'::regclass AND NOT granted"
        )
        return int(row["n"])


def tenant_app(cache: TenantCache) -> Litestar:
    """A tenant API of one route, mounted like the real one, behind one instance's cache."""

    @get(["/t/{tenant_slug:str}/api/whoami", "/api/whoami"], sync_to_thread=False)
    def whoami(tenant: NamedDependency[TenantContext]) -> dict[str, str]:
        return {"id": str(tenant.id), "slug": tenant.slug, "status": tenant.status.value}

    return Litestar(
        route_handlers=[whoami],
        dependencies=tenant_dependencies(),
        exception_handlers=EXCEPTION_HANDLERS,
        state=State({TENANT_CACHE_STATE_KEY: cache, BASE_DOMAIN_STATE_KEY: BASE_DOMAIN}),
    )


async def answer(client: Client, slug: str) -> tuple[int, str]:
    response = await client.get(f"/t/{slug}/api/whoami")
    body = response.json()
    return response.status_code, body.get("error") or body["slug"]
