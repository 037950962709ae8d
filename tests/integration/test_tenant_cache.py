"""controlplane.routing (cache, resolver, dependencies) and registry revision 0002 on a real PostgreSQL.

How "no registry query" is proven: an admin transaction holds ``LOCK TABLE tenants IN ACCESS EXCLUSIVE
MODE``, under which any registry read blocks. A cache hit (and a hot HTTP request) still answers, while
a miss started under the same lock is seen waiting in ``pg_locks`` until the lock goes: the method
demonstrably catches a query, and the hit made none.

Cross-replica invalidation uses two ``Platform``s (two control pools, two fleets) and two
``TenantCache``s, each with its own LISTEN connection, behind two Litestar apps. Changes go through the
``TenantService`` of the first; the second must see them within one second (polled with a deadline).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.testing import AsyncTestClient
from psycopg import conninfo, sql

from controlplane.context import TenantContext
from controlplane.errors import ServerUnavailable
from controlplane.http.errors import EXCEPTION_HANDLERS
from controlplane.http.state import BASE_DOMAIN_STATE_KEY, TENANT_CACHE_STATE_KEY
from controlplane.http.tenant_api import tenant_dependencies
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import Tenant, TenantStatus
from controlplane.routing.cache import SERVERS_CHANNEL, TENANTS_CHANNEL, TenantCache
from controlplane.routing.errors import TenantNotFound
from controlplane.routing.resolver import resolve
from controlplane.schemas.alembic_runner import registry_scripts
from controlplane.settings import DatabaseSettings, ProvisioningSettings, Settings
from tests.integration.tenant_support import execute, fetch

BASE_DOMAIN = "cardvault.test"
#: The bound the issue sets for another replica to stop serving a changed tenant.
PROPAGATION = 1.0

Client = AsyncTestClient[Litestar]


# -- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture
async def cache(platform: Platform) -> AsyncIterator[TenantCache]:
    started = TenantCache(platform)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
async def other_platform(settings: Settings) -> AsyncIterator[Platform]:
    """A second service instance: its own control pool and fleet."""
    async with Platform.open(settings, migrate=False) as opened:
        yield opened


@pytest.fixture
async def other_cache(other_platform: Platform) -> AsyncIterator[TenantCache]:
    started = TenantCache(other_platform)
    await started.start()
    yield started
    await started.stop()


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
    await eventually(lambda: _true(cache.stats.resets > resets), within=5, what="cache settled")


class Recorder:
    """An ``on_invalidate`` callback that remembers the tenant ids it was called with."""

    def __init__(self) -> None:
        self.ids: list[uuid.UUID] = []

    async def __call__(self, tenant_id: uuid.UUID) -> None:
        self.ids.append(tenant_id)


async def _true(value: bool) -> bool:
    return value


async def _positive(count: Awaitable[int]) -> bool:
    return await count > 0


async def _is_none(value: Awaitable[object]) -> bool:
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


# -- revision 0002 ---------------------------------------------------------------------------------


async def test_update_trigger_watches_every_cached_column(control_dsn: str) -> None:
    """If TenantContext gains a field, the trigger must notify on its column too."""
    rows = await fetch(
        control_dsn,
        "SELECT pg_get_triggerdef(oid) AS def FROM pg_trigger WHERE tgname = 'tenants_notify_update'",
    )
    definition = rows[0]["def"].lower()
    columns = {"tier": "subscription_tier"}
    for field in TenantContext.__struct_fields__:
        column = columns.get(field, field)
        assert f"old.{column}" in definition and f"new.{column}" in definition, column
    assert "old.role_password_encrypted" in definition  # what credentials() is built from


async def test_notifications_name_the_tenant_id_and_skip_irrelevant_updates(
    platform: Platform, service: TenantService, control_dsn: str
) -> None:
    marker = "cardvault_test_marker"
    listener = await psycopg.AsyncConnection.connect(control_dsn, autocommit=True)
    try:
        for channel in (TENANTS_CHANNEL, SERVERS_CHANNEL, marker):
            await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

        async def until_marker(label: str) -> list[tuple[str, str]]:
            # The marker commits after the change, and notifications arrive in commit order.
            await execute(control_dsn, "SELECT pg_notify(%s, %s)", (marker, label))
            seen: list[tuple[str, str]] = []
            async for notify in listener.notifies(timeout=5):
                if notify.channel == marker and notify.payload == label:
                    return seen
                seen.append((notify.channel, notify.payload))
            raise AssertionError(f"marker {label} never arrived; saw {seen}")

        tenant = await create(service, "acme")
        tid = str(tenant.id)
        created = await until_marker("created")
        assert created and set(created) == {(TENANTS_CHANNEL, tid)}  # insert, then activation

        await service.update("acme", name="Acme Renamed")  # display name: not cached, no notification
        await execute(control_dsn, "UPDATE tenants SET migration_error = 'x', updated_at = now() WHERE id = %s", (tid,))
        assert await until_marker("name") == []

        await service.suspend("acme")
        assert await until_marker("suspended") == [(TENANTS_CHANNEL, tid)]
        await service.update("acme", new_slug="acme-two")
        assert await until_marker("renamed") == [(TENANTS_CHANNEL, tid)]

        (server,) = await fetch(control_dsn, "SELECT id, dsn_encrypted FROM db_servers")
        await execute(control_dsn, "UPDATE db_servers SET status = 'draining'")  # not the DSN: silent
        new_dsn = platform.box.encrypt(platform.box.decrypt(server["dsn_encrypted"]))
        await execute(control_dsn, "UPDATE db_servers SET dsn_encrypted = %s, status = 'active'", (new_dsn,))
        assert await until_marker("server") == [(SERVERS_CHANNEL, str(server["id"]))]

        await service.delete("acme-two", now=True)
        purged = await until_marker("purged")
        assert purged and set(purged) == {(TENANTS_CHANNEL, tid)}
    finally:
        await listener.close()


async def test_registry_revision_0002_downgrades_and_upgrades(control_dsn: str) -> None:
    scripts = registry_scripts(ProvisioningSettings())
    count = "SELECT count(*) AS n FROM pg_trigger WHERE tgname LIKE '%%notify%%' AND NOT tgisinternal"
    assert (await fetch(control_dsn, count))[0]["n"] == 4
    await asyncio.to_thread(scripts.downgrade, control_dsn, "0001")
    assert (await fetch(control_dsn, count))[0]["n"] == 0
    functions = "SELECT count(*) AS n FROM pg_proc WHERE proname LIKE 'cardvault_notify_%%'"
    assert (await fetch(control_dsn, functions))[0]["n"] == 0
    assert await asyncio.to_thread(scripts.upgrade, control_dsn) == scripts.head()
    assert (await fetch(control_dsn, count))[0]["n"] == 4


# -- hits cost no query ----------------------------------------------------------------------------


async def test_hit_makes_no_registry_query(cache: TenantCache, service: TenantService, control_dsn: str) -> None:
    tenant = await create(service, "acme")
    await settle(cache, control_dsn)
    first = await cache.get_by_slug("acme")
    assert first is not None and first.id == tenant.id and first.status is TenantStatus.ACTIVE
    dsn = await cache.credentials(tenant.id)
    assert (cache.hits, cache.misses, cache.stats.credential_misses) == (0, 1, 1)

    async with LockedRegistry(control_dsn) as locked:
        # Any registry read would now wait for the lock; these answer at once.
        assert await asyncio.wait_for(cache.get_by_slug("acme"), 2) == first
        assert await asyncio.wait_for(resolve(cache, "acme"), 2) == first
        assert await asyncio.wait_for(cache.credentials(tenant.id), 2) == dsn
        assert (cache.hits, cache.misses, cache.stats.credential_hits) == (2, 1, 1)
        assert await locked.waiters() == 0

        # The control: a miss under the same lock is caught waiting for it.
        miss = asyncio.create_task(cache.get_by_slug("globex"))
        await eventually(lambda: _positive(locked.waiters()), within=5, what="the miss waits for the lock")
        assert not miss.done()
    assert await asyncio.wait_for(miss, 5) is None
    assert cache.misses == 2


async def test_read_in_flight_during_invalidation_is_not_stored(
    cache: TenantCache, service: TenantService, control_dsn: str
) -> None:
    tenant = await create(service, "acme")
    await settle(cache, control_dsn)
    async with LockedRegistry(control_dsn) as locked:
        read = asyncio.create_task(cache.get_by_slug("acme"))
        await eventually(lambda: _positive(locked.waiters()), within=5, what="the read waits for the lock")
        cache.invalidate(tenant.id)  # as if the row changed after the read's snapshot
    context = await asyncio.wait_for(read, 5)
    assert context is not None and context.id == tenant.id
    assert len(cache) == 0, "a read that raced an invalidation must not be cached"
    await cache.get_by_slug("acme")
    await cache.get_by_slug("acme")
    assert (cache.misses, cache.hits, len(cache)) == (2, 1, 1)


async def test_cache_not_listening_stores_nothing(platform: Platform, service: TenantService) -> None:
    await create(service, "acme")
    idle = TenantCache(platform)  # never started: no notifications, so nothing may be kept
    assert await idle.get_by_slug("acme") is not None
    assert await idle.get_by_slug("acme") is not None
    assert (idle.hits, idle.misses, len(idle)) == (0, 2, 0)


async def test_a_change_made_here_runs_the_callbacks_once(
    cache: TenantCache, service: TenantService, control_dsn: str
) -> None:
    """The process that suspends or resumes a tenant forgets it at once (before its own notification
    arrives), and its callbacks (the app closes the tenant's pool there) run once per change."""
    tenant = await create(service, "acme")
    await settle(cache, control_dsn)
    recorder = Recorder()
    cache.on_invalidate(recorder)
    service.on_change(cache.invalidate)  # as the app wires it

    async def handled_so_far() -> list[uuid.UUID]:
        """The callbacks run until now: a marker notified after the change is called back after it."""
        marker = uuid.uuid4()
        await execute(control_dsn, "SELECT pg_notify(%s, %s)", (TENANTS_CHANNEL, str(marker)))
        await eventually(lambda: _true(marker in recorder.ids), within=5, what="the marker's callback")
        return [i for i in recorder.ids if i == tenant.id]

    assert await cache.get_by_slug("acme") is not None
    await service.suspend("acme")
    context = await cache.get_by_slug("acme")  # forgotten here at once: the registry is read again
    assert context is not None and context.status is TenantStatus.SUSPENDED
    assert await handled_so_far() == [tenant.id], "one callback for the suspend"
    await service.resume("acme")
    assert await handled_so_far() == [tenant.id, tenant.id], "one callback for the resume"


async def test_a_change_made_here_while_not_listening_runs_the_callbacks_at_once(
    platform: Platform, service: TenantService
) -> None:
    tenant = await create(service, "acme")
    idle = TenantCache(platform)  # not listening: no notification will come
    recorder = Recorder()
    idle.on_invalidate(recorder)
    idle.invalidate(tenant.id)
    await eventually(lambda: _true(recorder.ids == [tenant.id]), what="callback without a notification")


# -- a second instance follows changes made through the first --------------------------------------


async def test_two_app_instances(
    cache: TenantCache, other_cache: TenantCache, service: TenantService, control_dsn: str
) -> None:
    tenant = await create(service, "acme")
    await create(service, "globex")
    await settle(cache, control_dsn)
    await settle(other_cache, control_dsn)
    async with AsyncTestClient(app=tenant_app(cache)) as one, AsyncTestClient(app=tenant_app(other_cache)) as two:
        for client in (one, two):
            assert await answer(client, "acme") == (200, "acme")
        # The three ways to name a tenant, and what goes wrong with them.
        for headers in ({"Host": "acme.cardvault.test:8000"}, {"X-Tenant": "acme"}, {"Host": "ACME.CardVault.Test"}):
            response = await two.get("/api/whoami", headers=headers)
            assert (response.status_code, response.json()["id"]) == (200, str(tenant.id)), headers
        for path, headers, status, code in [
            ("/t/acme/api/whoami", {"X-Tenant": "globex"}, 400, "tenant_conflict"),
            ("/api/whoami", {"Host": "globex.cardvault.test", "X-Tenant": "acme"}, 400, "tenant_conflict"),
            ("/api/whoami", {"Host": "cardvault.test"}, 400, "tenant_required"),
            ("/api/whoami", {}, 400, "tenant_required"),
            ("/t/nobody/api/whoami", {}, 404, "tenant_not_found"),
            ("/api/whoami", {"X-Tenant": "NOT A SLUG"}, 404, "tenant_not_found"),
        ]:
            response = await two.get(path, headers=headers)
            assert (response.status_code, response.json()["error"]) == (status, code), (path, headers)
        hits = other_cache.hits
        assert await answer(two, "acme") == (200, "acme")
        assert other_cache.hits == hits + 1  # warm: served from memory

        # Suspended through the first instance: the second answers 423 within the bound.
        await service.suspend("acme")
        await eventually(lambda: _answers(two, "acme", (423, "tenant_suspended")), what="423 on instance two")
        # Each instance hears the notification on its own connection: poll the first one too.
        await eventually(lambda: _answers(one, "acme", (423, "tenant_suspended")), what="423 on instance one")
        assert await answer(two, "globex") == (200, "globex")  # other tenants unaffected

        await service.resume("acme")
        await eventually(lambda: _answers(two, "acme", (200, "acme")), what="200 again on instance two")

        # A change made behind the service's back (SQL on the registry) is seen the same way.
        await execute(control_dsn, "UPDATE tenants SET status = 'broken' WHERE id = %s", (tenant.id,))
        await eventually(lambda: _answers(two, "acme", (503, "tenant_unavailable")), what="503 on instance two")
        response = await two.get("/t/acme/api/whoami")
        assert response.json()["retry_after"] > 0
        await execute(control_dsn, "UPDATE tenants SET status = 'active' WHERE id = %s", (tenant.id,))
        await eventually(lambda: _answers(two, "acme", (200, "acme")))

        await service.delete("acme")
        await eventually(lambda: _answers(two, "acme", (410, "tenant_deleted")), what="410 on instance two")


async def _answers(client: Client, slug: str, expected: tuple[int, str]) -> bool:
    return await answer(client, slug) == expected


async def test_rename_drops_the_old_slug(
    cache: TenantCache, other_cache: TenantCache, service: TenantService, control_dsn: str
) -> None:
    tenant = await create(service, "acme")
    await settle(other_cache, control_dsn)
    recorder = Recorder()
    other_cache.on_invalidate(recorder)
    assert await other_cache.get_by_slug("acme") is not None
    await service.update("acme", new_slug="acme-two")
    await eventually(lambda: _is_none(other_cache.get_by_slug("acme")), what="old slug unknown on instance two")
    renamed = await other_cache.get_by_slug("acme-two")
    assert renamed is not None and renamed.id == tenant.id and renamed.slug == "acme-two"
    await eventually(lambda: _true(tenant.id in recorder.ids), what="the invalidation callback ran")
    with pytest.raises(TenantNotFound):
        await resolve(other_cache, "acme")


async def test_purge_makes_the_slug_unknown(
    cache: TenantCache, other_cache: TenantCache, service: TenantService
) -> None:
    tenant = await create(service, "acme")
    assert await other_cache.get_by_slug("acme") is not None
    assert await other_cache.credentials(tenant.id)
    await service.delete("acme", now=True)
    await eventually(lambda: _is_none(other_cache.get_by_slug("acme")), what="purged slug unknown on instance two")
    with pytest.raises(TenantNotFound):
        await resolve(other_cache, "acme")
    with pytest.raises(TenantNotFound):
        await other_cache.credentials(tenant.id)


async def test_tenant_created_on_another_instance_is_found(other_cache: TenantCache, service: TenantService) -> None:
    assert await other_cache.get_by_slug("newco") is None  # remembered as unknown, briefly
    assert await other_cache.get_by_slug("newco") is None
    assert other_cache.stats.negative_hits == 1
    await create(service, "newco")
    await eventually(lambda: slug_is(other_cache, "newco", TenantStatus.ACTIVE), what="new tenant on instance two")


# -- credentials -----------------------------------------------------------------------------------


async def test_credentials_connect_as_the_tenant(cache: TenantCache, service: TenantService, control_dsn: str) -> None:
    tenant = await create(service, "acme")
    other = await create(service, "globex")
    await settle(cache, control_dsn)
    dsn = await cache.credentials(tenant.id)
    params = conninfo.conninfo_to_dict(dsn)
    assert (params["user"], params["dbname"]) == (tenant.role_name, tenant.database_name)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT current_user, current_database()")
        assert await cur.fetchone() == (tenant.role_name, tenant.database_name)
    # Its own database only.
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(conninfo.make_conninfo(dsn, dbname=other.database_name))
    assert await cache.credentials(tenant.id) == dsn
    assert (cache.stats.credential_misses, cache.stats.credential_hits) == (1, 1)
    with pytest.raises(TenantNotFound):
        await cache.credentials(uuid.uuid4())

    # Suspend: the cached DSN is dropped (and the role can no longer log in with it).
    invalidations = cache.invalidations
    await service.suspend("acme")
    await eventually(lambda: _true(cache.invalidations > invalidations), what="credentials dropped")
    with pytest.raises(psycopg.OperationalError):
        await psycopg.AsyncConnection.connect(dsn)
    await cache.credentials(tenant.id)
    assert cache.stats.credential_misses == 3  # first read, the unknown id, after the suspend


async def test_server_dsn_change_drops_credentials(
    platform: Platform, cache: TenantCache, service: TenantService, control_dsn: str
) -> None:
    tenant = await create(service, "acme")
    await settle(cache, control_dsn)
    recorder = Recorder()
    cache.on_invalidate(recorder)
    await cache.credentials(tenant.id)
    assert await cache.get_by_slug("acme") is not None
    (server,) = await fetch(control_dsn, "SELECT dsn_encrypted FROM db_servers WHERE id = %s", (tenant.server_id,))
    reencrypted = platform.box.encrypt(platform.box.decrypt(server["dsn_encrypted"]))
    await execute(
        control_dsn, "UPDATE db_servers SET dsn_encrypted = %s WHERE id = %s", (reencrypted, tenant.server_id)
    )
    await eventually(lambda: _true(recorder.ids == [tenant.id]), what="tenants on the server invalidated")
    assert len(cache) == 1  # the lookup itself does not depend on the server's DSN
    await cache.credentials(tenant.id)
    assert cache.stats.credential_misses == 2


# -- losing the listen connection ------------------------------------------------------------------


async def test_lost_listen_connection_clears_and_reconnects(
    cache: TenantCache, service: TenantService, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant = await create(service, "acme")
    await settle(cache, control_dsn)
    resets = cache.stats.resets
    recorder = Recorder()
    cache.on_invalidate(recorder)
    assert await cache.get_by_slug("acme") is not None
    await cache.credentials(tenant.id)
    pid = cache.listener_pid
    assert pid is not None

    (row,) = await fetch(pg_admin_dsn, "SELECT pg_terminate_backend(%s) AS ok", (pid,))
    assert row["ok"]
    await eventually(lambda: _true(cache.stats.resets == resets + 1), within=5, what="cache reset after the loss")
    assert len(cache) == 0
    await eventually(
        lambda: _true(recorder.ids == [tenant.id]), what="callback for every cached tenant"
    )  # the callback hears of every tenant that was cached
    await eventually(lambda: _true(cache.listening), within=10, what="listening again")
    assert cache.listener_pid not in (None, pid)
    assert cache.stats.reconnects == 1

    # And it keeps working: cached again, then a suspend is seen through the new connection.
    misses = cache.misses
    assert await cache.get_by_slug("acme") is not None
    assert await cache.get_by_slug("acme") is not None
    assert (cache.misses, len(cache)) == (misses + 1, 1)
    await service.suspend("acme")
    await eventually(lambda: slug_is(cache, "acme", TenantStatus.SUSPENDED), what="suspend after reconnect")


async def test_start_fails_loudly_without_a_database(platform: Platform) -> None:
    nowhere = DatabaseSettings(url="host=127.0.0.1 port=1 dbname=nothing", connect_timeout=1)
    unreachable = dataclasses.replace(platform, settings=platform.settings.replace(database=nowhere))
    with pytest.raises(ServerUnavailable):
        await TenantCache(unreachable).start()


async def test_listener_retries_until_the_database_is_back(
    cache: TenantCache, service: TenantService, pg_admin_dsn: str, control_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    await create(service, "acme")
    await settle(cache, control_dsn)
    assert await cache.get_by_slug("acme") is not None
    database = sql.Identifier(str(conninfo.conninfo_to_dict(control_dsn)["dbname"]))
    pid = cache.listener_pid
    caplog.set_level("INFO", logger="controlplane.listener")
    await execute(pg_admin_dsn, sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(database))
    try:
        await execute(pg_admin_dsn, "SELECT pg_terminate_backend(%s)", (pid,))
        await eventually(lambda: _true(not cache.listening), within=5, what="deaf after the loss")
        # Deaf: lookups still answer (through the pool's open connection) but nothing is kept.
        assert await cache.get_by_slug("acme") is not None
        assert len(cache) == 0
        await asyncio.sleep(0.5)  # let a few reconnect attempts fail
        assert not cache.listening
    finally:
        await execute(pg_admin_dsn, sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(database))
    await eventually(lambda: _true(cache.listening), within=10, what="listening again")
    back = [r.getMessage() for r in caplog.records if "listening again" in r.getMessage()]
    assert len(back) == 1 and "1 attempt(s)" not in back[0], back
    assert await cache.get_by_slug("acme") is not None
    assert len(cache) == 1
