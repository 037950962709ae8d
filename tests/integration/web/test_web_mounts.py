"""Where the tenant app is reached: at /t/{slug}, on the tenant's subdomain (at /), and at / in
single-tenant mode; the main host's / leads to the workspace finder."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from controlplane.app import create_app
from controlplane.platform import Platform
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.integration.auth_support import add_user, create_tenant
from tests.integration.web.web_support import csrf_of


@asynccontextmanager
async def running(settings: Settings, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client of the app (lifespan run) at ``base_url``; ``client.api`` is the same app's
    admin API on the main host (``cards.test``)."""
    app = create_app(settings)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 4711))
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with (
            httpx.AsyncClient(transport=transport, base_url=base_url) as client,
            httpx.AsyncClient(transport=transport, base_url="http://cards.test", headers=admin) as api,
        ):
            client.api = api  # type: ignore[attr-defined]
            yield client


async def _sign_in_at(client: httpx.AsyncClient, form_path: str, email: str, password: str) -> httpx.Response:
    form = await client.get(form_path)
    assert form.status_code == 200, form.text
    return await client.post(form_path, data={"email": email, "password": password, "csrf_token": csrf_of(form)})


async def test_a_tenant_subdomain_serves_its_app_at_the_root(settings: Settings) -> None:
    on_domain = dataclasses.replace(settings, http=dataclasses.replace(settings.http, base_domain="cards.test"))
    async with running(on_domain, "http://acme.cards.test") as client:
        acme = await create_tenant(client.api, "acme")  # type: ignore[attr-defined]
        home = await client.get("/")
        assert home.status_code == 200 and 'action="/sign-in"' in home.text and "Sign in to acme" in home.text
        signed = await _sign_in_at(client, "/sign-in", acme.admin_email, acme.admin_password)
        assert signed.status_code == 303 and signed.headers["location"] == "/cards"
        cookie = next(c for c in signed.headers.get_list("set-cookie") if c.startswith("cv_access="))
        assert "Path=/;" in cookie
        assert (await client.get("/")).headers["location"] == "/cards"


async def test_the_main_host_root_leads_to_the_workspace_finder(settings: Settings) -> None:
    async with running(settings, "http://testserver.local") as client:
        response = await client.get("/")
        assert response.status_code == 303 and response.headers["location"] == "/workspaces"


async def test_single_tenant_mode_serves_the_tenant_app_at_the_root(settings: Settings, platform: Platform) -> None:
    single = dataclasses.replace(settings, multi_tenant=False, default_tenant="home")
    async with running(single, "http://testserver.local") as client:
        await add_user(platform, "home", "ann@home.test", "tenant_admin")
        home = await client.get("/")
        assert home.status_code == 200 and 'action="/sign-in"' in home.text
        signed = await _sign_in_at(client, "/sign-in", "ann@home.test", "correct horse battery")
        assert signed.status_code == 303 and signed.headers["location"] == "/cards"
        assert (await client.get("/t/home/sign-in")).status_code == 404  # no /t/{slug} pages in this mode
