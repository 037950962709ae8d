"""Enterprise SSO settings: the super-admin and tenant-admin APIs (enterprise tier only, the client secret
stored encrypted and never returned, another tenant refused) and the password-login switch with its
break-glass (a super-admin's impersonation)."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from controlplane.keys import repository as keys
from controlplane.platform import Platform
from controlplane.settings import Settings
from tests.integration.auth_support import bearer, create_tenant, super_admin

SECRET = "s3cret-client-value-never-shown"


def _body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "issuer": "http://127.0.0.1:9",  # nothing listens there
        "client_id": "cardvault",
        "allowed_domains": ["Acme.test"],
        "default_role": "user",
    }
    return {**body, **extra}


async def _stored(platform: Platform, tenant_id: Any) -> dict[str, Any] | None:
    async with platform.control.connection() as conn:
        cur = await conn.execute("SELECT * FROM tenant_sso WHERE tenant_id = %s", (tenant_id,))
        return await cur.fetchone()


async def test_sso_needs_the_enterprise_tier(client: AsyncTestClient[Any]) -> None:
    t = await create_tenant(client, "sso-pro", tier="professional")
    response = await client.put(t.api("/sso"), json=_body(client_secret=SECRET), headers=t.auth)
    assert response.status_code == 403 and response.json()["error"] == "sso_not_in_tier", response.text
    response = await client.put(f"/admin/tenants/{t.slug}/sso", json=_body(client_secret=SECRET))
    assert response.status_code == 403 and response.json()["error"] == "sso_not_in_tier", response.text
    response = await client.get(t.api("/sso"), headers=t.auth)
    assert response.status_code == 403 and response.json()["error"] == "sso_not_in_tier"
    response = await client.get(f"/t/{t.slug}/auth/sso/start", follow_redirects=False)
    assert response.status_code == 403 and response.json()["error"] == "sso_not_in_tier"
    # Password login untouched.
    login = {"email": t.admin_email, "password": t.admin_password}
    assert (await client.post(f"/t/{t.slug}/auth/token", json=login)).status_code == 200


async def test_sso_settings_apis_keep_the_secret(
    client: AsyncTestClient[Any], platform: Platform, settings: Settings
) -> None:
    t = await create_tenant(client, "sso-ent", tier="enterprise")
    # First set needs the secret.
    response = await client.put(f"/admin/tenants/{t.slug}/sso", json=_body())
    assert response.status_code == 400 and response.json()["error"] == "validation_failed", response.text
    response = await client.get(f"/admin/tenants/{t.slug}/sso")
    assert response.status_code == 404 and response.json()["error"] == "sso_not_configured"

    response = await client.put(f"/admin/tenants/{t.slug}/sso", json=_body(client_secret=SECRET))
    assert response.status_code == 200, response.text
    shown = response.json()
    assert SECRET not in response.text and "client_secret" not in shown
    assert shown["client_secret_set"] is True and shown["allowed_domains"] == ["acme.test"]
    row = await _stored(platform, t.id)
    assert row is not None and SECRET not in row["client_secret_encrypted"]
    assert platform.box.decrypt(row["client_secret_encrypted"]) == SECRET
    # A provider that cannot be reached: 502 with JSON, nothing stored for a sign-in.
    response = await client.get(f"/t/{t.slug}/auth/sso/start", follow_redirects=False)
    assert response.status_code == 502 and response.json()["error"] == "sso_provider_error", response.text
    async with platform.control.connection() as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM sso_login_states WHERE tenant_id = %s", (t.id,))
        assert (await cur.fetchone()) == {"n": 0}
    # ``keys rotate`` re-encrypts it: found by the ``_encrypted`` suffix.
    async with platform.control.connection() as conn:
        places = {(c.table, c.column) for c in await keys.secret_columns(conn)}
    assert ("tenant_sso", "client_secret_encrypted") in places

    # The tenant's admin reads and changes it (no secret: the stored one stays), audited in the tenant.
    response = await client.get(t.api("/sso"), headers=t.auth)
    assert response.status_code == 200 and SECRET not in response.text and response.json()["client_id"] == "cardvault"
    response = await client.put(t.api("/sso"), json=_body(client_id="cv2", password_login=False), headers=t.auth)
    assert response.status_code == 200 and SECRET not in response.text, response.text
    row = await _stored(platform, t.id)
    assert (
        row is not None and row["client_id"] == "cv2" and platform.box.decrypt(row["client_secret_encrypted"]) == SECRET
    )

    # Another tenant's admin gets nowhere near it.
    other = await create_tenant(client, "sso-other", tier="enterprise")
    response = await client.get(t.api("/sso"), headers=other.auth)
    assert response.status_code == 403 and response.json()["error"] == "wrong_tenant"
    response = await client.put(t.api("/sso"), json=_body(client_secret="evil"), headers=other.auth)
    assert response.status_code == 403
    row = await _stored(platform, t.id)
    assert row is not None and platform.box.decrypt(row["client_secret_encrypted"]) == SECRET
    assert await _stored(platform, other.id) is None

    # Password sign-in is now refused for this tenant (and an invitation cannot be used to get round it)...
    login = {"email": t.admin_email, "password": t.admin_password}
    response = await client.post(f"/t/{t.slug}/auth/token", json=login)
    assert response.status_code == 409 and response.json()["error"] == "password_login_disabled", response.text
    response = await client.post("/auth/token", json=login, headers={"X-Tenant": t.slug, "Authorization": ""})
    assert response.status_code == 409
    accept = {"invite_token": "x" * 40, "password": "another long password"}
    response = await client.post(f"/t/{t.slug}/auth/invitations/accept", json=accept)
    assert response.status_code == 409 and response.json()["error"] == "password_login_disabled"
    # ...but not for the other tenant,
    other_login = {"email": other.admin_email, "password": other.admin_password}
    assert (await client.post(f"/t/{other.slug}/auth/token", json=other_login)).status_code == 200
    # and a super-admin still gets in (break-glass impersonation).
    _, admin_auth = await super_admin(client, platform, settings)
    response = await client.post(
        f"/admin/tenants/{t.slug}/impersonate", json={"reason": "SSO provider is down"}, headers=admin_auth
    )
    assert response.status_code == 200, response.text
    assert (await client.get(t.api("/users"), headers=bearer(response.json()["access_token"]))).status_code == 200

    # Removed: password sign-in is back.
    response = await client.delete(f"/admin/tenants/{t.slug}/sso")
    assert response.status_code == 204, response.text
    assert await _stored(platform, t.id) is None
    assert (await client.post(f"/t/{t.slug}/auth/token", json=login)).status_code == 200
    response = await client.delete(f"/admin/tenants/{t.slug}/sso")
    assert response.status_code == 404 and response.json()["error"] == "sso_not_configured"
