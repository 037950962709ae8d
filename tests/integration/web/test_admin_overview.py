"""The dashboard's overview: tenants by status and tier, what is firing, fleet fill and job health; and
that only a super-admin sees it (signed out or as a tenant user, ``/admin/ui/`` is the sign-in form)."""

from __future__ import annotations

import re
from typing import Any

import httpx

from controlplane.platform import Platform
from tests.integration.auth_support import create_tenant
from tests.integration.web.admin_pages_support import Listed, default_server, register, signed_in_admin
from tests.integration.web.web_support import sign_in_tenant


def _row_numbers(html: str, status: str) -> list[str]:
    """The numbers of the status/tier table's row of ``status`` (per tier, then all)."""
    row = re.search(rf'<tr>\s*<th scope="row"><a href="/admin/ui/tenants\?status={status}">.*?</tr>', html, re.S)
    assert row is not None, status
    return re.findall(r'<td class="num">([^<]*)</td>', row.group(0))


async def test_the_overview_counts_tenants_by_status_and_tier_and_shows_what_fires(
    browser: httpx.AsyncClient, platform: Platform, control: Any
) -> None:
    await signed_in_admin(browser, platform)
    ids = await register(
        control,
        [
            Listed("one-shop", "One", size=2048),
            Listed("two-shop", "Two", tier="professional", size=4096),
            Listed("three-shop", "Three", status="suspended", tier="enterprise"),
            Listed("four-shop", "Four", status="suspended", tier="enterprise"),
        ],
    )
    await control.execute(
        "INSERT INTO quota_alerts (tenant_id, quota_type, threshold, usage, quota_limit)"
        " VALUES (%s, 'cards', 100, 1000, 1000)",
        (ids["two-shop"],),
    )
    _, server = await default_server(control)
    page = await browser.get("/admin/ui/")
    assert page.status_code == 200 and "<h1>Overview</h1>" in page.text
    html = page.text
    # starter, professional, enterprise, all
    assert _row_numbers(html, "active") == ["1", "1", "0", "2"]
    assert _row_numbers(html, "suspended") == ["0", "0", "2", "2"]
    assert _row_numbers(html, "deleting") == ["0", "0", "0", "0"]
    assert '<svg class="chart"' in html and "Tenants by status" in html
    # The quota alert at 100 % is firing, critical, linked to its tenant.
    firing = html[html.index("<h2>Firing now</h2>") :]
    assert 'pill-critical">critical' in firing and '<a href="/admin/ui/tenants/two-shop">two-shop</a>' in firing
    assert "cards at 100 %" in firing
    # Fleet fill: the server and the bytes its tenants hold (from the history before a collection).
    assert f"<td>{server}</td>" in html
    # Job health: the scheduler's jobs of this replica, where they run.
    jobs = html[html.index("<h2>Jobs</h2>") :]
    assert "<code>collect_usage</code>" in jobs and "<code>flush_api_calls</code>" in jobs
    assert "every replica" in jobs and "leader" in jobs


async def test_the_overview_is_the_sign_in_form_for_anyone_but_a_super_admin(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform, control: Any
) -> None:
    acme = await create_tenant(api, "acme")
    await register(control, [Listed("hidden-shop", "Hidden")])
    signed_out = await browser.get("/admin/ui/")
    assert 'action="/admin/ui/sign-in"' in signed_out.text and "hidden-shop" not in signed_out.text
    response = await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    token = next(c for c in response.headers.get_list("set-cookie") if c.startswith("cv_access="))
    browser.cookies.set("cv_access", token.split(";")[0].split("=", 1)[1], path="/admin/ui")
    as_tenant = await browser.get("/admin/ui/")
    assert 'action="/admin/ui/sign-in"' in as_tenant.text
    assert "Tenants by status" not in as_tenant.text and "<h2>Jobs</h2>" not in as_tenant.text
