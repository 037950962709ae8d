"""Usage history against a real control database: downsampled per hour, then per day, then dropped, exactly
at the edges ``history_plan`` computes."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import Tenant
from controlplane.usage.repository import history_plan
from controlplane.usage.service import UsageService
from tests.integration.tenant_support import execute, fetch
from tests.integration.usage_support import (
    create_tenants,
)


@pytest.fixture
def usage(platform: Platform) -> UsageService:
    return UsageService(platform)


# -- history retention ------------------------------------------------------------------------------


async def test_history_is_downsampled_per_hour_then_per_day_then_dropped(
    usage: UsageService, service: TenantService, control_dsn: str
) -> None:
    shop, other = await create_tenants(service, "history-a", "history-b")
    now = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)

    async def series(tenant: Tenant, metric: str, start: datetime, end: datetime, step: str) -> None:
        await execute(
            control_dsn,
            """
            INSERT INTO tenant_usage_metrics (tenant_id, metric_name, metric_value, recorded_at)
            SELECT %s, %s, extract(epoch FROM g), g FROM generate_series(%s::timestamptz, %s, %s::interval) g
            """,
            (tenant.id, metric, start, end, step),
        )

    raw_start = now - timedelta(days=7)
    hourly_day = datetime(2026, 6, 5, tzinfo=UTC)  # 10 days back: one point per hour
    daily_days = datetime(2026, 3, 7, tzinfo=UTC)  # 100 days back: one point per day
    ancient = now - timedelta(days=500)
    five_minutes = "5 minutes"
    await series(shop, "database_bytes", raw_start, raw_start + timedelta(minutes=25), five_minutes)  # 6 raw
    await series(shop, "database_bytes", now - timedelta(hours=2), now, five_minutes)  # 25 raw
    await series(shop, "database_bytes", hourly_day, hourly_day + timedelta(hours=23, minutes=55), five_minutes)
    await series(shop, "cards", hourly_day, hourly_day + timedelta(hours=23, minutes=55), five_minutes)
    await series(other, "database_bytes", hourly_day, hourly_day + timedelta(hours=23, minutes=55), five_minutes)
    await series(shop, "database_bytes", daily_days, daily_days + timedelta(days=3) - timedelta(minutes=30), "30 min")
    await series(shop, "database_bytes", ancient, ancient + timedelta(hours=9), "1 hour")  # 10 too old
    # Just before the raw window: the hour [raw_start - 1h, raw_start) keeps one point.
    await series(shop, "database_bytes", raw_start - timedelta(hours=1), raw_start - timedelta(minutes=5), five_minutes)

    deleted = await usage.compact_history(now=now)

    async def points(tenant: Tenant, metric: str, start: datetime, end: datetime) -> list[datetime]:
        rows = await fetch(
            control_dsn,
            "SELECT recorded_at FROM tenant_usage_metrics WHERE tenant_id = %s AND metric_name = %s"
            " AND recorded_at >= %s AND recorded_at < %s ORDER BY recorded_at",
            (tenant.id, metric, start, end),
        )
        return [r["recorded_at"] for r in rows]

    day_end = hourly_day + timedelta(days=1)
    last_of_each_hour = [hourly_day + timedelta(hours=h, minutes=55) for h in range(24)]
    assert await points(shop, "database_bytes", hourly_day, day_end) == last_of_each_hour
    assert await points(shop, "cards", hourly_day, day_end) == last_of_each_hour
    assert await points(other, "database_bytes", hourly_day, day_end) == last_of_each_hour
    last_of_each_day = [daily_days + timedelta(days=d, hours=23, minutes=30) for d in range(3)]
    assert await points(shop, "database_bytes", daily_days, daily_days + timedelta(days=3)) == last_of_each_day
    assert await points(shop, "database_bytes", ancient - timedelta(days=1), ancient + timedelta(days=1)) == []
    assert len(await points(shop, "database_bytes", raw_start, now + timedelta(seconds=1))) == 6 + 25
    assert await points(shop, "database_bytes", raw_start - timedelta(hours=1), raw_start) == [
        raw_start - timedelta(minutes=5)
    ]
    assert deleted == 3 * (288 - 24) + (144 - 3) + 10 + (12 - 1)

    # Idempotent: a second pass finds nothing more to remove.
    assert await usage.compact_history(now=now) == 0


def test_history_plan_edges_fall_on_hours_and_days() -> None:
    now = datetime(2026, 6, 15, 12, 34, 56, tzinfo=UTC)
    drop_before, slices = history_plan(
        now, datetime(2020, 1, 1, tzinfo=UTC), raw=7 * 86400, hourly=90 * 86400, daily=400 * 86400
    )
    assert drop_before == datetime(2025, 5, 11, tzinfo=UTC)
    assert slices[0][0] == drop_before
    assert slices[-1][1] == datetime(2026, 6, 8, 12, tzinfo=UTC)
    for (_, end, _), (start, _, _) in itertools.pairwise(slices):
        assert end == start  # contiguous
    day, hour = timedelta(days=1), timedelta(hours=1)
    assert {b for s, e, b in slices if e <= datetime(2026, 3, 17, tzinfo=UTC)} == {day}
    assert {b for s, e, b in slices if s >= datetime(2026, 3, 17, tzinfo=UTC)} == {hour}
    # Nothing to do when all history is newer than the raw window.
    assert history_plan(now, now - hour, raw=7 * 86400, hourly=90 * 86400, daily=400 * 86400)[1] == []
