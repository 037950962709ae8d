"""Lifecycle operations close the tenant's pooled connections, on this replica and on every other one.

A tenant that was just served has pooled connections: backends on its server with its own login role
and ``application_name`` 'cardvault-tenant'. Suspending, soft-deleting, purging or renaming it through the
admin API must leave no such backend behind and no open pool for it (``TenantPools.is_open``); once it may
be served again, the next request makes a new pool (new backends) and finds the same data. A second app
instance over the same control database learns of the change by LISTEN/NOTIFY: it stops serving a
suspended tenant within a second and closes its pool too.

What the server sees is read from ``pg_stat_activity`` through separate superuser connections. The app
runs behind Litestar's ``AsyncTestClient`` (its own event loop on a portal thread); its pools are
inspected on that loop through ``client.blocking_portal.call`` so the test never races the app's loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
from litestar.testing import AsyncTestClient
from psycopg.rows import dict_row

from controlplane.app import create_app
from controlplane.http.state import TENANT_POOLS_STATE_KEY
from controlplane.pools.models import APPLICATION_NAME, PoolStats
from controlplane.pools.service import TenantPools
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN, eventually
from tests.integration.tenant_support import provision_with_admin

Client = AsyncTestClient[Any]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def is_open(client: Client, tenant_id: uuid.UUID) -> bool:
    """Whether the app has a pool for the tenant (asked on the app's own event loop)."""
    pools: TenantPools = client.app.state[TENANT_POOLS_STATE_KEY]
    opened: bool = client.blocking_portal.call(pools.is_open, tenant_id)
    return opened


def pool_stats(client: Client) -> PoolStats:
    pools: TenantPools = client.app.state[TENANT_POOLS_STATE_KEY]
    stats: PoolStats = client.blocking_portal.call(pools.stats)
    return stats


async def backends(admin_dsn: str, role: str) -> list[dict[str, Any]]:
    """Sessions of ``role`` on the server (any database)."""
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True, row_factory=dict_row) as conn:
        cur = await conn.execute(
            "SELECT pid, datname, application_name FROM pg_stat_activity WHERE usename = %s ORDER BY pid", (role,)
        )
        return await cur.fetchall()


async def exists(admin_dsn: str, query: str, name: str) -> bool:
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        cur = await conn.execute(query, (name,))
        return await cur.fetchone() is not None


class Tenant:
    def __init__(self, body: dict[str, Any], auth: dict[str, str]) -> None:
        self.id = uuid.UUID(body["id"])
        self.slug: str = body["slug"]
        self.role: str = body["role_name"]
        self.database: str = body["database_name"]
        #: ``Authorization`` header of the tenant's admin (bound to the tenant, so it outlives a rename).
        self.auth = auth


async def create_tenant(client: Client, slug: str) -> Tenant:
    body, auth = await provision_with_admin(client, slug)
    assert body["role_name"] == body["database_name"], body
    return Tenant(body, auth)


async def admin(client: Client, method: str, path: str, status: int, **kwargs: Any) -> None:
    response = await client.request(method, path, headers=ADMIN, **kwargs)
    assert response.status_code == status, response.text


async def team_names(client: Client, tenant: Tenant, slug: str) -> list[str]:
    response = await client.get(f"/t/{slug}/api/teams", headers=tenant.auth)
    assert response.status_code == 200, response.text
    return [t["name"] for t in response.json()["items"]]


async def refused(client: Client, tenant: Tenant, slug: str, status: int, code: str) -> None:
    response = await client.get(f"/t/{slug}/api/teams", headers=tenant.auth)
    assert (response.status_code, response.json()["error"]) == (status, code), response.text


async def served_with_pool(client: Client, admin_dsn: str, tenant: Tenant, slug: str) -> set[int]:
    """Serve a request (the tenant's data is there) and return the pids of its pooled backends.

    The NOTIFY of the operation that just ran may reach the listener only after a first request made a
    pool, and (rightly) closes it: serve until a pool stays open.
    """

    async def serve() -> bool:
        assert await team_names(client, tenant, slug) == ["Tigers"]
        return is_open(client, tenant.id)

    await eventually(serve, "a served tenant has an open pool")
    sessions = await backends(admin_dsn, tenant.role)
    assert sessions, "a served tenant has a pooled connection"
    for session in sessions:
        assert (session["application_name"], session["datname"]) == (APPLICATION_NAME, tenant.database), session
    return {s["pid"] for s in sessions}


