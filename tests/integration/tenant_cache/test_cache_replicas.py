"""The tenant cache across instances: a second instance follows changes made through the first (within
``PROPAGATION``), credentials, and losing the LISTEN connection. See ``test_cache_hits.py`` for the method."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg import conninfo, sql

from controlplane.errors import ServerUnavailable
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import TenantStatus
from controlplane.routing.cache import TenantCache
from controlplane.routing.errors import TenantNotFound
from controlplane.routing.resolver import resolve
from controlplane.settings import DatabaseSettings
from tests.integration.tenant_cache.cache_support import (
    Client,
    Recorder,
    answer,
    create,
    eventually,
    is_none,
    settle,
    slug_is,
    tenant_app,
    truthy,
)
from tests.integration.tenant_support import execute, fetch

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
    await eventually(lambda: is_none(other_cache.get_by_slug("acme")), what="old slug unknown on instance two")
    renamed = await other_cache.get_by_slug("acme-two")
    assert renamed is not None and renamed.id == tenant.id and renamed.slug == "acme-two"
    await eventually(lambda: truthy(tenant.id in recorder.ids), what="the invalidation callback ran")
    with pytest.raises(TenantNotFound):
        await resolve(other_cache, "acme")


async def test_purge_makes_the_slug_unknown(
    cache: TenantCache, other_cache: TenantCache, service: TenantService
) -> None:
    tenant = await create(service, "acme")
    assert await other_cache.get_by_slug("acme") is not None
    assert await other_cache.credentials(tenant.id)
    await service.delete("acme", now=True)
    await eventually(lambda: is_none(other_cache.get_by_slug("acme")), what="purged slug unknown on instance two")
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
    await eventually(lambda: truthy(cache.invalidations > invalidations), what="credentials dropped")
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
    await eventually(lambda: truthy(recorder.ids == [tenant.id]), what="tenants on the server invalidated")
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
    await eventually(lambda: truthy(cache.stats.resets == resets + 1), within=5, what="cache reset after the loss")
    assert len(cache) == 0
    await eventually(
        lambda: truthy(recorder.ids == [tenant.id]), what="callback for every cached tenant"
    )  # the callback hears of every tenant that was cached
    await eventually(lambda: truthy(cache.listening), within=10, what="listening again")
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
        await eventually(lambda: truthy(not cache.listening), within=5, what="deaf after the loss")
        # Deaf: lookups still answer (through the pool's open connection) but nothing is kept.
        assert await cache.get_by_slug("acme") is not None
        assert len(cache) == 0
        await asyncio.sleep(0.5)  # let a few reconnect attempts fail
        assert not cache.listening
    finally:
        await execute(pg_admin_dsn, sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(database))
    await eventually(lambda: truthy(cache.listening), within=10, what="listening again")
    back = [r.getMessage() for r in caplog.records if "listening again" in r.getMessage()]
    assert len(back) == 1 and "1 attempt(s)" not in back[0], back
    assert await cache.get_by_slug("acme") is not None
    assert len(cache) == 1
