"""Enterprise single sign-on end to end in a real browser, against a real OpenID provider on 127.0.0.1
(``tests/oidc_harness.py``): the workspace's sign-in page offers single sign-on, the provider's own page
signs the person in, and the browser comes back signed in to the cards list as a just-in-time user."""

from __future__ import annotations

import re

import httpx
import pytest

from controlplane.platform import Platform
from tests.browser.browser_support import Watched, screenshot
from tests.integration.auth_support import create_tenant, tenant_rows
from tests.oidc_harness import OidcProvider

pytestmark = [
    pytest.mark.slow,  # a real browser against a real service; `make test` runs it
    # The provider (in its own thread) still uses a deprecated authlib hook when it signs ID tokens.
    pytest.mark.filterwarnings("ignore:get_jwt_config:DeprecationWarning"),
]

SLUG = "sso-web"


async def test_a_person_signs_in_with_single_sign_on_and_lands_on_the_cards_list(
    watched: Watched, api: httpx.AsyncClient, platform: Platform, oidc_provider: OidcProvider
) -> None:
    await create_tenant(api, SLUG, tier="enterprise")
    settings = {
        "issuer": oidc_provider.issuer,
        "client_id": f"cardvault-{SLUG}",
        "client_secret": "client-secret",
        "allowed_domains": ["sso.test"],
        "default_role": "collection_manager",
    }
    configured = await api.put(f"/admin/tenants/{SLUG}/sso", json=settings)
    assert configured.status_code == 200, configured.text
    oidc_provider.set_user("alice-1", {"email": "alice@sso.test", "email_verified": True})

    page = await watched.page()
    await page.goto(f"/t/{SLUG}/sign-in")
    await screenshot(page, "tenant-sign-in-sso")
    await page.get_by_role("link", name="Sign in with single sign-on").click()
    await page.wait_for_url(f"{oidc_provider.issuer}/oauth2/authorize?*")
    await page.get_by_placeholder("sub").fill("alice-1")
    async with page.expect_navigation(url=re.compile(rf"^{re.escape(watched.origin)}/t/{SLUG}/cards$")):
        await page.get_by_role("button", name="Authorize").click()

    assert await page.get_by_role("heading", level=1).inner_text() == "Cards"
    assert "alice@sso.test" in await page.locator("header").inner_text()
    users = await tenant_rows(platform, SLUG, "SELECT tenant_role FROM users WHERE lower(email) = 'alice@sso.test'")
    assert users == [{"tenant_role": "collection_manager"}]
    # The sign-in cookie (state, nonce, PKCE verifier) is spent: only the session cookies remain here.
    names = {cookie["name"] for cookie in await watched.context.cookies(f"{watched.origin}/t/{SLUG}/sign-in/sso")}
    assert "cv_sso" not in names and "cv_access" in names