async def assert_pool_gone(client: Client, admin_dsn: str, tenant: Tenant) -> None:
    """No backend of the tenant's role is left on the server and the app holds no pool for it."""

    async def no_backends() -> bool:
        return not await backends(admin_dsn, tenant.role)

    await eventually(no_backends, f"no session of {tenant.role} is left")
    assert not is_open(client, tenant.id)
    await eventually(lambda: pool_stats(client).open_pools == 0, "the tenant's pool is closed, not just dropped")


async def new_tenant_with_data(client: Client, slug: str) -> Tenant:
    tenant = await create_tenant(client, slug)
    response = await client.post(f"/t/{slug}/api/teams", json={"name": "Tigers"}, headers=tenant.auth)
    assert response.status_code == 201, response.text
    return tenant


# -- one app --------------------------------------------------------------------------------------------


async def test_suspend_closes_the_pool_and_resume_makes_a_new_one(client: Client, pg_admin_dsn: str) -> None:
    tenant = await new_tenant_with_data(client, "acme")
    before = await served_with_pool(client, pg_admin_dsn, tenant, "acme")
    misses = pool_stats(client).misses

    await admin(client, "POST", "/admin/tenants/acme/suspend", 200)
    await assert_pool_gone(client, pg_admin_dsn, tenant)
    await refused(client, tenant, "acme", 423, "tenant_suspended")
    assert not is_open(client, tenant.id)

    await admin(client, "POST", "/admin/tenants/acme/resume", 200)
    after = await served_with_pool(client, pg_admin_dsn, tenant, "acme")
    assert not after & before, "the old pooled sessions are gone; the new pool made its own"
    # One new pool; a second one only if the resume's notification arrived after the first request had
    # made a pool (the replica forgets its own change at once; the pool closes with the notification).
    assert misses + 1 <= pool_stats(client).misses <= misses + 2


async def test_soft_delete_closes_the_pool_and_purge_leaves_nothing(client: Client, pg_admin_dsn: str) -> None:
    tenant = await new_tenant_with_data(client, "acme")
    before = await served_with_pool(client, pg_admin_dsn, tenant, "acme")

    await admin(client, "DELETE", "/admin/tenants/acme", 200)
    await assert_pool_gone(client, pg_admin_dsn, tenant)
    await refused(client, tenant, "acme", 410, "tenant_deleted")

    # Resuming cancels the deletion: served again from a new pool, data intact.
    await admin(client, "POST", "/admin/tenants/acme/resume", 200)
    again = await served_with_pool(client, pg_admin_dsn, tenant, "acme")
    assert not again & before

    # Purge: no session, no pool, no database, no role.
    await admin(client, "DELETE", "/admin/tenants/acme", 204, params={"now": "true"})
    await assert_pool_gone(client, pg_admin_dsn, tenant)
    assert not await exists(pg_admin_dsn, "SELECT 1 FROM pg_database WHERE datname = %s", tenant.database)
    assert not await exists(pg_admin_dsn, "SELECT 1 FROM pg_roles WHERE rolname = %s", tenant.role)
    await refused(client, tenant, "acme", 404, "tenant_not_found")
    assert not is_open(client, tenant.id)


async def test_rename_invalidates_the_pool_and_the_new_slug_serves_the_same_data(
    client: Client, pg_admin_dsn: str
) -> None:
    tenant = await new_tenant_with_data(client, "acme")
    before = await served_with_pool(client, pg_admin_dsn, tenant, "acme")

    await admin(client, "PATCH", "/admin/tenants/acme", 200, json={"slug": "acme-cards"})
    # Nothing on the server ends these sessions (the role and database are unchanged): only the app
    # closing the invalidated pool does.
    await eventually(lambda: not is_open(client, tenant.id), "the renamed tenant's pool is invalidated")

    async def old_sessions_gone() -> bool:
        return not {s["pid"] for s in await backends(pg_admin_dsn, tenant.role)} & before

    await eventually(old_sessions_gone, "the invalidated pool closed its connections")

    await refused(client, tenant, "acme", 404, "tenant_not_found")
    after = await served_with_pool(client, pg_admin_dsn, tenant, "acme-cards")
    assert not after & before


