"""The last-admin guard of a tenant's accounts: nobody, alone or racing another admin, leaves the tenant
without an enabled tenant_admin who may manage users.

Concurrent changes run through the real app (``asyncio.gather``); outcomes are read straight from the
tenant's database as the superuser.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
from litestar.testing import AsyncTestClient
from psycopg.rows import dict_row

from controlplane.accounts.errors import LastAdmin
from controlplane.accounts.models import UserUpdate
from controlplane.accounts.service import Accounts
from controlplane.auth.models import ROLE_PERMISSIONS, Principal, PrincipalKind, Role
from controlplane.auth.service import Authenticator
from controlplane.context import AuditContext, TenantContext, TenantRequest
from controlplane.errors import PermissionDenied
from controlplane.http.state import AUTH_STATE_KEY
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.registry.models import fixed_limits
from tests.integration.admin_support import assert_error
from tests.integration.auth_support import (
    add_user,
    audit_rows,
    create_tenant,
    impersonate,
    login_as,
    tenant_rows,
    tenant_superuser_dsn,
    user_id_of,
)

Client = AsyncTestClient[Any]


async def test_no_self_lockout_and_the_last_admin_stays(client: Client, platform: Platform) -> None:
    t = await create_tenant(client, "users-admins")
    admin_id = await user_id_of(platform, t.slug, t.admin_email)
    for change in ({"role": "user"}, {"disabled": True}, {"permissions": {"users:manage": False}}):
        assert_error(
            await client.patch(t.api(f"/users/{admin_id}"), json=change, headers=t.auth), 403, "permission_denied"
        )
    response = await client.patch(
        t.api(f"/users/{admin_id}"), json={"display_name": "Me", "role": "tenant_admin"}, headers=t.auth
    )
    assert response.status_code == 200, response.text

    # Only a super-admin acting in the tenant could still demote the last admin: refused.
    imp = await impersonate(client, platform, t.slug)
    for change in ({"role": "collection_manager"}, {"disabled": True}, {"permissions": {"users:manage": False}}):
        assert_error(await client.patch(t.api(f"/users/{admin_id}"), json=change, headers=imp), 409, "last_admin")
    # An invited (not yet accepted) admin does not count as a second one.
    invited = await client.post(t.api("/users"), json={"email": "inv@x.test", "role": "tenant_admin"}, headers=t.auth)
    assert invited.status_code == 201
    assert_error(await client.patch(t.api(f"/users/{admin_id}"), json={"role": "user"}, headers=imp), 409, "last_admin")

    # With a second active admin, one may disable the other; then that one is the last.
    second_id = await add_user(platform, t.slug, "second@x.test", "tenant_admin")
    second = await login_as(client, t.slug, "second@x.test")
    response = await client.patch(t.api(f"/users/{admin_id}"), json={"disabled": True}, headers=second)
    assert response.status_code == 200, response.text
    assert_error(
        await client.patch(t.api(f"/users/{second_id}"), json={"disabled": True}, headers=imp), 409, "last_admin"
    )
    (row,) = await tenant_rows(platform, t.slug, "SELECT tenant_role, disabled FROM users WHERE id = %s", (second_id,))
    assert row == {"tenant_role": "tenant_admin", "disabled": False}
    updates = await audit_rows(platform, t.slug, "user.update")
    impersonated = [r for r in updates if r["details"].get("impersonator")]
    assert impersonated == []  # a refused change is rolled back with its audit row


async def test_concurrent_demotions_leave_one_admin(client: Client, platform: Platform) -> None:
    """Two demotions of the only two admins, each in its own transaction: one waits for the other's
    lock on the admins and then refuses. (The service is driven directly: the test client runs one
    request at a time.)"""
    t = await create_tenant(client, "users-race")
    first = await user_id_of(platform, t.slug, t.admin_email)
    second = await add_user(platform, t.slug, "second@x.test", "tenant_admin")
    dsn = await tenant_superuser_dsn(platform, t.slug)
    async with platform.control.connection() as conn:
        found = await registry.get_by_slug(conn, t.slug)
    assert found is not None
    tenant = TenantContext.of(found)
    principal = Principal(
        kind=PrincipalKind.IMPERSONATION,
        subject="admin:race",
        label="race",
        role=Role.TENANT_ADMIN,
        permissions=ROLE_PERMISSIONS[Role.TENANT_ADMIN],
        tenant_id=tenant.id,
        impersonator=uuid.uuid4(),
    )
    auth: Authenticator = client.app.state[AUTH_STATE_KEY]

    async def demote(user_id: int, change: UserUpdate) -> int:
        async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
            request = TenantRequest(conn=conn, tenant=tenant, principal=principal, audit=AuditContext(actor="test"))
            try:
                await Accounts(request, auth, fixed_limits({})).update_user(user_id, change)
            except LastAdmin:
                await conn.rollback()
                return 409
            await asyncio.sleep(0.2)  # hold the transaction open while the other one runs
            await conn.commit()
            return 200

    results = await asyncio.gather(demote(first, UserUpdate(disabled=True)), demote(second, UserUpdate(role="user")))
    assert sorted(results) == [200, 409]
    admins = await tenant_rows(
        platform, t.slug, "SELECT id FROM users WHERE tenant_role = 'tenant_admin' AND NOT disabled"
    )
    assert len(admins) == 1


async def _as_admin_user(
    client: Client, platform: Platform, slug: str, actor_id: int, target_id: int, change: UserUpdate
) -> int:
    """``update_user`` by the tenant_admin ``actor_id`` (a logged-in user, as its request authorised it) in
    a transaction of its own, held open a moment after the change; 200 or the refusal's status."""
    dsn = await tenant_superuser_dsn(platform, slug)
    async with platform.control.connection() as conn:
        found = await registry.get_by_slug(conn, slug)
    assert found is not None
    tenant = TenantContext.of(found)
    principal = Principal(
        kind=PrincipalKind.USER,
        subject=f"user:{actor_id}",
        label=f"user {actor_id}",
        role=Role.TENANT_ADMIN,
        permissions=ROLE_PERMISSIONS[Role.TENANT_ADMIN],
        tenant_id=tenant.id,
        user_id=actor_id,
        session_id=uuid.uuid4(),
    )
    auth: Authenticator = client.app.state[AUTH_STATE_KEY]
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        request = TenantRequest(conn=conn, tenant=tenant, principal=principal, audit=AuditContext(actor="test"))
        try:
            await Accounts(request, auth, fixed_limits({})).update_user(target_id, change)
        except (LastAdmin, PermissionDenied) as exc:
            await conn.rollback()
            return exc.status
        await asyncio.sleep(0.2)  # hold the transaction open while the other one runs
        await conn.commit()
        return 200


