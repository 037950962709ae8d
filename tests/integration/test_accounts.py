"""The accounts API of a tenant (``/me``, ``/users``) through the real app; API keys, settings and isolation
are in ``test_accounts_keys.py``.

Outcomes are checked around the code under test where it matters: users, sessions, keys and the
``audit_log`` are read straight from the tenant's database as the superuser.
"""

from __future__ import annotations

import uuid
from typing import Any

from litestar.testing import AsyncTestClient

from controlplane.platform import Platform
from tests.integration.accounts_support import error, no_secrets
from tests.integration.auth_support import (
    USER_PASSWORD,
    add_user,
    audit_rows,
    bearer,
    create_tenant,
    impersonate,
    login,
    login_as,
    tenant_rows,
    user_id_of,
)

Client = AsyncTestClient[Any]

# -- /me ---------------------------------------------------------------------------------------------


async def test_me_profile_and_display_name(client: Client, platform: Platform) -> None:
    t = await create_tenant(client, "me-profile")
    response = await client.get(t.api("/me"), headers=t.auth)
    assert response.status_code == 200, response.text
    me = response.json()
    assert me["kind"] == "user" and me["email"] == t.admin_email and me["role"] == "tenant_admin"
    assert {"users:manage", "api_keys:manage", "settings:manage", "self"} <= set(me["permissions"])
    assert me["id"] == await user_id_of(platform, t.slug, t.admin_email)

    response = await client.patch(t.api("/me"), json={"display_name": "The Admin"}, headers=t.auth)
    assert response.status_code == 200, response.text
    assert response.json()["display_name"] == "The Admin"
    assert (await client.get("/api/me", headers={**t.auth, "X-Tenant": t.slug})).json()["display_name"] == "The Admin"

    for bad in ({"display_name": "x\x00y"}, {"display_name": "   "}, {"email": "a@b.c"}, {"display_name": 5}):
        error(await client.patch(t.api("/me"), json=bad, headers=t.auth), 400, "validation_failed")
    (row,) = await audit_rows(platform, t.slug, "me.update")
    assert row["entity"] == "user" and row["entity_id"] == str(me["id"]) and row["actor"] == f"user:{me['id']}"

    # A user without users:read still sees themself.
    await add_user(platform, t.slug, "plain@x.test", "user")
    plain = await login_as(client, t.slug, "plain@x.test")
    response = await client.get(t.api("/me"), headers=plain)
    assert response.status_code == 200 and response.json()["role"] == "user"
    assert "users:read" not in response.json()["permissions"]


async def test_password_change_keeps_this_session_and_ends_the_others(client: Client, platform: Platform) -> None:
    t = await create_tenant(client, "me-password")
    user_id = await add_user(platform, t.slug, "pw@x.test", "user")
    here = await login_as(client, t.slug, "pw@x.test")
    elsewhere = await login_as(client, t.slug, "pw@x.test")
    new = "a much better passphrase"

    wrong = {"current_password": "not my password", "new_password": new}
    error(await client.put(t.api("/me/password"), json=wrong, headers=here), 403, "wrong_password")
    short = {"current_password": USER_PASSWORD, "new_password": "short"}
    error(await client.put(t.api("/me/password"), json=short, headers=here), 400, "validation_failed")
    extra = {"current_password": USER_PASSWORD, "new_password": new, "user_id": 1}
    error(await client.put(t.api("/me/password"), json=extra, headers=here), 400, "validation_failed")

    response = await client.put(
        t.api("/me/password"), json={"current_password": USER_PASSWORD, "new_password": new}, headers=here
    )
    assert response.status_code == 204, response.text
    assert (await client.get(t.api("/me"), headers=here)).status_code == 200
    error(await client.get(t.api("/me"), headers=elsewhere), 401, "invalid_token")
    bad_login = await client.post(f"/t/{t.slug}/auth/token", json={"email": "pw@x.test", "password": USER_PASSWORD})
    assert bad_login.status_code == 401
    await login(client, t.slug, "pw@x.test", new)

    (row,) = await audit_rows(platform, t.slug, "me.password")
    assert row["entity_id"] == str(user_id) and row["details"]["sessions_ended"] == 1
    assert new not in str(row["details"]) and USER_PASSWORD not in str(row["details"])