# -- two app instances ----------------------------------------------------------------------------------


async def test_a_second_instance_stops_serving_a_suspended_tenant_within_a_second(
    settings: Settings, pg_admin_dsn: str
) -> None:
    async with AsyncTestClient(app=create_app(settings)) as first, AsyncTestClient(app=create_app(settings)) as other:
        tenant = await new_tenant_with_data(first, "acme")
        # Both instances serve it and hold a pool for it.
        assert await team_names(first, tenant, "acme") == ["Tigers"]
        assert await team_names(other, tenant, "acme") == ["Tigers"]
        assert is_open(first, tenant.id) and is_open(other, tenant.id)
        assert len(await backends(pg_admin_dsn, tenant.role)) >= 2

        await admin(first, "POST", "/admin/tenants/acme/suspend", 200)
        deadline = time.monotonic() + 1.0
        # No request reaches the other instance meanwhile: only the notification can close its pool.
        while is_open(other, tenant.id):
            assert time.monotonic() < deadline, "the other instance still holds a pool for the suspended tenant"
            await asyncio.sleep(0.01)
        response = await other.get("/t/acme/api/teams", headers=tenant.auth)
        assert (response.status_code, response.json()["error"]) == (423, "tenant_suspended"), response.text
        assert time.monotonic() < deadline, "the other instance served the suspended tenant for over a second"

        # Its pool is closed, not just dropped, and no session of the tenant is left anywhere.
        await assert_pool_gone(other, pg_admin_dsn, tenant)
        await assert_pool_gone(first, pg_admin_dsn, tenant)

        # Resumed through the first: the other one serves it again, from a new pool.
        await admin(first, "POST", "/admin/tenants/acme/resume", 200)

        async def served_by_other() -> bool:
            response = await other.get("/t/acme/api/teams", headers=tenant.auth)
            return response.status_code == 200 and [t["name"] for t in response.json()["items"]] == ["Tigers"]

        await eventually(served_by_other, "the other instance serves the resumed tenant")
        assert is_open(other, tenant.id)

        # A rename leaves the server alone (the old pool still works): only the notification makes the
        # other instance drop the old slug, within a second as well.
        await admin(first, "PATCH", "/admin/tenants/acme", 200, json={"slug": "acme-cards"})
        deadline = time.monotonic() + 1.0
        while (response := await other.get("/t/acme/api/teams", headers=tenant.auth)).status_code != 404:
            assert response.status_code == 200, response.text
            assert time.monotonic() < deadline, "the other instance still serves the old slug"
            await asyncio.sleep(0.01)
        assert response.json()["error"] == "tenant_not_found"
        assert await team_names(other, tenant, "acme-cards") == ["Tigers"]


async def test_an_instance_that_has_not_heard_of_the_change_yet_answers_the_new_status_not_503(
    settings: Settings, pg_admin_dsn: str, control_dsn: str
) -> None:
    """Between a suspend (or delete) through one instance and its notification reaching another, the
    other's cache still says active while the server already refuses the tenant's role: the refusal
    makes it ask the registry, so the client gets 423 (410), not 503. The notification is held back
    here by disabling the registry's update trigger, which makes that window last."""
    async with AsyncTestClient(app=create_app(settings)) as first, AsyncTestClient(app=create_app(settings)) as other:
        acme = await new_tenant_with_data(first, "acme")
        gone = await new_tenant_with_data(first, "gone")
        for tenant in (acme, gone):
            await served_with_pool(other, pg_admin_dsn, tenant, tenant.slug)
        async with await psycopg.AsyncConnection.connect(control_dsn, autocommit=True) as control:
            await control.execute("ALTER TABLE tenants DISABLE TRIGGER tenants_notify_update")
            try:
                await admin(first, "POST", "/admin/tenants/acme/suspend", 200)
                await admin(first, "DELETE", "/admin/tenants/gone", 200)
                assert is_open(other, acme.id) and is_open(other, gone.id), "nothing told the other instance"
                await refused(other, acme, "acme", 423, "tenant_suspended")
                await refused(other, gone, "gone", 410, "tenant_deleted")
            finally:
                await control.execute("ALTER TABLE tenants ENABLE TRIGGER tenants_notify_update")
        for tenant in (acme, gone):
            await assert_pool_gone(other, pg_admin_dsn, tenant)
