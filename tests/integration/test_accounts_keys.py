"""The accounts API of a tenant, continued: ``/api-keys``, ``/settings`` and one tenant's admin against
another's accounts, through the real app (rows read straight from the tenant database as the superuser).
"""

from __future__ import annotations

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
    login_as,
    tenant_rows,
    user_id_of,
)

Client = AsyncTestClient[Any]


# -- /api-keys ---------------------------------------------------------------------------------------


async def test_api_keys_lifecycle(client: Client, platform: Platform) -> None:
    t = await create_tenant(client, "keys-ent", tier="enterprise")
    other = await create_tenant(client, "keys-other", tier="enterprise")
    admin_id = await user_id_of(platform, t.slug, t.admin_email)

    response = await client.post(t.api("/api-keys"), json={"name": "reader", "role": "user"}, headers=t.auth)
    assert response.status_code == 201, response.text
    created = response.json()
    no_secrets(created)
    key = created["key"]
    assert key.startswith("cvk_") and created["role"] == "user" and created["created_by"] == admin_id
    assert key.startswith(created["prefix"]) and created["expires_at"] is None and created["last_used_at"] is None

    listed = (await client.get(t.api("/api-keys"), headers=t.auth)).json()
    no_secrets(listed)
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]
    (stored,) = await tenant_rows(platform, t.slug, "SELECT key_hash FROM api_keys")
    assert key.encode() not in bytes(stored["key_hash"])

    # The key works on the card API, with its role's permissions only.
    assert (await client.get(t.api("/cards"), headers=bearer(key))).status_code == 200
    me = (await client.get(t.api("/me"), headers=bearer(key))).json()
    assert me["kind"] == "api_key" and me["role"] == "user"
    made = await client.post(t.api("/manufacturers"), json={"name": "Topps"}, headers=bearer(key))
    error(made, 403, "permission_denied")
    error(await client.get(t.api("/me/sessions"), headers=bearer(key)), 403, "permission_denied")
    assert (await client.get(t.api("/api-keys"), headers=t.auth)).json()[0]["last_used_at"] is not None

    # Another tenant's path: refused before its database is touched.
    error(await client.get(other.api("/cards"), headers=bearer(key)), 403, "wrong_tenant")
    error(await client.get("/api/cards", headers={**bearer(key), "X-Tenant": other.slug}), 403, "wrong_tenant")

    writer = await client.post(
        t.api("/api-keys"), json={"name": "writer", "role": "collection_manager", "expires_in_days": 30}, headers=t.auth
    )
    assert writer.status_code == 201 and writer.json()["expires_at"] is not None
    assert (
        await client.post(t.api("/manufacturers"), json={"name": "Topps"}, headers=bearer(writer.json()["key"]))
    ).status_code == 201

    for bad in (
        {"name": "", "role": "user"},
        {"name": "k", "role": "root"},
        {"name": "k", "role": "user", "expires_in_days": 0},
        {"name": "k", "role": "user", "scope": "all"},
    ):
        error(await client.post(t.api("/api-keys"), json=bad, headers=t.auth), 400, "validation_failed")

    assert (await client.delete(t.api(f"/api-keys/{created['id']}"), headers=t.auth)).status_code == 204
    error(await client.get(t.api("/cards"), headers=bearer(key)), 401, "invalid_token")
    error(await client.delete(t.api("/api-keys/999999"), headers=t.auth), 404, "not_found")
    revoked = [k for k in (await client.get(t.api("/api-keys"), headers=t.auth)).json() if k["id"] == created["id"]]
    assert revoked[0]["revoked_at"] is not None

    creates = await audit_rows(platform, t.slug, "api_key.create")
    assert [r["entity_id"] for r in creates] == [str(created["id"]), str(writer.json()["id"])]
    (revoke,) = await audit_rows(platform, t.slug, "api_key.revoke")
    assert revoke["entity"] == "api_key" and revoke["entity_id"] == str(created["id"])
    assert key not in str([r["details"] for r in await audit_rows(platform, t.slug)])


async def test_api_key_roles_are_capped_by_the_maker(client: Client, platform: Platform) -> None:
    t = await create_tenant(client, "keys-cap", tier="enterprise")
    await add_user(platform, t.slug, "cm@x.test", "collection_manager", permissions={"api_keys:manage": True})
    cm = await login_as(client, t.slug, "cm@x.test")
    error(
        await client.post(t.api("/api-keys"), json={"name": "up", "role": "tenant_admin"}, headers=cm),
        403,
        "permission_denied",
    )
    response = await client.post(t.api("/api-keys"), json={"name": "same", "role": "collection_manager"}, headers=cm)
    assert response.status_code == 201, response.text


