"""Overage computation and the ledger (issue 12 item 6), against a real control database.

Proven here: overage per UTC day at and over each quota boundary (cards: the day's peak over the limit;
storage: started GiB over; API calls: each hour's calls over the hourly limit, summed); a point at the
last second of a day counts for that day, one at midnight for the next; a day is recorded only once it
is closed and settled, and only within the lookback; recomputing adds and changes nothing, even after
the usage changed; a tenant without a provider customer gets no row; unlimited quotas bill nothing,
limit overrides and storage expansions move the boundary; one tenant's usage never lands on another's
rows; ``overage_summary`` adds the ledger and the days still to record within the billing period.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from controlplane.billing import metering
from controlplane.billing.metering import LOOKBACK_DAYS, SETTLE, OverageLine
from controlplane.platform import Platform
from controlplane.registry.models import Overage
from controlplane.settings import Settings
from tests.conftest import quiet_settings
from tests.integration.admin_support import create
from tests.integration.billing_usage_support import (
    DAY0,
    DAY1,
    GIB,
    NOW,
    TODAY,
    add_calls,
    add_points,
    brief,
    ledger,
    set_customer,
)

Client = AsyncTestClient[Any]
H = timedelta(hours=1)


@pytest.fixture
def settings(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> Settings:
    return quiet_settings(control_dsn, tenant_template_name, tmp_path)


async def tenant(client: Client, control: Any, slug: str, tier: str = "starter", customer: bool = True) -> uuid.UUID:
    tenant_id = uuid.UUID((await create(client, slug, tier))["id"])
    if customer:
        await set_customer(control, tenant_id, f"cus_{slug}")
    return tenant_id


async def record(platform: Platform, now: datetime = NOW) -> int:
    async with platform.control.connection() as conn:
        return await metering.record_overage(conn, now=now)


async def test_overage_at_and_over_each_quota_boundary(client: Client, platform: Platform, control: Any) -> None:
    # starter: 1,000 cards, 1 GiB, 1,000 calls per hour
    at = await tenant(client, control, "at-limit")
    over = await tenant(client, control, "over-limit")
    await add_points(control, at, "cards", (DAY1 + 3 * H, 1000))
    await add_points(control, at, "storage_bytes", (DAY1 + 3 * H, GIB))
    await add_calls(control, at, (DAY1 + H, 1000), (DAY1 + 2 * H, 1000))

    await add_points(control, over, "cards", (DAY1 + H, 900), (DAY1 + 5 * H, 1200), (DAY1 + 9 * H, 1001))
    # The last second of a day counts for that day; midnight belongs to the next (today: not closed).
    await add_points(control, over, "cards", (TODAY - timedelta(seconds=1), 1150), (TODAY, 5000))
    await add_points(control, over, "storage_bytes", (DAY1 + H, GIB + 1), (DAY0 + H, 3 * GIB))
    await add_calls(control, over, (DAY1, 1001), (DAY1 + H, 2500), (DAY1 + 2 * H, 999), (TODAY, 9000))

    assert await record(platform) == 4
    assert brief(await ledger(control, at)) == []
    assert brief(await ledger(control, over)) == [
        ("api_calls", DAY1, 1 + 1500, 1001 + 2500 + 999, 1000),
        ("cards", DAY1, 200, 1200, 1000),
        ("storage_gb", DAY0, 2, 3 * GIB, GIB),
        ("storage_gb", DAY1, 1, GIB + 1, GIB),
    ]
    rows = await ledger(control, over)
    assert [r["identifier"] for r in rows] == [
        f"cv-{over}-api_calls-20310511T0000Z",
        f"cv-{over}-cards-20310511T0000Z",
        f"cv-{over}-storage_gb-20310510T0000Z",
        f"cv-{over}-storage_gb-20310511T0000Z",
    ]
    assert all(r["period_end"] - r["period_start"] == timedelta(days=1) for r in rows)
    assert all(r["reported_at"] is None and r["attempts"] == 0 and r["failed_at"] is None for r in rows)


async def test_recomputing_adds_nothing_even_after_the_usage_changed(
    client: Client, platform: Platform, control: Any
) -> None:
    acme = await tenant(client, control, "acme")
    await add_points(control, acme, "cards", (DAY1 + H, 1500))
    assert await record(platform) == 1
    before = await ledger(control)

    assert await record(platform) == 0
    await add_points(control, acme, "cards", (DAY1 + 2 * H, 4000))  # late data for a recorded day
    assert await record(platform, NOW + 5 * H) == 0
    assert await ledger(control) == before  # the first computation of a day wins

    # A later day is added next to it, the recorded one is left alone.
    await add_points(control, acme, "cards", (TODAY + H, 1010))
    assert await record(platform, NOW + timedelta(days=1)) == 1
    assert brief(await ledger(control)) == [("cards", DAY1, 500, 1500, 1000), ("cards", TODAY, 10, 1010, 1000)]


async def test_a_day_is_recorded_once_closed_and_settled_within_the_lookback(
    client: Client, platform: Platform, control: Any
) -> None:
    acme = await tenant(client, control, "acme")
    old = TODAY - timedelta(days=LOOKBACK_DAYS + 2)
    await add_points(control, acme, "cards", (old + H, 2000), (DAY1 + H, 1100), (TODAY + H, 1300))

    assert await record(platform, TODAY + SETTLE - timedelta(seconds=1)) == 0  # yesterday not settled yet
    assert await record(platform, TODAY + SETTLE) == 1
    assert brief(await ledger(control)) == [("cards", DAY1, 100, 1100, 1000)]  # the old day is out of reach
    assert metering.closed_periods(TODAY + SETTLE)[0] == TODAY - timedelta(days=LOOKBACK_DAYS)


async def test_a_tenant_without_a_customer_is_skipped(client: Client, platform: Platform, control: Any) -> None:
    none = await tenant(client, control, "no-record", customer=False)
    empty = await tenant(client, control, "no-customer", customer=False)
    await set_customer(control, empty, None)  # a billing record without a customer yet
    for tenant_id in (none, empty):
        await add_points(control, tenant_id, "cards", (DAY1 + H, 5000))
        await add_calls(control, tenant_id, (DAY1, 50_000))
    assert await record(platform) == 0
    assert await ledger(control) == []


async def test_the_limit_is_the_tenants_effective_quota(client: Client, platform: Platform, control: Any) -> None:
    big = await tenant(client, control, "big", tier="enterprise")  # cards unlimited, 100,000 calls per hour
    custom = await tenant(client, control, "custom")
    roomy = await tenant(client, control, "roomy")
    await add_points(control, big, "cards", (DAY1 + H, 10_000_000))
    await add_calls(control, big, (DAY1, 100_001))
    response = await client.put("/admin/tenants/custom/quotas", json={"limits": {"cards": 10, "storage_bytes": None}})
    assert response.status_code == 200, response.text
    await add_points(control, custom, "cards", (DAY1 + H, 15))
    await add_points(control, custom, "storage_bytes", (DAY1 + H, 100 * GIB))
    # An expansion that covered part of the day counts for the day; one that ended before it does not.
    await control.execute(
        "INSERT INTO quota_expansions (tenant_id, extra, reason, expires_at, created_by, created_at)"
        " VALUES (%s, %s, 'launch', %s, 'test', %s), (%s, %s, 'old', %s, 'test', %s)",
        (roomy, GIB, DAY1 + 2 * H, DAY1 + H, roomy, 10 * GIB, DAY0, DAY0 - timedelta(days=2)),
    )
    await add_points(control, roomy, "storage_bytes", (DAY1 + 23 * H, 2 * GIB), (DAY0 + H, 2 * GIB))

    await record(platform)
    assert brief(await ledger(control, big)) == [("api_calls", DAY1, 1, 100_001, 100_000)]
    assert brief(await ledger(control, custom)) == [("cards", DAY1, 5, 15, 10)]
    assert brief(await ledger(control, roomy)) == [("storage_gb", DAY0, 1, 2 * GIB, GIB)]


async def test_one_tenants_usage_never_lands_on_another(client: Client, platform: Platform, control: Any) -> None:
    a = await tenant(client, control, "tenant-a")
    b = await tenant(client, control, "tenant-b")
    await add_points(control, a, "cards", (DAY1 + H, 1700))
    await add_calls(control, b, (DAY1, 1300))
    await record(platform)
    assert brief(await ledger(control, a)) == [("cards", DAY1, 700, 1700, 1000)]
    assert brief(await ledger(control, b)) == [("api_calls", DAY1, 300, 1300, 1000)]
    assert all(str(r["tenant_id"]) in r["identifier"] for r in await ledger(control))


def lines(summary: list[OverageLine]) -> dict[Overage, tuple[int, int]]:
    return {line.meter: (line.quantity, line.reported) for line in summary}


async def test_summary_adds_the_ledger_and_the_days_still_to_record(
    client: Client, platform: Platform, control: Any
) -> None:
    acme = await tenant(client, control, "acme")
    other = await tenant(client, control, "other")
    free = await tenant(client, control, "free", customer=False)
    period_end = datetime(2031, 5, 20, 14, 0, tzinfo=UTC)  # monthly: the period began 2031-04-20 14:00
    await set_customer(control, acme, "cus_acme", period_end=period_end)
    before_period = datetime(2031, 4, 19, tzinfo=UTC)  # its event (04-19 23:59:59) fell in the last period
    await add_points(control, acme, "cards", (before_period + H, 9000), (DAY0 + H, 1100), (DAY1 + H, 1040))
    await add_points(control, acme, "cards", (TODAY + H, 1003))
    await add_points(control, other, "cards", (DAY1 + H, 5000))
    await add_points(control, free, "cards", (DAY1 + H, 5000))
    async with platform.control.connection() as conn:
        await metering.record_overage(conn, now=DAY1 + 12 * H)  # DAY0 only, so far
        await conn.execute("UPDATE billing_usage_reports SET reported_at = %s WHERE tenant_id = %s", (NOW, acme))
        summary = await metering.overage_summary(conn, acme, now=NOW)
        assert lines(summary) == {
            Overage.CARDS: (100 + 40 + 3, 100),
            Overage.STORAGE_GB: (0, 0),
            Overage.API_CALLS: (0, 0),
        }
        assert {(line.period_start, line.period_end) for line in summary} == {
            (datetime(2031, 4, 20, 14, 0, tzinfo=UTC), period_end)
        }
        # Recording the rest changes the split, not the total.
        await metering.record_overage(conn, now=NOW)
        assert lines(await metering.overage_summary(conn, acme, now=NOW))[Overage.CARDS] == (143, 100)
        # No customer: nothing is billed, all zero; no subscription period: the calendar month.
        summary = await metering.overage_summary(conn, free, now=NOW)
        assert set(lines(summary).values()) == {(0, 0)}
        assert summary[0].period_start == datetime(2031, 5, 1, tzinfo=UTC)
        assert summary[0].period_end == datetime(2031, 6, 1, tzinfo=UTC)


def test_billing_period_and_its_days() -> None:
    end = datetime(2031, 3, 31, 6, 0, tzinfo=UTC)
    now = datetime(2031, 3, 10, tzinfo=UTC)
    assert metering.billing_period(now, end, "month") == (datetime(2031, 2, 28, 6, 0, tzinfo=UTC), end)
    assert metering.billing_period(now, end, "year")[0] == datetime(2030, 3, 31, 6, 0, tzinfo=UTC)
    december = datetime(2031, 12, 31, 23, 0, tzinfo=UTC)
    assert metering.billing_period(december, None, None) == (
        datetime(2031, 12, 1, tzinfo=UTC),
        datetime(2032, 1, 1, tzinfo=UTC),
    )
    # A day belongs to the period its meter event (the day's last second) falls in.
    days = metering.period_days(datetime(2031, 2, 28, 6, 0, tzinfo=UTC), end, now)
    assert days[0] == datetime(2031, 2, 28, tzinfo=UTC) and days[-1] == now
    assert metering.identifier(uuid.UUID(int=1), Overage.CARDS, days[0]).endswith("-cards-20310228T0000Z")
