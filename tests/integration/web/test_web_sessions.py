"""The pages' sessions: signing in and out through the forms, cookie flags, CSRF, refresh, and that a
page session carries no more than its owner's rights (wrong area, wrong tenant, forged, revoked)."""

from __future__ import annotations

import httpx

from controlplane.platform import Platform
from tests.integration.auth_support import USER_PASSWORD, add_user, create_tenant, make_admin
from tests.integration.web.web_support import csrf_of, post_form, sign_in_admin, sign_in_tenant


def _set_cookies(response: httpx.Response) -> dict[str, str]:
    return {value.split("=", 1)[0]: value for value in response.headers.get_list("set-cookie")}


async def test_the_admin_sign_in_form_is_shown_signed_out_with_a_strict_csp(browser: httpx.AsyncClient) -> None:
    response = await browser.get("/admin/ui/")
    assert response.status_code == 200
    assert 'action="/admin/ui/sign-in"' in response.text and 'for="f-email"' in response.text
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-frame-options"] == "DENY" and response.headers["cache-control"] == "no-store"
    csrf_cookie = _set_cookies(response)["cv_csrf"]
    assert "HttpOnly" in csrf_cookie and "SameSite=Strict" in csrf_cookie


async def test_an_admin_signs_in_and_out_with_httponly_path_scoped_cookies(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    await make_admin(platform)
    response = await sign_in_admin(browser)
    assert response.headers["location"] == "/admin/ui/"
    cookies = _set_cookies(response)
    for name in ("cv_access", "cv_refresh"):
        assert "HttpOnly" in cookies[name] and "SameSite=Lax" in cookies[name] and "Path=/admin/ui" in cookies[name]
    home = await browser.get("/admin/ui/")
    assert home.status_code == 200 and "<h1>Overview</h1>" in home.text and "Sign out" in home.text
    out = await browser.post("/admin/ui/sign-out", data={"csrf_token": csrf_of(home)})
    assert out.status_code == 303
    assert 'action="/admin/ui/sign-in"' in (await browser.get("/admin/ui/")).text
    # The revoked session's tokens are worthless even if replayed.
    browser.cookies.set("cv_access", cookies["cv_access"].split(";")[0].split("=", 1)[1], path="/admin/ui")
    assert 'action="/admin/ui/sign-in"' in (await browser.get("/admin/ui/")).text


async def test_a_form_without_its_csrf_token_or_from_another_site_is_refused(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    await make_admin(platform)
    form = await browser.get("/admin/ui/")
    data = {"email": "root@platform.test", "password": USER_PASSWORD}
    assert (await browser.post("/admin/ui/sign-in", data=data)).status_code == 403
    assert (await browser.post("/admin/ui/sign-in", data={**data, "csrf_token": "forged"})).status_code == 403
    foreign = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    refused = await browser.post("/admin/ui/sign-in", data={**data, "csrf_token": csrf_of(form)}, headers=foreign)
    assert refused.status_code == 403 and "cross-site" in refused.text
    # A token is bound to its session: the signed-out page's token is refused once signed in.
    await sign_in_admin(browser)
    assert (await browser.post("/admin/ui/sign-out", data={"csrf_token": csrf_of(form)})).status_code == 403


async def test_an_expired_access_cookie_is_refreshed_from_the_refresh_cookie(
    browser: httpx.AsyncClient, platform: Platform
) -> None:
    await make_admin(platform)
    await sign_in_admin(browser)
    browser.cookies.delete("cv_access", path="/admin/ui")  # as if it had expired
    response = await browser.get("/admin/ui/")
    assert "<h1>Overview</h1>" in response.text
    assert "cv_access" in _set_cookies(response) and "cv_refresh" in _set_cookies(response)


async def test_a_tenant_user_signs_in_to_a_workspace_and_its_cookies_stay_in_it(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    await create_tenant(api, "globex")
    response = await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    assert response.headers["location"] == "/t/acme/cards"
    cookies = _set_cookies(response)
    assert "Path=/t/acme" in cookies["cv_access"] and "HttpOnly" in cookies["cv_access"]
    assert "Path=/" in cookies["cv_workspaces"]
    assert (await browser.get("/t/acme/")).headers["location"] == "/t/acme/cards"
    # acme's session presented to globex's pages (a forged cookie) signs in nobody there.
    token = cookies["cv_access"].split(";")[0].split("=", 1)[1]
    browser.cookies.set("cv_access", token, path="/t/globex")
    home = await browser.get("/t/globex/")
    assert home.status_code == 200 and 'action="/t/globex/sign-in"' in home.text
    # A tenant session is no admin session either.
    browser.cookies.set("cv_access", token, path="/admin/ui")
    assert 'action="/admin/ui/sign-in"' in (await browser.get("/admin/ui/")).text


async def test_a_wrong_password_re_renders_the_form_and_a_user_signs_out(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await create_tenant(api, "acme")
    await add_user(platform, "acme", "ann@acme.test", "user")
    wrong = await post_form(browser, "/t/acme/sign-in", {"email": "ann@acme.test", "password": "nope"})
    assert (
        wrong.status_code == 401 and "Wrong email or password." in wrong.text and 'value="ann@acme.test"' in wrong.text
    )
    await sign_in_tenant(browser, "acme", "ann@acme.test")
    page = await browser.get("/t/acme/sign-in")
    out = await browser.post("/t/acme/sign-out", data={"csrf_token": csrf_of(page)})
    assert out.status_code == 303 and out.headers["location"] == "/t/acme/sign-in"
    assert "cv_access=;" in out.headers.get_list("set-cookie")[0] or any(
        c.startswith("cv_access=;") for c in out.headers.get_list("set-cookie")
    )
    assert (await browser.get("/t/acme/")).status_code == 200  # the sign-in form again