async def test_identities_without_a_user_row_have_no_password_or_sessions(client: Client, platform: Platform) -> None:
    t = await create_tenant(client, "me-imp")
    imp = await impersonate(client, platform, t.slug)
    me = (await client.get(t.api("/me"), headers=imp)).json()
    assert me["kind"] == "impersonation" and me["id"] is None and me["email"] is None
    body = {"current_password": "whatever it was", "new_password": "a much better passphrase"}
    detail = error(await client.put(t.api("/me/password"), json=body, headers=imp), 403, "permission_denied")
    assert "impersonation" in detail["detail"]
    error(await client.get(t.api("/me/sessions"), headers=imp), 403, "permission_denied")
    error(await client.patch(t.api("/me"), json={"display_name": "x"}, headers=imp), 403, "permission_denied")


async def test_sessions_list_and_revoke(client: Client, platform: Platform) -> None:
    t = await create_tenant(client, "me-sessions")
    user_id = await add_user(platform, t.slug, "s@x.test", "user")
    first = await login_as(client, t.slug, "s@x.test")
    second = await login_as(client, t.slug, "s@x.test")

    response = await client.get(t.api("/me/sessions"), headers=first)
    assert response.status_code == 200, response.text
    sessions = response.json()
    no_secrets(sessions)
    assert len(sessions) == 2 and sum(s["current"] for s in sessions) == 1
    other = next(s["id"] for s in sessions if not s["current"])

    # Someone else's session is not mine to end (404, and it stays live).
    admin_sessions = (await client.get(t.api("/me/sessions"), headers=t.auth)).json()
    error(await client.delete(t.api(f"/me/sessions/{admin_sessions[0]['id']}"), headers=first), 404, "not_found")
    assert (await client.get(t.api("/me"), headers=t.auth)).status_code == 200

    assert (await client.delete(t.api(f"/me/sessions/{other}"), headers=first)).status_code == 204
    error(await client.get(t.api("/me"), headers=second), 401, "invalid_token")
    assert (await client.get(t.api("/me"), headers=first)).status_code == 200
    error(await client.delete(t.api(f"/me/sessions/{other}"), headers=first), 404, "not_found")
    error(await client.delete(t.api(f"/me/sessions/{uuid.uuid4()}"), headers=first), 404, "not_found")
    assert (await client.delete(t.api("/me/sessions/not-a-uuid"), headers=first)).status_code in (400, 404)

    (row,) = await audit_rows(platform, t.slug, "session.revoke")
    assert row["entity"] == "session" and row["entity_id"] == other and row["details"]["user_id"] == user_id


# -- /users ------------------------------------------------------------------------------------------


