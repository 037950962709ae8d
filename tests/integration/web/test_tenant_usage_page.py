"""The usage page of the tenant app (``/t/{slug}/usage``): each quota with its usage, limit and fill bar,
the days until a growing quota reaches its limit (from the usage history's trend), the growth charts with
their projection to the limit, unlimited quotas and an empty history; every member may see it; and one
workspace's session sees nothing of another's usage."""

from __future__ import annotations

import dataclasses
import re
import uuid

import httpx
import pytest

from controlplane.platform import Platform
from controlplane.settings import Settings, UsageSettings
from tests.integration.auth_support import add_user, create_tenant
from tests.integration.web.web_support import sign_in_tenant

GIB = 1024**3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The usage collectors off: the tests write usage and history themselves."""
    return dataclasses.replace(settings, usage=UsageSettings(interval=0, compact_interval=0))


async def _usage(platform: Platform, tenant_id: uuid.UUID, quota: str, value: int) -> None:
    async with platform.control.connection() as conn:
        await conn.execute(
            "UPDATE tenant_quotas SET current_usage = %s WHERE tenant_id = %s AND quota_type = %s",
            (value, tenant_id, quota),
        )


async def _history(platform: Platform, tenant_id: uuid.UUID, metric: str, per_day: float, now_value: float) -> None:
    """A point every 6 hours over the last 10 days, on a line reaching ``now_value`` now."""
    points = [(i / 4, now_value - per_day * i / 4) for i in range(41)]
    async with platform.control.connection() as conn, conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO tenant_usage_metrics (tenant_id, metric_name, metric_value, recorded_at)"
            " VALUES (%s, %s, %s, now() - make_interval(secs => %s))",
            [(tenant_id, metric, value, days_ago * 86400) for days_ago, value in points],
        )


def _row(text: str, label: str) -> str:
    return text[text.index(f'<th scope="row">{label}</th>') :].split("</tr>")[0]


def _chart(text: str, title: str) -> str:
    return text[text.index(f"<h2>{title} growth</h2>") :].split("</svg>")[0]


async def test_quotas_growth_and_days_to_each_limit_are_shown(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")  # professional: 50,000 cards, 25 GiB, 10 users
    await _usage(platform, acme.id, "cards", 40_000)
    await _history(platform, acme.id, "cards", 1_000, 40_000)  # reaches 50,000 in 10 days
    await _usage(platform, acme.id, "storage_bytes", 5 * GIB)
    await _history(platform, acme.id, "storage_bytes", 0.01 * GIB, 5 * GIB)  # 2,000 days: not soon
    await _usage(platform, acme.id, "api_calls_per_hour", 9_500)
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)

    page = await browser.get("/t/acme/usage")
    assert page.status_code == 200, page.text
    cards = _row(page.text, "Cards")
    assert "40,000" in cards and "50,000" in cards and 'aria-valuenow="80"' in cards
    assert re.search(r"in about (9\.9|10\.0|10\.1) days", cards), cards
    storage = _row(page.text, "Storage")
    assert "5.0 GiB" in storage and "25.0 GiB" in storage and 'aria-valuenow="20"' in storage
    assert "in more than a year" in storage  # growing, but far off
    calls = _row(page.text, "API calls this hour")
    assert "9,500" in calls and "10,000" in calls and 'class="quota-fill full"' in calls
    users = _row(page.text, "Users")
    assert "not at the current rate" in users  # no history: no trend
    # The cards chart: the history, a projection reaching the limit line, the limit labelled.
    chart = _chart(page.text, "Cards")
    assert 'class="area"' in chart and 'class="projection"' in chart and 'class="limit"' in chart
    assert "limit 50,000" in chart and "<title>Cards: projection</title>" in chart
    labels = re.findall(r'<th scope="row">([^<]+)</th>', page.text)
    assert labels == ["Cards", "Storage", "Users", "API calls this hour"]
    storage_chart = _chart(page.text, "Storage")  # the trend ahead for as long as the history reaches back
    assert "limit 25.0 GiB" in storage_chart and 'class="projection"' in storage_chart


async def test_unlimited_quotas_and_an_empty_history_and_every_member_may_look(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await create_tenant(api, "big", tier="enterprise")  # unlimited users and cards
    await add_user(platform, "big", "ann@big.test", "user")
    await sign_in_tenant(browser, "big", "ann@big.test")
    page = await browser.get("/t/big/usage")
    assert page.status_code == 200, page.text
    cards = _row(page.text, "Cards")
    assert "unlimited" in cards and "never (unlimited)" in cards and "quota-fill" not in cards
    assert "No data yet" in _chart(page.text, "Cards") and "enterprise" in page.text


async def test_one_workspaces_session_sees_nothing_of_anothers_usage(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    globex = await create_tenant(api, "globex")
    await _usage(platform, globex.id, "cards", 31_337)
    await _usage(platform, acme.id, "cards", 12)
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    own = await browser.get("/t/acme/usage")
    assert "31,337" not in own.text and '<td class="num">12' in _row(own.text, "Cards")
    away = await browser.get("/t/globex/usage")
    assert away.status_code == 303 and "31,337" not in away.text
    access = browser.cookies.get("cv_access", path="/t/acme")
    assert access is not None
    browser.cookies.set("cv_access", access, path="/t/globex")
    forged = await browser.get("/t/globex/usage")
    assert forged.status_code == 403 and "31,337" not in forged.text