async def test_api_keys_need_a_tier_with_api_access(client: Client, platform: Platform) -> None:
    t = await create_tenant(client, "keys-starter", tier="starter")
    body = error(
        await client.post(t.api("/api-keys"), json={"name": "k", "role": "user"}, headers=t.auth),
        403,
        "feature_not_in_tier",
    )
    assert body["tier"] == "starter"
    assert await tenant_rows(platform, t.slug, "SELECT id FROM api_keys") == []


# -- /settings ---------------------------------------------------------------------------------------


async def test_settings_read_and_validated_update(client: Client, platform: Platform) -> None:
    t = await create_tenant(client, "settings")
    response = await client.get(t.api("/settings"), headers=t.auth)
    assert response.status_code == 200, response.text
    assert {k: v for k, v in response.json().items() if k != "updated_at"} == {
        "collection_name": None,
        "default_card_sort": None,
        "locale": None,
        "timezone": None,
    }
    change = {
        "collection_name": "Grandpa's boxes",
        "default_card_sort": "-year",
        "locale": "de-CH",
        "timezone": "Europe/Zurich",
    }
    response = await client.patch(t.api("/settings"), json=change, headers=t.auth)
    assert response.status_code == 200, response.text
    assert {k: response.json()[k] for k in change} == change

    for bad in (
        {"timezone": "Mars/Olympus_Mons"},
        {"timezone": "../../etc/passwd"},
        {"default_card_sort": "price"},
        {"locale": "not a locale"},
        {"locale": "x" * 36},
        {"collection_name": "x" * 201},
        {"collection_name": "a\x00b"},
        {"theme": "dark"},
    ):
        error(await client.patch(t.api("/settings"), json=bad, headers=t.auth), 400, "validation_failed")

    response = await client.patch(t.api("/settings"), json={"collection_name": None}, headers=t.auth)
    assert response.status_code == 200 and response.json()["collection_name"] is None
    assert response.json()["timezone"] == "Europe/Zurich"
    (stored,) = await tenant_rows(platform, t.slug, "SELECT settings FROM tenant_settings")
    assert stored["settings"] == {"default_card_sort": "-year", "locale": "de-CH", "timezone": "Europe/Zurich"}

    first, second = await audit_rows(platform, t.slug, "settings.update")
    assert first["entity"] == "settings" and first["details"]["changed"] == change
    assert second["details"]["changed"] == {"collection_name": None}


# -- isolation ---------------------------------------------------------------------------------------


async def test_one_tenants_admin_cannot_reach_anothers_accounts(client: Client, platform: Platform) -> None:
    alpha = await create_tenant(client, "acc-alpha")
    bravo = await create_tenant(client, "acc-bravo")
    bravo_admin = await user_id_of(platform, bravo.slug, bravo.admin_email)

    paths = ("/users", f"/users/{bravo_admin}", "/api-keys", "/settings", "/me")
    via_header = {**alpha.auth, "X-Tenant": bravo.slug}
    for path in paths:
        error(await client.get(bravo.api(path), headers=alpha.auth), 403, "wrong_tenant")
        error(await client.get(f"/api{path}", headers=via_header), 403, "wrong_tenant")
    patch = {"role": "user", "disabled": True}
    error(await client.patch(bravo.api(f"/users/{bravo_admin}"), json=patch, headers=alpha.auth), 403, "wrong_tenant")
    body = {"email": "spy@x.test", "role": "tenant_admin", "password": USER_PASSWORD}
    error(await client.post(bravo.api("/users"), json=body, headers=alpha.auth), 403, "wrong_tenant")
    error(
        await client.post("/api/users", json=body, headers={**alpha.auth, "X-Tenant": bravo.slug}), 403, "wrong_tenant"
    )
    error(await client.patch(bravo.api("/settings"), json={"locale": "fr"}, headers=alpha.auth), 403, "wrong_tenant")

    rows = await tenant_rows(platform, bravo.slug, "SELECT email, tenant_role, disabled FROM users")
    assert rows == [{"email": bravo.admin_email, "tenant_role": "tenant_admin", "disabled": False}]
    assert not [r for r in await audit_rows(platform, bravo.slug) if r["action"].startswith(("user.", "settings."))]
    # Alpha's own API still answers alpha's users only.
    emails = [u["email"] for u in (await client.get(alpha.api("/users"), headers=alpha.auth)).json()["items"]]
    assert emails == [alpha.admin_email]