async def test_users_create_list_get(client: Client, platform: Platform) -> None:
    t = await create_tenant(client, "users-crud")
    created = []
    for i, role in enumerate(("user", "collection_manager", "tenant_admin")):
        body = {"email": f"U{i}@X.test", "role": role, "password": USER_PASSWORD, "display_name": f"U {i}"}
        response = await client.post(t.api("/users"), json=body, headers=t.auth)
        assert response.status_code == 201, response.text
        user = response.json()
        no_secrets(user)
        assert user["role"] == role and user["invited"] is False and user["invite_token"] is None
        created.append(user)
    await login(client, t.slug, "u0@x.test")  # email look-up is case-insensitive

    granted = await client.post(
        t.api("/users"),
        json={"email": "g@x.test", "role": "user", "password": USER_PASSWORD, "permissions": {"catalog:write": True}},
        headers=t.auth,
    )
    assert granted.status_code == 201, granted.text
    assert granted.json()["permissions"] == {"catalog:write": True}
    assert "catalog:write" in granted.json()["effective_permissions"]

    # Keyset pages by id cover every user exactly once.
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await client.get(t.api("/users"), params=params, headers=t.auth)
        assert response.status_code == 200, response.text
        page = response.json()
        no_secrets(page)
        assert len(page["items"]) <= 2
        seen += [u["id"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 5

    response = await client.get(t.api(f"/users/{created[1]['id']}"), headers=t.auth)
    assert response.status_code == 200 and response.json()["email"] == "U1@X.test"
    error(await client.get(t.api("/users/999999"), headers=t.auth), 404, "not_found")
    error(await client.get(t.api(f"/users/{2**63}"), headers=t.auth), 404, "not_found")
    error(await client.get(t.api("/users"), params={"cursor": "garbage"}, headers=t.auth), 400, "invalid_cursor")
    error(await client.get(t.api("/users"), params={"limit": 0}, headers=t.auth), 400, "validation_failed")

    dup = {"email": "u2@x.TEST", "role": "user", "password": USER_PASSWORD}
    error(await client.post(t.api("/users"), json=dup, headers=t.auth), 409, "email_taken")
    for bad in (
        {"email": "not-an-email", "role": "user", "password": USER_PASSWORD},
        {"email": "a b@x.test", "role": "user", "password": USER_PASSWORD},
        {"email": "r@x.test", "role": "super_admin", "password": USER_PASSWORD},
        {"email": "r@x.test", "role": "user", "password": "short"},
        {"email": "r@x.test", "role": "user", "permissions": {"no:such": True}},
        {"email": "r@x.test", "role": "user", "permissions": {"cards:read": "yes"}},
        {"email": "r\x00@x.test", "role": "user"},
        {"email": "r@x.test", "role": "user", "is_admin": True},
    ):
        error(await client.post(t.api("/users"), json=bad, headers=t.auth), 400, "validation_failed")
    assert (await tenant_rows(platform, t.slug, "SELECT count(*) AS n FROM users"))[0]["n"] == 5

    rows = await audit_rows(platform, t.slug, "user.create")
    assert [r["entity_id"] for r in rows] == [str(u["id"]) for u in created] + [str(granted.json()["id"])]
    assert rows[0]["details"]["email"] == "U0@X.test" and rows[0]["details"]["invited"] is False
    assert all(USER_PASSWORD not in str(r["details"]) for r in rows)


async def test_permission_boundaries(client: Client, platform: Platform) -> None:
    t = await create_tenant(client, "users-perms")
    target = await add_user(platform, t.slug, "target@x.test", "user")
    for role in ("user", "collection_manager"):
        await add_user(platform, t.slug, f"{role}@x.test", role)
        auth = await login_as(client, t.slug, f"{role}@x.test")
        writes = [
            client.get(t.api("/users"), headers=auth),
            client.get(t.api(f"/users/{target}"), headers=auth),
            client.post(t.api("/users"), json={"email": "n@x.test", "role": "user"}, headers=auth),
            client.patch(t.api(f"/users/{target}"), json={"disabled": True}, headers=auth),
            client.post(t.api(f"/users/{target}/invitation"), headers=auth),
            client.get(t.api("/api-keys"), headers=auth),
            client.post(t.api("/api-keys"), json={"name": "k", "role": "user"}, headers=auth),
            client.delete(t.api("/api-keys/1"), headers=auth),
            client.patch(t.api("/settings"), json={"locale": "de"}, headers=auth),
        ]
        for request in writes:
            error(await request, 403, "permission_denied")
        assert (await client.get(t.api("/settings"), headers=auth)).status_code == 200
        assert (await client.get(t.api("/me"), headers=auth)).status_code == 200
    assert (await client.get(t.api("/users"), headers=t.auth)).status_code == 200
    assert (await client.patch(t.api("/settings"), json={"locale": "de"}, headers=t.auth)).status_code == 200
    assert not await audit_rows(platform, t.slug, "user.update")
    (disabled,) = await tenant_rows(platform, t.slug, "SELECT disabled FROM users WHERE id = %s", (target,))
    assert disabled == {"disabled": False}


async def test_nobody_hands_out_more_than_they_have(client: Client, platform: Platform) -> None:
    t = await create_tenant(client, "users-escalate")
    grants = {"users:read": True, "users:manage": True}
    await add_user(platform, t.slug, "cm@x.test", "collection_manager", permissions=grants)
    cm = await login_as(client, t.slug, "cm@x.test")
    cm_id = await user_id_of(platform, t.slug, "cm@x.test")
    admin_id = await user_id_of(platform, t.slug, t.admin_email)

    up = {"email": "boss@x.test", "role": "tenant_admin", "password": USER_PASSWORD}
    error(await client.post(t.api("/users"), json=up, headers=cm), 403, "permission_denied")
    sneaky = {"email": "k@x.test", "role": "user", "password": USER_PASSWORD, "permissions": {"api_keys:manage": True}}
    error(await client.post(t.api("/users"), json=sneaky, headers=cm), 403, "permission_denied")
    error(
        await client.patch(t.api(f"/users/{admin_id}"), json={"disabled": True}, headers=cm), 403, "permission_denied"
    )
    error(await client.patch(t.api(f"/users/{cm_id}"), json={"permissions": {}}, headers=cm), 403, "permission_denied")
    ok = {"email": "ok@x.test", "role": "user", "password": USER_PASSWORD, "permissions": {"catalog:write": True}}
    assert (await client.post(t.api("/users"), json=ok, headers=cm)).status_code == 201


async def test_users_quota_refuses_and_inserts_nothing(client: Client, platform: Platform) -> None:
    starter = await create_tenant(client, "users-starter", tier="starter")  # users quota 1: the admin
    for body in (
        {"email": "two@x.test", "role": "user", "password": USER_PASSWORD},
        {"email": "invited@x.test", "role": "user"},
    ):
        detail = error(await client.post(starter.api("/users"), json=body, headers=starter.auth), 403, "quota_exceeded")
        assert detail["quota"] == "users" and detail["limit"] == 1 and detail["usage"] == 1
    assert (await tenant_rows(platform, starter.slug, "SELECT count(*) AS n FROM users"))[0]["n"] == 1
    assert not await audit_rows(platform, starter.slug, "user.create")

    # Invitations count: professional allows 10 users, the admin plus 9 invitations fill it.
    pro = await create_tenant(client, "users-pro")
    for i in range(9):
        response = await client.post(
            pro.api("/users"), json={"email": f"i{i}@x.test", "role": "user"}, headers=pro.auth
        )
        assert response.status_code == 201, response.text
    last = await client.post(pro.api("/users"), json={"email": "i9@x.test", "role": "user"}, headers=pro.auth)
    error(last, 403, "quota_exceeded")


async def test_invitation_accept_login_and_reissue(client: Client, platform: Platform) -> None:
    t = await create_tenant(client, "users-invite")
    response = await client.post(
        t.api("/users"), json={"email": "new@x.test", "role": "collection_manager"}, headers=t.auth
    )
    assert response.status_code == 201, response.text
    invited = response.json()
    token = invited["invite_token"]
    assert invited["invited"] is True and token and invited["invite_expires_at"]
    no_secrets(invited)
    (row,) = await tenant_rows(
        platform, t.slug, "SELECT password_hash, invite_hash FROM users WHERE id = %s", (invited["id"],)
    )
    assert row["password_hash"] == "" and row["invite_hash"] and token.encode() not in bytes(row["invite_hash"])
    # The token is in no later answer.
    listed = (await client.get(t.api(f"/users/{invited['id']}"), headers=t.auth)).json()
    assert "invite_token" not in listed and listed["invited"] is True

    # Not usable before it is accepted (the empty hash never verifies).
    bad = await client.post(f"/t/{t.slug}/auth/token", json={"email": "new@x.test", "password": USER_PASSWORD})
    error(bad, 401, "invalid_credentials")

    accept = f"/t/{t.slug}/auth/invitations/accept"
    chosen = "my own new passphrase"
    response = await client.post(accept, json={"invite_token": token, "password": chosen})
    assert response.status_code == 200, response.text
    assert (await client.get(t.api("/me"), headers=bearer(response.json()["access_token"]))).status_code == 200
    await login(client, t.slug, "new@x.test", chosen)
    assert (await client.post(accept, json={"invite_token": token, "password": chosen})).status_code == 401
    assert (await client.get(t.api(f"/users/{invited['id']}"), headers=t.auth)).json()["invited"] is False
    error(await client.post(t.api(f"/users/{invited['id']}/invitation"), headers=t.auth), 409, "invitation_accepted")
    error(await client.post(t.api("/users/999999/invitation"), headers=t.auth), 404, "not_found")

    # An expired invitation is refused; a re-issued one replaces it.
    response = await client.post(t.api("/users"), json={"email": "late@x.test", "role": "user"}, headers=t.auth)
    late = response.json()
    await tenant_rows(
        platform,
        t.slug,
        "UPDATE users SET invite_expires_at = now() - interval '1 second' WHERE id = %s",
        (late["id"],),
    )
    assert (
        await client.post(accept, json={"invite_token": late["invite_token"], "password": chosen})
    ).status_code == 401
    response = await client.post(t.api(f"/users/{late['id']}/invitation"), headers=t.auth)
    assert response.status_code == 200, response.text
    fresh = response.json()["invite_token"]
    assert fresh and fresh != late["invite_token"]
    assert (
        await client.post(accept, json={"invite_token": late["invite_token"], "password": chosen})
    ).status_code == 401
    assert (await client.post(accept, json={"invite_token": fresh, "password": chosen})).status_code == 200

    creates = await audit_rows(platform, t.slug, "user.create")
    assert [r["details"]["invited"] for r in creates] == [True, True]
    (reissue,) = await audit_rows(platform, t.slug, "user.invite")
    assert reissue["entity_id"] == str(late["id"])
    details = str([r["details"] for r in await audit_rows(platform, t.slug)])
    assert token not in details and fresh not in details


async def test_disabling_a_user_ends_their_access_at_once(client: Client, platform: Platform) -> None:
    t = await create_tenant(client, "users-disable")
    user_id = await add_user(platform, t.slug, "gone@x.test", "collection_manager")
    auth = await login_as(client, t.slug, "gone@x.test")
    assert (await client.get(t.api("/me"), headers=auth)).status_code == 200

    response = await client.patch(t.api(f"/users/{user_id}"), json={"disabled": True}, headers=t.auth)
    assert response.status_code == 200, response.text
    assert response.json()["disabled"] is True
    error(await client.get(t.api("/me"), headers=auth), 401, "invalid_token")
    login_again = await client.post(f"/t/{t.slug}/auth/token", json={"email": "gone@x.test", "password": USER_PASSWORD})
    assert login_again.status_code == 401
    live = await tenant_rows(
        platform, t.slug, "SELECT id FROM auth_sessions WHERE user_id = %s AND revoked_at IS NULL", (user_id,)
    )
    assert live == []

    # Role, permissions and display name change; enabling lets them log in again.
    change = {"role": "user", "permissions": {"cards:write_own": False}, "display_name": "G", "disabled": False}
    response = await client.patch(t.api(f"/users/{user_id}"), json=change, headers=t.auth)
    assert response.status_code == 200, response.text
    user = response.json()
    assert user["role"] == "user" and user["disabled"] is False and user["display_name"] == "G"
    assert "cards:write_own" not in user["effective_permissions"]
    relogged = await login_as(client, t.slug, "gone@x.test")
    me = (await client.get(t.api("/me"), headers=relogged)).json()
    assert me["role"] == "user" and "cards:write_own" not in me["permissions"]
    error(await client.patch(t.api("/users/999999"), json={"display_name": "x"}, headers=t.auth), 404, "not_found")
    error(
        await client.patch(t.api(f"/users/{user_id}"), json={"role": "owner"}, headers=t.auth), 400, "validation_failed"
    )

    first, second = await audit_rows(platform, t.slug, "user.update")
    assert first["entity_id"] == str(user_id) and first["details"]["disabled"] is True
    assert first["details"]["sessions_ended"] == 1
    assert second["details"]["tenant_role"] == "user"
