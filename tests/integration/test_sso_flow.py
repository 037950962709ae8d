"""Enterprise SSO sign-in against a real OpenID provider (``oidc-provider-mock`` on 127.0.0.1): just-in-time
users with the default role, reuse on the next sign-in, and every refusal (domain, unverified email,
forged/replayed/foreign state, another browser, a tampered nonce, another tenant's state)."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from litestar.testing import AsyncTestClient

from controlplane.platform import Platform
from tests.integration.auth_support import TenantAdmin, bearer, create_tenant, tenant_rows
from tests.oidc_harness import OidcProvider, callback_path

COOKIE = "cardvault_sso"
#: The provider (in its own thread) still uses a deprecated authlib hook when it signs ID tokens.
pytestmark = pytest.mark.filterwarnings("ignore:get_jwt_config:DeprecationWarning")


async def _configure(client: AsyncTestClient[Any], t: TenantAdmin, issuer: str, **extra: Any) -> None:
    body = {
        "issuer": issuer,
        "client_id": f"cardvault-{t.slug}",
        "client_secret": "client-secret",
        "allowed_domains": ["sso.test"],
        "default_role": "collection_manager",
        **extra,
    }
    response = await client.put(t.api("/sso"), json=body, headers=t.auth)
    assert response.status_code == 200, response.text


async def _start(client: AsyncTestClient[Any], slug: str) -> tuple[str, str]:
    """Start a sign-in: (the provider URL we are sent to, the browser cookie)."""
    response = await client.get(f"/t/{slug}/auth/sso/start", follow_redirects=False)
    assert response.status_code == 302, response.text
    set_cookie = response.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie and f"path=/t/{slug}/auth/sso" in set_cookie
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"]
    return response.headers["location"], response.cookies[COOKIE]


async def _callback(client: AsyncTestClient[Any], path: str, cookie: str | None) -> Any:
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else {}
    client.cookies.clear()
    return await client.get(path, headers={"Authorization": "", **headers})


async def _sign_in(client: AsyncTestClient[Any], provider: OidcProvider, slug: str, sub: str) -> Any:
    location, cookie = await _start(client, slug)
    return await _callback(client, callback_path(provider.approve(location, sub)), cookie)


def _error(response: Any) -> str:
    assert 400 <= response.status_code < 500, response.text
    code: str = response.json()["error"]
    return code


async def test_sso_creates_the_user_just_in_time_then_reuses_it(
    client: AsyncTestClient[Any], platform: Platform, oidc_provider: OidcProvider
) -> None:
    t = await create_tenant(client, "sso-jit", tier="enterprise")
    await _configure(client, t, oidc_provider.issuer)
    oidc_provider.set_user("alice-1", {"email": "Alice@SSO.test", "email_verified": True})

    location, cookie = await _start(client, t.slug)
    redirect = oidc_provider.approve(location, "alice-1")
    assert redirect.startswith(f"{platform.settings.http.base_url}/t/{t.slug}/auth/sso/callback?")
    response = await _callback(client, callback_path(redirect), cookie)
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert tokens["token_type"] == "Bearer" and tokens["refresh_token"]
    assert COOKIE in response.headers.get("set-cookie", "")  # the sign-in cookie is cleared
    me = await client.get(t.api("/me"), headers=bearer(tokens["access_token"]))
    assert me.status_code == 200, me.text
    assert me.json()["email"] == "Alice@SSO.test" and me.json()["role"] == "collection_manager"
    cards = await client.get(t.api("/cards"), headers=bearer(tokens["access_token"]))
    assert cards.status_code == 200, cards.text
    refreshed = await client.post(f"/t/{t.slug}/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text

    # The callback cannot be replayed (state spent).
    replay = await _callback(client, callback_path(redirect), cookie)
    assert _error(replay) == "sso_state_invalid"

    # A second sign-in is the same user; no password was ever set (an empty hash never verifies).
    again = await _sign_in(client, oidc_provider, t.slug, "alice-1")
    assert again.status_code == 200, again.text
    me2 = await client.get(t.api("/me"), headers=bearer(again.json()["access_token"]))
    assert me2.json()["id"] == me.json()["id"]
    rows = await tenant_rows(platform, t.slug, "SELECT password_hash FROM users WHERE lower(email) = 'alice@sso.test'")
    assert rows == [{"password_hash": ""}]
    audit = await tenant_rows(
        platform, t.slug, "SELECT action, details FROM audit_log WHERE actor = %s", (f"user:{me.json()['id']}",)
    )
    actions = [row["action"] for row in audit]
    assert actions.count("auth.login") == 2 and actions.count("user.create") == 1
    login = {"email": "alice@sso.test", "password": ""}
    assert (await client.post(f"/t/{t.slug}/auth/token", json=login)).status_code in (400, 401)


async def test_sso_refusals(client: AsyncTestClient[Any], platform: Platform, oidc_provider: OidcProvider) -> None:
    t = await create_tenant(client, "sso-refuse", tier="enterprise")
    await _configure(client, t, oidc_provider.issuer)
    oidc_provider.set_user("mallory-1", {"email": "mallory@evil.test", "email_verified": True})
    oidc_provider.set_user("unverified-1", {"email": "eve@sso.test", "email_verified": False})
    oidc_provider.set_user("bob-1", {"email": "bob@sso.test", "email_verified": True})

    assert _error(await _sign_in(client, oidc_provider, t.slug, "mallory-1")) == "sso_rejected"
    assert _error(await _sign_in(client, oidc_provider, t.slug, "unverified-1")) == "sso_rejected"

    # A forged state, and a real one from a browser that did not start it.
    location, cookie = await _start(client, t.slug)
    path = callback_path(oidc_provider.approve(location, "bob-1"))
    forged = path.replace("state=", f"state={secrets.token_urlsafe(8)}")
    assert _error(await _callback(client, forged, cookie)) == "sso_state_invalid"
    assert _error(await _callback(client, path, None)) == "sso_state_invalid"
    assert _error(await _callback(client, path, secrets.token_urlsafe(32))) == "sso_state_invalid"
    assert (await _callback(client, path, cookie)).status_code == 200  # nothing above spent it

    # The provider is made to put another nonce into the ID token: refused.
    location, cookie = await _start(client, t.slug)
    parts = urlsplit(location)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    tampered = f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode({**query, 'nonce': 'attacker-nonce'})}"
    response = await _callback(client, callback_path(oidc_provider.approve(tampered, "bob-1")), cookie)
    assert _error(response) == "sso_rejected" and "nonce" in response.json()["detail"]

    # The provider's own refusal is a 401 with JSON, not a 500.
    location, cookie = await _start(client, t.slug)
    state = parse_qs(urlsplit(location).query)["state"][0]
    response = await _callback(client, f"/t/{t.slug}/auth/sso/callback?error=access_denied&state={state}", cookie)
    assert _error(response) == "sso_rejected"

    users = await tenant_rows(platform, t.slug, "SELECT email FROM users ORDER BY id")
    assert [u["email"] for u in users] == [t.admin_email, "bob@sso.test"]

    # Just-in-time users count against the users quota; existing users still sign in.
    response = await client.put(f"/admin/tenants/{t.slug}/quotas", json={"limits": {"users": 2}})
    assert response.status_code == 200, response.text
    oidc_provider.set_user("dave-1", {"email": "dave@sso.test", "email_verified": True})
    full = await _sign_in(client, oidc_provider, t.slug, "dave-1")
    assert (full.status_code, full.json()["error"]) == (403, "quota_exceeded"), full.text
    assert (await _sign_in(client, oidc_provider, t.slug, "bob-1")).status_code == 200


async def test_one_tenants_sign_in_never_opens_another(
    client: AsyncTestClient[Any], platform: Platform, oidc_provider: OidcProvider
) -> None:
    a = await create_tenant(client, "sso-a", tier="enterprise")
    b = await create_tenant(client, "sso-b", tier="enterprise")
    await _configure(client, a, oidc_provider.issuer)
    await _configure(client, b, oidc_provider.issuer, allowed_domains=["sso.test"])
    oidc_provider.set_user("carol-1", {"email": "carol@sso.test", "email_verified": True})

    location, cookie = await _start(client, a.slug)
    path = callback_path(oidc_provider.approve(location, "carol-1"))
    into_b = path.replace(f"/t/{a.slug}/", f"/t/{b.slug}/")
    assert _error(await _callback(client, into_b, cookie)) == "sso_state_invalid"
    assert await tenant_rows(platform, b.slug, "SELECT id FROM users WHERE email = 'carol@sso.test'") == []
    # A's sign-in is still A's, and its token is refused by B.
    response = await _callback(client, path, cookie)
    assert response.status_code == 200, response.text
    token = bearer(response.json()["access_token"])
    assert _error(await client.get(b.api("/me"), headers=token)) == "wrong_tenant"
    assert (await client.get(a.api("/me"), headers=token)).status_code == 200
