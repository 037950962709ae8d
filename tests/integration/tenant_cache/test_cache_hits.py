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
import uuid

import psycopg
from psycopg import sql

from controlplane.context import TenantContext
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import TenantStatus
from controlplane.routing.cache import SERVERS_CHANNEL, TENANTS_CHANNEL, TenantCache
from controlplane.routing.resolver import resolve
from controlplane.schemas.alembic_runner import registry_scripts
from controlplane.settings import ProvisioningSettings
from tests.integration.tenant_cache.cache_support import (
    LockedRegistry,
    Recorder,
    create,
    eventually,
    positive,
    settle,
    truthy,
)
from tests.integration.tenant_support import execute, fetch

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
    count = (  # 0002's triggers (later revisions notify from other tables too)
        "SELECT count(*) AS n FROM pg_trigger WHERE tgname LIKE '%%notify%%' AND NOT tgisinternal"
        " AND tgrelid IN ('tenants'::regclass, 'db_servers'::regclass)"
    )
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
        await eventually(lambda: positive(locked.waiters()), within=5, what="the miss waits for the lock")
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
        await eventually(lambda: positive(locked.waiters()), within=5, what="the read waits for the lock")
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
        await eventually(lambda: truthy(marker in recorder.ids), within=5, what="the marker's callback")
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
    await eventually(lambda: truthy(recorder.ids == [tenant.id]), what="callback without a notification")
