"""The super-admin dashboard in a real browser: sign in, create a tenant with the New tenant form, land on
its page with its usage history drawn as a chart, suspend it (the button stays disabled until the slug is
typed) and resume it, the registry (read through the admin API) agreeing at every step; and the tenants
list's live search swaps the rows in place (htmx)."""

from __future__ import annotations

import re

import httpx
import pytest

from controlplane.platform import Platform
from tests.browser.browser_support import Watched, screenshot, sign_in
from tests.integration.auth_support import USER_PASSWORD

#: A real browser against a real service (seconds per test); `make test` runs them.
pytestmark = pytest.mark.slow

SLUG = "acme-web"


async def _status(api: httpx.AsyncClient) -> str:
    response = await api.get(f"/admin/tenants/{SLUG}")
    assert response.status_code == 200, response.text
    status: str = response.json()["tenant"]["status"]
    return status


async def _record_storage_growth(api: httpx.AsyncClient, platform: Platform) -> None:
    """Ten days of growing storage in the tenant's usage history (what the collector records)."""
    tenant_id = (await api.get(f"/admin/tenants/{SLUG}")).json()["tenant"]["id"]
    async with platform.control.connection() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO tenant_usage_metrics (tenant_id, metric_name, metric_value, recorded_at)"
            " SELECT %s, 'storage_bytes', 1000000 * d, now() - make_interval(days => 10 - d)"
            " FROM generate_series(1, 9) AS d",
            (tenant_id,),
        )


async def test_an_admin_creates_a_tenant_sees_its_usage_chart_then_suspends_and_resumes_it(
    watched: Watched, api: httpx.AsyncClient, platform: Platform, super_admin: str
) -> None:
    page = await watched.page()
    await sign_in(page, "/admin/ui/", super_admin, USER_PASSWORD)
    assert page.url == f"{watched.origin}/admin/ui/"
    assert await page.get_by_role("heading", level=1).inner_text() == "Overview"

    await page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Tenants").click()
    await page.wait_for_url("**/admin/ui/tenants")
    await page.get_by_label("Slug", exact=True).fill(SLUG)
    await page.get_by_label("Name", exact=True).fill("Acme Web")
    await page.get_by_label("Tier", exact=True).select_option("professional")
    await page.get_by_label("Admin email", exact=True).fill(f"owner@{SLUG}.test")
    async with page.expect_navigation(url=re.compile(rf"/admin/ui/tenants/{SLUG}$"), timeout=60_000):
        await page.get_by_role("button", name="Create tenant").click()
    assert await _status(api) == "active"
    await _record_storage_growth(api, platform)
    await page.reload()
    chart = page.locator("svg.chart").first  # storage growth, the first chart of the page
    assert await chart.is_visible() and await chart.get_attribute("role") == "img"
    assert await chart.locator("polyline").count() >= 1  # the recorded history, drawn
    await screenshot(page, "admin-tenant-detail")

    suspend = page.locator('form[action$="/suspend"]')
    button = suspend.get_by_role("button", name="Suspend")
    assert await button.is_disabled()  # until the slug is typed
    await suspend.get_by_label("Type the slug to confirm").fill(SLUG)
    assert await button.is_enabled()
    async with page.expect_navigation():
        await button.click()
    assert await _status(api) == "suspended"
    assert await page.locator(".page-head .pill").inner_text() == "suspended"
    await screenshot(page, "admin-tenant-suspended")

    async with page.expect_navigation():
        await page.get_by_role("button", name="Resume").click()
    assert await _status(api) == "active"
    assert await page.locator(".page-head .pill").inner_text() == "active"

    await page.goto("/admin/ui/tenants")
    assert await page.get_by_role("link", name=SLUG, exact=True).get_attribute("href") == f"/admin/ui/tenants/{SLUG}"


async def test_the_tenants_live_search_filters_the_list_in_place(
    watched: Watched, api: httpx.AsyncClient, super_admin: str
) -> None:
    for slug in ("alpha-one", "alpha-two", "beta-one"):
        created = await api.post("/admin/tenants", json={"slug": slug, "name": slug.title(), "tier": "starter"})
        assert created.status_code == 201, created.text
    page = await watched.page()
    await sign_in(page, "/admin/ui/", super_admin, USER_PASSWORD)
    await page.goto("/admin/ui/tenants")
    await page.evaluate("window.sameDocument = true")  # gone if the browser loaded a new page

    await page.get_by_label("Search", exact=True).fill("alpha")
    await page.wait_for_function("() => document.querySelectorAll('#tenant-rows tr').length === 2")
    slugs = await page.locator("#tenant-rows tr td:first-child a").all_inner_texts()
    assert sorted(slugs) == ["alpha-one", "alpha-two"]
    assert await page.evaluate("window.sameDocument === true")  # htmx swapped the rows only
    assert re.search(r"/admin/ui/tenants\?(.*&)?q=alpha", page.url), page.url
