"""Capacity planning against a real control database: projections, days-until and recommendations of
synthetic usage histories; PostgreSQL's ``regr_*`` fits agree with the Python ``trend``; one tenant's history
never shows in another's view. The usage collectors are off: the tests write the history themselves.
"""

from __future__ import annotations

import math
import random
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from controlplane.platform import Platform
from controlplane.settings import Settings
from controlplane.usage import capacity, trends
from tests.conftest import quiet_settings
from tests.integration.auth_support import create_tenant
from tests.integration.quota_support import evaluate, set_usage

Client = AsyncTestClient[Any]


@pytest.fixture
def settings(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> Settings:
    return quiet_settings(control_dsn, tenant_template_name, tmp_path)


async def add_history(
    control: psycopg.AsyncConnection[Any],
    tenant_id: uuid.UUID,
    metric: str,
    values: list[tuple[float, float]],
) -> None:
    """Points (days ago, value) of ``metric``, recorded relative to now."""
    async with control.cursor() as cur:
        await cur.executemany(
            "INSERT INTO tenant_usage_metrics (tenant_id, metric_name, metric_value, recorded_at)"
            " VALUES (%s, %s, %s, now() - make_interval(secs => %s))",
            [(tenant_id, metric, value, days_ago * 86400) for days_ago, value in values],
        )


def linear(slope: float, now_value: float, every_hours: float = 6, days: float = 29.5) -> list[tuple[float, float]]:
    """(days ago, value) on a line reaching ``now_value`` now."""
    steps = int(days * 24 / every_hours)
    return [(i * every_hours / 24, now_value - slope * i * every_hours / 24) for i in range(steps + 1)]


async def test_capacity_projections_and_recommendations(client: Client, platform: Platform, control: Any) -> None:
    grow = await create_tenant(client, "grow", "starter")
    calm = await create_tenant(client, "calm", "starter")
    # grow: cards +25/day, at 850 of 1,000 -> 6 days (an upgrade: within 14); database +1 MB/day.
    await add_history(control, grow.id, "cards", linear(25.0, 850.0))
    await set_usage(control, grow.id, "cards", 850)
    await add_history(control, grow.id, "database_bytes", linear(1e6, 50e6))
    # calm: users flat, storage shrinking; cards +5/day at 600 -> 80 days.
    await add_history(control, calm.id, "storage_bytes", linear(-1000.0, 5e6))
    await add_history(control, calm.id, "cards", linear(5.0, 600.0))
    await set_usage(control, calm.id, "cards", 600)
    await add_history(control, calm.id, "database_bytes", linear(0.0, 20e6))
    # Old points outside the 30-day window do not bend the line.
    await add_history(control, grow.id, "cards", [(40.0, 1e9), (31.0, 1e9)])

    report = (await client.get("/admin/capacity", params={"days": 30})).json()
    assert report["window_days"] == 30 and report["horizon_days"] == 30
    assert [(r["slug"], r["quota"]) for r in report["at_risk"]] == [("grow", "cards")]
    risk = report["at_risk"][0]
    assert risk["slope_per_day"] == pytest.approx(25.0, rel=1e-6)
    assert risk["days_until"] == pytest.approx(6.0, rel=1e-6)
    assert risk["r2"] == pytest.approx(1.0) and risk["limit"] == 1000 and risk["usage"] == 850
    assert [(r["slug"], r["recommendation"]["next_tier"]) for r in report["recommendations"]] == [
        ("grow", "professional")
    ]
    assert report["recommendations"][0]["recommendation"]["quotas"] == ["cards"]
    horizon = (await client.get("/admin/capacity", params={"days": 90})).json()
    assert [(r["slug"], round(r["days_until"])) for r in horizon["at_risk"]] == [("grow", 6), ("calm", 80)]

    (server,) = report["servers"]
    assert server["name"] == "default" and server["tenants"] == 2 and server["source"] == "history"
    assert server["database_bytes"] == pytest.approx(70e6, rel=1e-6)
    assert server["growth_bytes_per_day"] == pytest.approx(1e6, rel=1e-6)
    assert server["days_until_full"] is None and "capacity" in report["capacity_note"]
    sized = (await client.get("/admin/capacity", params={"capacity_bytes": 100_000_000})).json()
    assert sized["servers"][0]["days_until_full"] == pytest.approx(30.0, rel=1e-6)
    assert sized["servers"][0]["projected_full_at"] is not None and sized["capacity_note"] is None

    view = (await client.get("/admin/tenants/grow/usage")).json()
    projections = {p["metric"]: p for p in view["projections"]}
    assert projections["cards"]["slope_per_day"] == pytest.approx(25.0, rel=1e-6)
    assert projections["cards"]["days_until"] == pytest.approx(6.0, rel=1e-6)
    assert projections["database_bytes"]["quota"] is None
    assert projections["database_bytes"]["current"] == pytest.approx(50e6)
    assert projections["users"]["points"] == 0 and projections["users"]["slope_per_day"] is None
    assert view["recommendation"]["next_tier"] == "professional"
    assert view["bucket_seconds"] == 4 * 3600 and view["history_days"] == 30
    cards = view["history"]["cards"]
    assert 30 <= len(cards) <= 200 and max(p["value"] for p in cards) < 1e9
    assert cards[-1]["value"] == pytest.approx(850.0, abs=25)
    week = (await client.get("/admin/tenants/grow/usage", params={"days": 7})).json()
    assert week["bucket_seconds"] == 3600 and len(week["history"]["cards"]) == 28  # every 6 h, 7 days back
    calm_view = (await client.get("/admin/tenants/calm/usage")).json()
    assert calm_view["recommendation"] is None
    calm_projections = {p["metric"]: p for p in calm_view["projections"]}
    assert calm_projections["storage_bytes"]["slope_per_day"] == pytest.approx(-1000.0, rel=1e-6)
    assert calm_projections["storage_bytes"]["days_until"] is None


async def test_sql_and_python_trends_agree(client: Client, platform: Platform, control: Any) -> None:
    acme = await create_tenant(client, "acme", "professional")
    rng = random.Random(11)
    # Irregular times (several points in some hours, none in others) and noisy values.
    points = [(rng.uniform(0, 29.9), 0.0) for _ in range(400)]
    values = [(ago, 1e6 + 3e4 * (30 - ago) + rng.gauss(0, 2e5)) for ago, _ in points]
    await add_history(control, acme.id, "storage_bytes", values)
    await add_history(control, acme.id, "cards", [(ago, 10 + 2 * (30 - ago) + rng.gauss(0, 5)) for ago, _ in points])
    async with platform.control.connection() as conn:
        fleet = {r["metric_name"]: r["trend"] for r in await capacity.fleet_fits(conn) if r["tenant_id"] == acme.id}
        series = await capacity.trend_points(conn, acme.id)
    assert set(fleet) == {"storage_bytes", "cards"}
    for metric, sql_fit in fleet.items():
        python_fit = trends.trend(series[metric])
        assert sql_fit is not None and python_fit is not None
        assert python_fit.points == sql_fit.points == len(series[metric])
        assert python_fit.slope_per_day == pytest.approx(sql_fit.slope_per_day, rel=1e-6)
        assert python_fit.intercept == pytest.approx(sql_fit.intercept, rel=1e-6)
        assert python_fit.r2 == pytest.approx(sql_fit.r2, rel=1e-6)
        assert 0.5 < sql_fit.r2 < 1.0
    assert fleet["storage_bytes"] is not None
    assert math.isclose(fleet["storage_bytes"].slope_per_day, 3e4, rel_tol=0.1)


async def test_one_tenants_history_never_shows_in_another(client: Client, platform: Platform, control: Any) -> None:
    acme = await create_tenant(client, "acme", "starter")
    await create_tenant(client, "other", "starter")
    await add_history(control, acme.id, "cards", linear(25.0, 850.0))
    await add_history(control, acme.id, "database_bytes", linear(1e6, 50e6))
    await set_usage(control, acme.id, "cards", 850)
    await evaluate(platform)

    other = (await client.get("/admin/tenants/other/usage")).json()
    assert other["tenant"]["slug"] == "other"
    assert all(series == [] for series in other["history"].values())
    assert all(p["points"] == 0 and p["slope_per_day"] is None for p in other["projections"])
    assert other["alerts"] == [] and other["recommendation"] is None
    assert {q["usage"] for q in other["quotas"]} == {0}
    mine = (await client.get("/admin/tenants/acme/usage")).json()
    assert len(mine["history"]["cards"]) > 0 and [a["threshold"] for a in mine["alerts"]] == [80]
    assert {a["tenant_slug"] for a in mine["alerts"]} == {"acme"}
