"""The workspace switcher: one browser signed in to two workspaces keeps a session per workspace (cookies
scoped to each one's path), lists only the workspaces it holds, switches to the other's cards while its
session lives (else its sign-in form, the address filled in), shows nothing of one workspace on the
other's pages, and signing out of one keeps the other."""

from __future__ import annotations

import httpx

from controlplane.platform import Platform
from tests.integration.auth_support import add_user, create_tenant
from tests.integration.web.web_support import csrf_of, sign_in_tenant

ANN = "ann@shared.test"
SECRET_CARD = "ACME-SECRET-42"


def _cookies(browser: httpx.AsyncClient, name: str) -> dict[str, str]:
    """``{path: value}`` of the browser's cookies called ``name``."""
    return {cookie.path: cookie.value or "" for cookie in browser.cookies.jar if cookie.name == name}


def _listed(browser: httpx.AsyncClient) -> list[str]:
    value = _cookies(browser, "cv_workspaces").get("/", "")
    return value.rpartition(".")[0].split("~") if value else []


async def _two_workspaces(api: httpx.AsyncClient, platform: Platform) -> None:
    acme = await create_tenant(api, "acme")
    await create_tenant(api, "globex")
    for slug in ("acme", "globex"):
        await add_user(platform, slug, ANN, "tenant_admin")
    card = await api.post(acme.api("/cards"), json={"cardnumber": SECRET_CARD}, headers=acme.auth)
    assert card.status_code == 201, card.text


async def test_one_browser_switches_between_its_workspaces_and_nothing_crosses(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await _two_workspaces(api, platform)
    await sign_in_tenant(browser, "acme", ANN)
    await sign_in_tenant(browser, "globex", ANN)
    assert set(_cookies(browser, "cv_access")) == {"/t/acme", "/t/globex"}
    assert set(_cookies(browser, "cv_refresh")) == {"/t/acme", "/t/globex"}
    assert _listed(browser) == ["globex", "acme"]

    globex = await browser.get("/t/globex/cards")
    assert globex.status_code == 200, globex.text
    assert 'href="/t/acme/?email=ann%40shared.test"' in globex.text  # the switcher, with the address
    assert SECRET_CARD not in globex.text

    switched = await browser.get("/t/acme/?email=ann%40shared.test")
    assert switched.status_code == 303 and switched.headers["location"] == "/t/acme/cards"
    acme = await browser.get("/t/acme/cards")
    assert acme.status_code == 200 and SECRET_CARD in acme.text
    assert 'href="/t/globex/?email=ann%40shared.test"' in acme.text

    # A workspace whose session is gone (its cookies expired) leaves the list when the switch finds out.
    for name in ("cv_access", "cv_refresh"):
        browser.cookies.delete(name, path="/t/globex")
    gone = await browser.get("/t/globex/?email=ann%40shared.test")
    assert gone.status_code == 200 and 'action="/t/globex/sign-in"' in gone.text
    assert _listed(browser) == ["acme"]
    assert "/t/globex/" not in (await browser.get("/t/acme/cards")).text
    await sign_in_tenant(browser, "globex", ANN)

    # A forged list is no list: the switcher shows only what the signed cookie says.
    browser.cookies.set("cv_workspaces", "evil~globex.forged", path="/")
    forged = await browser.get("/t/acme/cards")
    assert "/t/evil/" not in forged.text and "/t/globex/?" not in forged.text


async def test_signing_out_of_one_workspace_keeps_the_other(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await _two_workspaces(api, platform)
    await sign_in_tenant(browser, "acme", ANN)
    await sign_in_tenant(browser, "globex", ANN)

    page = await browser.get("/t/globex/sign-in")
    out = await browser.post("/t/globex/sign-out", data={"csrf_token": csrf_of(page)})
    assert out.status_code == 303 and out.headers["location"] == "/t/globex/sign-in"
    assert _listed(browser) == ["acme"] and set(_cookies(browser, "cv_access")) == {"/t/acme"}

    assert (await browser.get("/t/acme/")).headers["location"] == "/t/acme/cards"
    acme = await browser.get("/t/acme/cards")
    assert acme.status_code == 200 and "/t/globex/" not in acme.text

    # Switching to a workspace without a live session: its sign-in form, the address filled in, and
    # nothing of the workspace the browser is still signed in to.
    form = await browser.get("/t/globex/?email=ann%40shared.test")
    assert form.status_code == 200 and 'action="/t/globex/sign-in"' in form.text
    assert f'value="{ANN}"' in form.text
    assert "acme" not in form.text and SECRET_CARD not in form.text
