"""Every page refuses the wrong identity: walks the app's route table, so a page added later is covered.

- signed out: every signed-in page (admin and tenant) answers with the sign-in form's redirect, never content;
- a tenant user's session presented to the admin pages signs in nobody there;
- a user of tenant A presenting A's session to tenant B's pages gets no page of B (403 or the sign-in form);
- a super-admin's dashboard session is no tenant session either;
- an unsafe request without the CSRF token is refused before anything happens.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute

from controlplane.platform import Platform
from controlplane.web import admin, tenant
from tests.integration.auth_support import create_tenant, make_admin
from tests.integration.web.web_support import sign_in_admin, sign_in_tenant

_PARAM = re.compile(r"\{(\w+):(\w+)\}")
_REFUSED = {303, 401, 403, 404}


def _page_routes(app: Litestar, *, public: set[int]) -> list[tuple[str, str]]:
    """``(method, path template)`` of every signed-in page handler under /admin/ui and /t/{slug}."""
    found = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        if not (route.path.startswith("/admin/ui") or route.path.startswith("/t/{tenant_slug:str}")):
            continue
        if route.path.startswith(
            ("/t/{tenant_slug:str}/api", "/t/{tenant_slug:str}/auth", "/t/{tenant_slug:str}/files")
        ):
            continue
        for handler in route.route_handlers:
            if id(handler.fn) in public:
                continue
            for method in handler.http_methods:
                if method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                    found.append((method, route.path))
    return sorted(set(found))


def _fill(path: str, slug: str) -> str:
    def value(match: re.Match[str]) -> str:
        name, kind = match.groups()
        if kind == "int":
            return "1"
        if kind == "uuid":
            return str(uuid.uuid4())
        return slug if "slug" in name else "x"

    return _PARAM.sub(value, path)


def _public_functions() -> set[int]:
    handlers: list[Any] = [*admin.PUBLIC_HANDLERS, *tenant.PUBLIC_HANDLERS, *tenant.FINDER_HANDLERS]
    return {id(h.fn) for h in handlers}


@pytest.fixture
async def two_workspaces(api: httpx.AsyncClient, platform: Platform) -> tuple[Any, Any]:
    await make_admin(platform)
    return await create_tenant(api, "acme"), await create_tenant(api, "globex")


async def _send(client: httpx.AsyncClient, method: str, path: str) -> httpx.Response:
    return await client.request(method, path, data={} if method != "GET" else None)


def _assert_refused(response: httpx.Response, method: str, path: str) -> None:
    assert response.status_code in _REFUSED, f"{method} {path}: {response.status_code} {response.text[:200]}"
    if response.status_code == 303:
        assert "sign-in" in response.headers["location"] or response.headers["location"].startswith("/admin/ui/")


async def test_signed_out_every_page_redirects_to_sign_in_and_shows_nothing(
    browser: httpx.AsyncClient, web_app: Litestar, two_workspaces: tuple[Any, Any]
) -> None:
    routes = _page_routes(web_app, public=_public_functions())
    assert len(routes) >= 10, routes  # the walk found the pages
    for method, template in routes:
        if method != "GET":
            continue
        path = _fill(template, "acme")
        response = await browser.get(path)
        assert response.status_code == 303, f"GET {path}: {response.status_code}"
        location = response.headers["location"]
        expected = "/admin/ui/" if path.startswith("/admin/ui") else "/t/acme/sign-in"
        assert location.startswith(expected), f"GET {path} -> {location}"


async def test_a_tenant_session_opens_no_admin_page_and_no_other_workspace(
    browser: httpx.AsyncClient, web_app: Litestar, two_workspaces: tuple[Any, Any]
) -> None:
    acme, _ = two_workspaces
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    access = browser.cookies.get("cv_access", path="/t/acme")
    refresh = browser.cookies.get("cv_refresh", path="/t/acme")
    assert access and refresh
    for path in ("/admin/ui", "/t/globex"):  # acme's session offered where it does not belong
        browser.cookies.set("cv_access", access, path=path)
        browser.cookies.set("cv_refresh", refresh, path=path)
    for method, template in _page_routes(web_app, public=_public_functions()):
        path = _fill(template, "globex")
        if path.startswith("/t/acme"):
            continue
        response = await _send(browser, method, path)
        _assert_refused(response, method, path)
        assert "acme" not in response.text or response.status_code == 303, f"{method} {path} shows acme"
    # ...while acme's own cards page still opens for it.
    assert (await browser.get("/t/acme/cards")).status_code == 200


async def test_a_super_admin_dashboard_session_is_not_a_tenant_session(
    browser: httpx.AsyncClient, web_app: Litestar, two_workspaces: tuple[Any, Any]
) -> None:
    await sign_in_admin(browser)
    access = browser.cookies.get("cv_access", path="/admin/ui")
    assert access
    browser.cookies.set("cv_access", access, path="/t/acme")
    for method, template in _page_routes(web_app, public=_public_functions()):
        if template.startswith("/admin/ui"):
            continue
        path = _fill(template, "acme")
        _assert_refused(await _send(browser, method, path), method, path)


async def test_every_unsafe_page_request_needs_its_csrf_token(
    browser: httpx.AsyncClient, web_app: Litestar, two_workspaces: tuple[Any, Any]
) -> None:
    acme, _ = two_workspaces
    await sign_in_admin(browser)
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    unsafe = [(m, t) for m, t in _page_routes(web_app, public=set()) if m != "GET"]
    assert unsafe
    for method, template in unsafe:
        path = _fill(template, "acme")
        response = await browser.request(method, path, data={"confirm": "acme"})
        assert response.status_code == 403, f"{method} {path} without a CSRF token: {response.status_code}"