async def test_concurrent_removals_of_users_manage_keep_a_user_manager(client: Client, platform: Platform) -> None:
    """The only two admins take each other's users:manage at the same moment: one waits for the other's
    lock, then refuses (409 last_admin). One admin who can manage users is left, and can."""
    t = await create_tenant(client, "users-perm-race")
    first = await user_id_of(platform, t.slug, t.admin_email)
    second = await add_user(platform, t.slug, "second@x.test", "tenant_admin")
    take = UserUpdate(permissions={"users:manage": False})

    results = await asyncio.gather(
        _as_admin_user(client, platform, t.slug, first, second, take),
        _as_admin_user(client, platform, t.slug, second, first, take),
    )

    assert sorted(results) == [200, 409]
    rows = await tenant_rows(platform, t.slug, "SELECT id, permissions FROM users ORDER BY id")
    able = [r["id"] for r in rows if r["permissions"].get("users:manage") is not False]
    assert len(able) == 1
    manager, other = (first, second) if able == [first] else (second, first)
    headers = t.auth if manager == first else await login_as(client, t.slug, "second@x.test")
    response = await client.patch(t.api(f"/users/{other}"), json={"permissions": {}}, headers=headers)
    assert response.status_code == 200, response.text
    assert "users:manage" in response.json()["effective_permissions"]


async def test_who_counts_as_the_last_user_manager(client: Client, platform: Platform) -> None:
    """Only an enabled tenant_admin holding users:manage keeps the tenant manageable: an admin whose
    users:manage is denied does not count, nor does a collection_manager granted users:manage (it could
    never restore an admin)."""
    t = await create_tenant(client, "users-managers")
    admin_id = await user_id_of(platform, t.slug, t.admin_email)
    await add_user(platform, t.slug, "denied@x.test", "tenant_admin", permissions={"users:manage": False})
    await add_user(platform, t.slug, "cm@x.test", "collection_manager", permissions={"users:manage": True})
    imp = await impersonate(client, platform, t.slug)
    for change in ({"disabled": True}, {"role": "user"}, {"permissions": {"users:manage": False}}):
        assert_error(await client.patch(t.api(f"/users/{admin_id}"), json=change, headers=imp), 409, "last_admin")
    # Another admin who can manage users: now the first one may go.
    await add_user(platform, t.slug, "able@x.test", "tenant_admin")
    response = await client.patch(
        t.api(f"/users/{admin_id}"), json={"permissions": {"users:manage": False}}, headers=imp
    )
    assert response.status_code == 200, response.text


async def test_an_actor_whose_rights_changed_meanwhile_is_refused(client: Client, platform: Platform) -> None:
    """The request was authorised while its admin was one; by the time it holds the lock, the admin was
    demoted (another request, another instance): the change is refused, nothing is written."""
    t = await create_tenant(client, "users-stale-actor")
    second = await add_user(platform, t.slug, "second@x.test", "tenant_admin")
    target = await add_user(platform, t.slug, "target@x.test", "user")
    await tenant_rows(platform, t.slug, "UPDATE users SET tenant_role = 'collection_manager' WHERE id = %s", (second,))

    status = await _as_admin_user(client, platform, t.slug, second, target, UserUpdate(role="collection_manager"))

    assert status == 403
    (row,) = await tenant_rows(platform, t.slug, "SELECT tenant_role FROM users WHERE id = %s", (target,))
    assert row == {"tenant_role": "user"}
