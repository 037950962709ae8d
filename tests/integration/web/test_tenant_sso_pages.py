"""Single sign-on in the browser, end to end against a real OpenID provider (``oidc-provider-mock`` on
127.0.0.1): the sign-in page offers it, the browser goes to the provider and back to the page callback,
lands on its cards signed in (cookies, switcher list, just-in-time user, audit, the finder's directory);
every refusal is the sign-in page with the reason and a 4xx, and one workspace's sign-in never opens
another's."""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from controlplane.accounts import directory
from controlplane.platform import Platform
from controlplane.settings import Settings
from tests.integration.auth_support import audit_rows, create_tenant, tenant_rows
from tests.integration.web.web_support import post_form
from tests.oidc_harness import OidcProvider, callback_path

#: The provider (in its own thread) still uses a deprecated authlib hook when it signs ID tokens.
pytestmark = pytest.mark.filterwarnings("ignore:get_jwt_config:DeprecationWarning")
BASE_DOMAIN = "cardvault.test"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The tests' settings, with tenants also reached on ``{slug}.cardvault.test``."""
    return dataclasses.replace(settings, http=dataclasses.replace(settings.http, base_domain=BASE_DOMAIN))


async def _enterprise(api: httpx.AsyncClient, slug: str, issuer: str, **extra: Any) -> None:
    await create_tenant(api, slug, tier="enterprise")
    body = {
        "issuer": issuer,
        "client_id": f"cardvault-{slug}",
        "client_secret": "client-secret",
        "allowed_domains": ["sso.test"],
        "default_role": "collection_manager",
        **extra,
    }
    response = await api.put(f"/admin/tenants/{slug}/sso", json=body)
    assert response.status_code == 200, response.text


async def _to_provider(browser: httpx.AsyncClient, slug: str) -> str:
    """Follow the sign-in page's link: the provider URL the browser is sent to."""
    response = await browser.get(f"/t/{slug}/sign-in/sso")
    assert response.status_code == 302, response.text
    return response.headers["location"]


async def _sign_in(browser: httpx.AsyncClient, provider: OidcProvider, slug: str, sub: str) -> httpx.Response:
    """The whole round trip: our start, the provider's form, back to our page callback."""
    location = await _to_provider(browser, slug)
    return await browser.get(callback_path(provider.approve(location, sub)))


def _set_cookies(response: httpx.Response) -> dict[str, str]:
    return {value.split("=", 1)[0]: value for value in response.headers.get_list("set-cookie")}


async def test_a_person_signs_in_with_single_sign_on_and_lands_on_the_cards(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform, oidc_provider: OidcProvider
) -> None:
    await _enterprise(api, "sso-web", oidc_provider.issuer)
    oidc_provider.set_user("web-alice", {"email": "Alice@SSO.test", "email_verified": True})

    form = await browser.get("/t/sso-web/sign-in")
    assert form.status_code == 200
    assert 'href="/t/sso-web/sign-in/sso"' in form.text and "Sign in with single sign-on" in form.text
    assert 'name="password"' in form.text  # password sign-in is still on

    start = await browser.get("/t/sso-web/sign-in/sso")
    assert start.status_code == 302 and start.headers["location"].startswith(
        f"{oidc_provider.issuer}/oauth2/authorize?"
    )
    query = parse_qs(urlsplit(start.headers["location"]).query)
    base_url = platform.settings.http.base_url
    assert query["redirect_uri"] == [f"{base_url}/t/sso-web/sign-in/sso/callback"]
    assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"]
    binding = _set_cookies(start)["cv_sso"]
    assert "HttpOnly" in binding and "SameSite=Lax" in binding and "Path=/t/sso-web/sign-in/sso" in binding

    back = oidc_provider.approve(start.headers["location"], "web-alice")
    assert back.startswith(f"{base_url}/t/sso-web/sign-in/sso/callback?")
    done = await browser.get(callback_path(back))
    assert done.status_code == 303 and done.headers["location"] == "/t/sso-web/cards", done.text
    cookies = _set_cookies(done)
    assert "Path=/t/sso-web" in cookies["cv_access"] and "HttpOnly" in cookies["cv_access"]
    assert cookies["cv_sso"].startswith("cv_sso=;")  # the binding is spent
    assert "sso-web" in cookies["cv_workspaces"]
    assert (await browser.get("/t/sso-web/")).headers["location"] == "/t/sso-web/cards"  # a live session

    users = await tenant_rows(
        platform, "sso-web", "SELECT id, tenant_role, password_hash FROM users WHERE email = %s", ("Alice@SSO.test",)
    )
    assert [(u["tenant_role"], u["password_hash"]) for u in users] == [("collection_manager", "")]
    actor = f"user:{users[0]['id']}"
    logins = [row for row in await audit_rows(platform, "sso-web", "auth.login") if row["actor"] == actor]
    assert [row["details"]["method"] for row in logins] == ["sso"]
    created = [row for row in await audit_rows(platform, "sso-web", "user.create") if row["actor"] == actor]
    assert [row["details"]["via"] for row in created] == ["sso"]
    # The just-in-time user is in the workspace finder's directory at once.
    key = directory.directory_key(platform.settings.security.secret_key)
    async with platform.control.connection() as conn:
        assert await directory.workspaces_of(conn, key, "alice@sso.test") == ["sso-web"]

    # The provider's answer cannot be replayed: the state is spent.
    replay = await browser.get(callback_path(back))
    assert replay.status_code == 401 and "Single sign-on failed" in replay.text
    assert 'href="/t/sso-web/sign-in/sso"' in replay.text and "cv_access" not in _set_cookies(replay)


