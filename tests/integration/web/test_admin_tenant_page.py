"""The tenant detail page of the dashboard (``/admin/ui/tenants/{slug}``): a real tenant's numbers, its
charts, the live diagnostics fragment, and that nobody but a super-admin sees any of it."""

from __future__ import annotations

import re

import httpx
from litestar import Litestar

from controlplane.platform import Platform
from tests.integration.auth_support import add_user, create_tenant
from tests.integration.web.admin_tenant_support import add_storage_history, measured_tenant, signed_in_admin
from tests.integration.web.web_support import sign_in_tenant

_GIB = 1024**3


def _row(page: str, label: str, after: str = "") -> list[str]:
    """The cells of the (first after ``after``) table row headed ``label``."""
    found = re.search(rf'<th scope="row">{re.escape(label)}</th>(.*?)</tr>', page[page.index(after) :], re.S)
    assert found is not None, f"no row {label!r}"
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", found.group(1), re.S)]


def _chart(page: str, label: str) -> str:
    found = re.search(rf'<svg class="chart"[^>]*aria-label="{re.escape(label)}".*?</svg>', page, re.S)
    assert found is not None, f"no chart {label!r}"
    return found.group(0)


async def test_the_page_shows_a_measured_tenants_real_numbers(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, web_app: Litestar, platform: Platform
) -> None:
    await signed_in_admin(browser, platform)
    await measured_tenant(api, web_app, "acme", cards=3)
    await measured_tenant(api, web_app, "globex", cards=5)
    response = await browser.get("/admin/ui/tenants/acme")
    assert response.status_code == 200
    page = response.text
    assert "<h1>acme" in page and "pill-active" in page and "<dd>professional</dd>" in page
    assert _row(page, "Cards")[:2] == ["3", "50,000"]  # acme's own count, not globex's 5
    assert _row(page, "Users")[:2] == ["1", "10"]
    assert _row(page, "Backups (retained)") == ["0 B", "0"]
    assert _row(page, "Database")[0].endswith("MiB")  # pg_database_size, measured
    assert _row(page, "cards")[0].endswith("KiB")  # the tables of the scan
    assert re.search(r"<dt>Requests</dt><dd>3</dd>", page)  # the three creates, flushed
    assert "tenant.create" in page  # the platform audit of acme
    assert "globex" not in page


async def test_the_growth_chart_draws_history_projection_and_quota(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, web_app: Litestar, platform: Platform
) -> None:
    await signed_in_admin(browser, platform)
    acme = await measured_tenant(api, web_app, "acme", cards=1)
    await add_storage_history(platform, acme.id, {20: 1 * _GIB, 10: 2 * _GIB, 1: 3 * _GIB})
    page = (await browser.get("/admin/ui/tenants/acme")).text
    growth = _chart(page, "Storage used over time")
    assert 'class="series"' in growth and 'class="projection"' in growth and 'class="limit"' in growth
    assert re.search(r'<text class="limit-label"[^>]*>Quota</text>', growth)  # the storage quota's line
    assert (
        "in " in _row(page, "Storage", after="Days to each limit")[-1]
    )  # days to the limit at the trend's pace (1 GiB per 10 days)
    requests = _chart(page, "Requests per hour by status class")
    assert "<title>2xx</title>" in requests and "<title>5xx</title>" in requests
    assert "No requests" not in requests
    _chart(page, "Error rate per hour (percent)")
    _chart(page, "Latency per hour (milliseconds)")


async def test_a_tenant_never_measured_still_has_its_page(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await signed_in_admin(browser, platform)
    await create_tenant(api, "acme")
    page = (await browser.get("/admin/ui/tenants/acme")).text
    assert "Not measured yet" in page and "No table scan yet." in page
    assert "No data yet" in _chart(page, "Storage used over time")


async def test_the_diagnostics_are_a_fragment_for_htmx_and_a_page_without_javascript(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await signed_in_admin(browser, platform)
    await create_tenant(api, "acme")
    page = (await browser.get("/admin/ui/tenants/acme")).text
    assert 'hx-get="/admin/ui/tenants/acme/diagnostics"' in page and 'href="/admin/ui/tenants/acme/diagnostics"' in page
    fragment = await browser.get("/admin/ui/tenants/acme/diagnostics", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert "pill-healthy" in fragment.text and "Slowest statements" in fragment.text
    full = await browser.get("/admin/ui/tenants/acme/diagnostics")
    assert full.status_code == 200 and "<html" in full.text and "pill-healthy" in full.text


async def test_an_unknown_or_malformed_slug_is_a_404_page(browser: httpx.AsyncClient, platform: Platform) -> None:
    await signed_in_admin(browser, platform)
    for path in (
        "/admin/ui/tenants/nobody",
        "/admin/ui/tenants/NOT%20a%20slug",
        "/admin/ui/tenants/nobody/diagnostics",
    ):
        response = await browser.get(path)
        assert response.status_code == 404, path
        assert "Not found" in response.text and "text/html" in response.headers["content-type"]


async def test_signed_out_and_tenant_users_get_nothing(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    signed_out = await browser.get("/admin/ui/tenants/acme")
    assert signed_out.status_code == 303 and signed_out.headers["location"].startswith("/admin/ui/?next=")
    # A tenant admin signed in to the tenant app: its cookies stay in /t/acme, and carried to the
    # dashboard they sign in nobody.
    await add_user(platform, "acme", "ann@acme.test", "tenant_admin")
    signed_in = await sign_in_tenant(browser, "acme", "ann@acme.test")
    token = signed_in.headers.get_list("set-cookie")[0].split(";")[0].split("=", 1)[1]
    browser.cookies.set("cv_access", token, path="/admin/ui")
    for path in ("/admin/ui/tenants/acme", "/admin/ui/tenants/acme/diagnostics"):
        response = await browser.get(path)
        assert response.status_code == 303 and "/admin/ui/?next=" in response.headers["location"]
    # Pages take no bearer header: the tenant's token sent as one is no session either.
    browser.cookies.clear()
    refused = await browser.get("/admin/ui/tenants/acme", headers=acme.auth)
    assert refused.status_code == 303 and "Usage and quotas" not in refused.text
