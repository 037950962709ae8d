"""The tenant app in a real browser: a person with an account in two workspaces signs in to both, adds a
card with an image in one (the thumbnail really loads: the browser decoded it), then switches workspace
with the switcher and sees that workspace's cards only; the live search swaps the results in place (htmx)
and its URL is a real page; and without JavaScript the same things still work with plain forms."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.async_api import FilePayload, Page

from controlplane.platform import Platform
from tests.browser.browser_support import Watched, png, screenshot, sign_in
from tests.integration.auth_support import USER_PASSWORD, TenantAdmin, add_user, create_tenant, login_as

#: A real browser against a real service (seconds per test); `make test` runs them.
pytestmark = pytest.mark.slow

EMAIL = "ann@collectors.test"


async def _card_numbers(page: Page) -> set[str]:
    """The card numbers the list on ``page`` shows."""
    return set(await page.locator("table.cards-table tbody tr td:nth-child(2)").all_inner_texts())


async def test_a_user_adds_a_card_with_an_image_then_switches_workspace_and_sees_only_its_cards(
    watched: Watched, api: httpx.AsyncClient, platform: Platform
) -> None:
    for slug in ("acme", "globex"):
        await create_tenant(api, slug)
        await add_user(platform, slug, EMAIL, "collection_manager")
    created = await api.post(
        "/t/globex/api/cards", json={"cardnumber": "GLOBEX-77"}, headers=await login_as(api, "globex", EMAIL)
    )
    assert created.status_code == 201, created.text

    page = await watched.page()
    await sign_in(page, "/t/globex/sign-in", EMAIL, USER_PASSWORD)
    await sign_in(page, "/t/acme/sign-in", EMAIL, USER_PASSWORD)
    assert page.url == f"{watched.origin}/t/acme/cards"
    assert await _card_numbers(page) == set()

    await page.get_by_role("link", name="Add a card").click()
    await page.wait_for_url("**/t/acme/cards/new")
    await page.get_by_label("Card number").fill("ACME-1")
    await page.get_by_label("Year").fill("1989")
    image: FilePayload = {"name": "front.png", "mimeType": "image/png", "buffer": png(48, 32)}
    await page.get_by_label("Image").set_input_files(image)
    await screenshot(page, "tenant-card-new")
    async with page.expect_navigation(url=re.compile(r"/t/acme/cards/\d+")):
        await page.get_by_role("button", name="Add card").click()
    await screenshot(page, "tenant-card-detail")

    await page.get_by_role("navigation", name="Workspace").get_by_role("link", name="Cards").click()
    await page.wait_for_url("**/t/acme/cards")
    assert await _card_numbers(page) == {"ACME-1"}
    thumb = page.get_by_role("img", name="Card ACME-1")
    await thumb.scroll_into_view_if_needed()
    await page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=await thumb.element_handle())
    assert await thumb.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [48, 32]  # the upload, decoded
    await screenshot(page, "tenant-cards")

    await page.get_by_label("Switch workspace").click()
    async with page.expect_navigation(url=re.compile(r"/t/globex/cards$")):
        await page.locator("details.switcher").get_by_role("link", name="globex", exact=True).click()
    assert await _card_numbers(page) == {"GLOBEX-77"}
    assert await page.get_by_label("Switch workspace").inner_text() == "globex"


async def _workspace_with_cards(api: httpx.AsyncClient, slug: str) -> TenantAdmin:
    """A new workspace with three cards, two of them T206s."""
    tenant = await create_tenant(api, slug)
    for number in ("T206-WAGNER", "T206-COBB", "1952-MANTLE"):
        created = await api.post(tenant.api("/cards"), json={"cardnumber": number}, headers=tenant.auth)
        assert created.status_code == 201, created.text
    return tenant


async def test_the_live_search_filters_the_cards_in_place_and_the_url_follows(
    watched: Watched, api: httpx.AsyncClient
) -> None:
    hooli = await _workspace_with_cards(api, "hooli")
    page = await watched.page()
    await sign_in(page, "/t/hooli/sign-in", hooli.admin_email, hooli.admin_password)
    assert len(await _card_numbers(page)) == 3
    await page.evaluate("window.sameDocument = true")  # gone if the browser loaded a new page

    await page.get_by_label("Search").fill("t206")
    await page.wait_for_function("() => document.querySelectorAll('table.cards-table tbody tr').length === 2")
    assert await _card_numbers(page) == {"T206-WAGNER", "T206-COBB"}
    assert await page.evaluate("window.sameDocument === true")  # htmx swapped the results only
    assert re.search(r"/t/hooli/cards\?(.*&)?q=t206", page.url), page.url

    await page.reload()  # the pushed URL is a real page: the same results, rendered by the server
    assert await _card_numbers(page) == {"T206-WAGNER", "T206-COBB"}
    assert await page.get_by_label("Search").input_value() == "t206"


@pytest.mark.parametrize("watched", [False], indirect=True, ids=["without-javascript"])
async def test_without_javascript_a_user_signs_in_searches_and_adds_a_card_with_an_image(
    watched: Watched, api: httpx.AsyncClient
) -> None:
    initech = await _workspace_with_cards(api, "initech")
    page = await watched.page()
    await sign_in(page, "/t/initech/sign-in", initech.admin_email, initech.admin_password)
    assert page.url == f"{watched.origin}/t/initech/cards" and len(await _card_numbers(page)) == 3

    await page.get_by_label("Search").fill("T206")
    async with page.expect_navigation():
        await page.get_by_role("button", name="Show cards").click()
    assert await _card_numbers(page) == {"T206-WAGNER", "T206-COBB"}

    await page.goto("/t/initech/cards/new")
    await page.get_by_label("Card number").fill("T206-PLANK")
    image: FilePayload = {"name": "plank.png", "mimeType": "image/png", "buffer": png(40, 56)}
    await page.get_by_label("Image").set_input_files(image)
    async with page.expect_navigation(url=re.compile(r"/t/initech/cards/\d+")):
        await page.get_by_role("button", name="Add card").click()
    await page.goto("/t/initech/cards?q=T206")
    assert await _card_numbers(page) == {"T206-WAGNER", "T206-COBB", "T206-PLANK"}
    thumb = page.get_by_role("img", name="Card T206-PLANK")
    await thumb.scroll_into_view_if_needed()
    await page.wait_for_function("img => img.complete", arg=await thumb.element_handle())
    assert await thumb.evaluate("img => img.naturalWidth") == 40  # (Playwright evaluates, not the page)