async def test_a_workspace_without_password_sign_in_offers_single_sign_on_only(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, oidc_provider: OidcProvider
) -> None:
    await _enterprise(api, "sso-only", oidc_provider.issuer, password_login=False)
    form = await browser.get("/t/sso-only/sign-in")
    assert form.status_code == 200 and "Sign in with single sign-on" in form.text
    assert 'name="password"' not in form.text and 'action="/t/sso-only/sign-in"' not in form.text
    refused = await post_form(
        browser, "/t/sso-only/sign-in", {"email": "x@sso.test", "password": "whatever"}, from_page="/t/sso-only/sign-in"
    )
    assert refused.status_code == 401 and "signs in with single sign-on" in refused.text

    # A workspace without single sign-on neither offers it nor starts it.
    await create_tenant(api, "no-sso")
    plain = await browser.get("/t/no-sso/sign-in")
    assert "single sign-on" not in plain.text and 'name="password"' in plain.text
    start = await browser.get("/t/no-sso/sign-in/sso")
    assert (
        start.status_code == 403 and "Single sign-on is not available" in start.text and 'name="password"' in start.text
    )


async def test_every_refusal_is_the_sign_in_page_with_the_reason(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform, oidc_provider: OidcProvider
) -> None:
    await _enterprise(api, "sso-no", oidc_provider.issuer)
    oidc_provider.set_user("web-mallory", {"email": "mallory@evil.test", "email_verified": True})
    oidc_provider.set_user("web-bob", {"email": "bob@sso.test", "email_verified": True})

    foreign = await _sign_in(browser, oidc_provider, "sso-no", "web-mallory")
    assert foreign.status_code == 401 and "this email domain may not sign in to this workspace" in foreign.text
    assert 'href="/t/sso-no/sign-in/sso"' in foreign.text and "cv_access" not in _set_cookies(foreign)

    # The provider refused (the person cancelled).
    location = await _to_provider(browser, "sso-no")
    state = parse_qs(urlsplit(location).query)["state"][0]
    denied = await browser.get(f"/t/sso-no/sign-in/sso/callback?error=access_denied&state={state}")
    assert denied.status_code == 401 and "refused the sign-in (access_denied)" in denied.text

    # A forged state; an answer without a code; and a browser that did not start the sign-in.
    location = await _to_provider(browser, "sso-no")
    path = callback_path(oidc_provider.approve(location, "web-bob"))
    forged = await browser.get(path.replace("state=", f"state={secrets.token_urlsafe(8)}"))
    assert forged.status_code == 401 and "sign-in state" in forged.text
    incomplete = await browser.get(f"/t/sso-no/sign-in/sso/callback?state={state}")
    assert incomplete.status_code == 401 and "incomplete" in incomplete.text
    location = await _to_provider(browser, "sso-no")
    path = callback_path(oidc_provider.approve(location, "web-bob"))
    browser.cookies.clear()
    other_browser = await browser.get(path)
    assert other_browser.status_code == 401 and "did not start a sign-in" in other_browser.text

    users = await tenant_rows(platform, "sso-no", "SELECT email FROM users WHERE email LIKE %s", ("%@%.test",))
    assert "mallory@evil.test" not in {u["email"] for u in users} and "bob@sso.test" not in {u["email"] for u in users}


async def test_one_workspaces_sign_in_never_opens_another(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform, oidc_provider: OidcProvider
) -> None:
    await _enterprise(api, "sso-a", oidc_provider.issuer)
    await _enterprise(api, "sso-b", oidc_provider.issuer)
    oidc_provider.set_user("web-carol", {"email": "carol@sso.test", "email_verified": True})

    location = await _to_provider(browser, "sso-a")
    path = callback_path(oidc_provider.approve(location, "web-carol"))
    into_b = await browser.get(path.replace("/t/sso-a/", "/t/sso-b/"))
    assert into_b.status_code == 401 and 'href="/t/sso-b/sign-in/sso"' in into_b.text
    assert "cv_access" not in _set_cookies(into_b)
    assert await tenant_rows(platform, "sso-b", "SELECT id FROM users WHERE email = 'carol@sso.test'") == []
    assert (await browser.get("/t/sso-b/")).status_code == 200  # still signed out of B

    # A's answer still opens A, and only A.
    done = await browser.get(path)
    assert done.status_code == 303 and done.headers["location"] == "/t/sso-a/cards", done.text
    assert (await browser.get("/t/sso-a/")).headers["location"] == "/t/sso-a/cards"
    home_b = await browser.get("/t/sso-b/")
    assert home_b.status_code == 200 and 'action="/t/sso-b/sign-in"' in home_b.text


async def test_on_the_tenants_subdomain_the_provider_answers_on_that_subdomain(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform, oidc_provider: OidcProvider
) -> None:
    await _enterprise(api, "sso-sub", oidc_provider.issuer)
    oidc_provider.set_user("web-dora", {"email": "dora@sso.test", "email_verified": True})
    host = f"http://sso-sub.{BASE_DOMAIN}"
    form = await browser.get(f"{host}/sign-in")
    assert form.status_code == 200 and 'href="/sign-in/sso"' in form.text

    start = await browser.get(f"{host}/sign-in/sso")
    assert start.status_code == 302, start.text
    port = urlsplit(platform.settings.http.base_url).port
    expected = f"http://sso-sub.{BASE_DOMAIN}:{port}/sign-in/sso/callback"
    assert parse_qs(urlsplit(start.headers["location"]).query)["redirect_uri"] == [expected]
    assert "Path=/sign-in/sso" in _set_cookies(start)["cv_sso"]
    back = oidc_provider.approve(start.headers["location"], "web-dora")
    assert back.startswith(f"{expected}?")
    done = await browser.get(f"{host}{callback_path(back)}")
    assert done.status_code == 303 and done.headers["location"] == "/cards", done.text
    assert "Path=/;" in _set_cookies(done)["cv_access"]
