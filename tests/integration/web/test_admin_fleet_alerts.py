"""Fleet & capacity and Alerts pages: the capacity planning drawn (fill, full dates, at-risk quotas,
upgrades), everything firing by severity with links to the tenants, bad parameters as 400 pages, and
that neither page opens to anyone but a super-admin."""

from __future__ import annotations

import re
from typing import Any

import httpx
from litestar import Litestar

from controlplane.http.state import METRICS_STATE_KEY
from controlplane.metrics.service import CardVaultMetrics
from controlplane.platform import Platform
from tests.integration.auth_support import create_tenant
from tests.integration.web.admin_pages_support import Listed, default_server, register, signed_in_admin
from tests.integration.web.web_support import sign_in_tenant

_GIB = 1024**3
GIB_HALF = _GIB // 2


async def _cards_history(control: Any, tenant_id: Any, start: float, end: float) -> None:
    """Two ``cards`` points ten days apart, and the quota usage at the second."""
    await control.execute(
        "INSERT INTO tenant_usage_metrics (tenant_id, metric_name, metric_value, recorded_at)"
        " VALUES (%s, 'cards', %s, now() - interval '10 days'), (%s, 'cards', %s, now())",
        (tenant_id, start, tenant_id, end),
    )
    await control.execute(
        "UPDATE tenant_quotas SET current_usage = %s WHERE tenant_id = %s AND quota_type = 'cards'",
        (int(end), tenant_id),
    )


async def test_the_fleet_page_draws_the_capacity_planning(
    browser: httpx.AsyncClient, platform: Platform, control: Any
) -> None:
    await signed_in_admin(browser, platform)
    ids = await register(
        control,
        [
            Listed("big-shop", "Big", size=GIB_HALF, growth=_GIB / 100),
            Listed("small-shop", "Small", size=1024, growth=0.0),
        ],
    )
    await _cards_history(control, ids["small-shop"], 890, 990)  # 10 cards a day: the 1,000 of starter in a day
    _, server = await default_server(control)
    plain = await browser.get("/admin/ui/fleet")
    assert plain.status_code == 200
    assert "capacity unknown" in plain.text and f"<td>{server}</td>" in plain.text
    at_risk = plain.text[plain.text.index("Quotas reached within 30 days") :]
    assert '<a href="/admin/ui/tenants/small-shop">small-shop</a>' in at_risk
    recommendations = plain.text[plain.text.index("<h2>Upgrade recommendations</h2>") :]
    assert "small-shop" in recommendations and "<td>professional</td>" in recommendations
    # With a capacity: a fill bar at ~50 % and a full date about 50 days out (0.5 GiB at 0.01 GiB a day).
    projected = await browser.get("/admin/ui/fleet?capacity_gib=1&days=90")
    assert projected.status_code == 200
    fill = re.search(rf'aria-valuenow="(\d+)" aria-label="fill of {server}"', projected.text)
    assert fill is not None and 45 <= int(fill.group(1)) <= 55
    days = re.search(r"\((\d+(?:\.\d)?) days\)", projected.text)
    assert days is not None and 45 <= float(days.group(1)) <= 55
    assert '<svg class="chart"' in projected.text and 'class="limit"' in projected.text
    for bad in ("days=0", "days=366", "capacity_gib=abc", "capacity_gib=-1"):
        response = await browser.get(f"/admin/ui/fleet?{bad}")
        assert response.status_code == 400 and "must be a whole number" in response.text, bad


async def test_the_alerts_page_lists_everything_firing_by_severity(
    browser: httpx.AsyncClient, platform: Platform, control: Any, web_app: Litestar
) -> None:
    await signed_in_admin(browser, platform)
    ids = await register(
        control,
        [
            Listed("full-shop", "Full", status="suspended"),
            Listed("warm-shop", "Warm", status="suspended"),
            Listed("error-shop", "Errors", status="suspended"),
            Listed("flaky-shop", "Flaky", status="suspended"),
            Listed("down-shop", "Down"),  # the only active one: the health round checks it
        ],
        created_days_ago=30,  # older than any backup schedule: every one is stale
    )
    await control.execute(
        "UPDATE tenants SET role_password_encrypted = %s WHERE slug = 'down-shop'", (platform.box.encrypt("nope"),)
    )
    await control.execute(
        "INSERT INTO quota_alerts (tenant_id, quota_type, threshold, usage, quota_limit)"
        " VALUES (%s, 'storage_bytes', 100, 10, 10), (%s, 'cards', 80, 850, 1000)",
        (ids["full-shop"], ids["warm-shop"]),
    )
    stats = (
        "INSERT INTO tenant_request_stats (tenant_id, hour, requests_2xx, requests_5xx, duration_buckets)"
        " VALUES (%s, date_trunc('hour', now()), %s, %s, array_fill(0::bigint, ARRAY[10]))"
    )
    await control.execute(stats, (ids["error-shop"], 60, 40))
    await control.execute(stats, (ids["flaky-shop"], 90, 10))
    metrics: CardVaultMetrics = web_app.state[METRICS_STATE_KEY]
    assert metrics.health is not None and metrics.backups is not None and metrics.jobs is not None
    await metrics.health.check()  # type: ignore[attr-defined]
    await metrics.backups.refresh()  # type: ignore[attr-defined]
    metrics.jobs.stats["deliver_mail"].last_error = "smtp refused"

    page = await browser.get("/admin/ui/alerts")
    assert page.status_code == 200
    html = page.text
    critical = html[html.index("critical</span>") : html.index("warning</span>")]
    warning = html[html.index("warning</span>") : html.index("<h2>Jobs</h2>")]
    link = '<a href="/admin/ui/tenants/{}">{}</a>'
    assert link.format("full-shop", "full-shop") in critical and "storage_bytes at 100 %" in critical
    assert link.format("down-shop", "down-shop") in critical and "health check failed" in critical
    assert link.format("error-shop", "error-shop") in critical and "40% of 100 API requests answered 5xx" in critical
    assert "job deliver_mail failed: smtp refused" in critical
    assert link.format("warm-shop", "warm-shop") in warning and "cards at 80 %" in warning
    assert link.format("flaky-shop", "flaky-shop") in warning and "10% of 100 API requests" in warning
    assert warning.count("backup stale") == 5


async def test_fleet_and_alerts_are_for_super_admins_only(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform, control: Any
) -> None:
    acme = await create_tenant(api, "acme")
    for path in ("/admin/ui/fleet", "/admin/ui/alerts"):
        response = await browser.get(path)
        assert response.status_code == 303 and response.headers["location"] == f"/admin/ui/?next={path}"
    response = await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    token = next(c for c in response.headers.get_list("set-cookie") if c.startswith("cv_access="))
    browser.cookies.set("cv_access", token.split(";")[0].split("=", 1)[1], path="/admin/ui")
    for path in ("/admin/ui/fleet", "/admin/ui/alerts"):
        response = await browser.get(path)
        assert response.status_code == 303 and response.headers["location"].startswith("/admin/ui/?next=")
