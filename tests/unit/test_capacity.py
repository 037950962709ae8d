"""Capacity planning math: least-squares trends, days until a limit, projections, tier recommendations."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from controlplane.registry.models import TIER_QUOTAS, QuotaType, Tier
from controlplane.usage import trends
from controlplane.usage.capacity import HISTORY_POINTS, history_bucket
from controlplane.usage.trends import Trend, days_until, next_tier, recommend, trend

T0 = datetime(2026, 11, 1, tzinfo=UTC)
GIB = 1024**3


def line(slope: float, start: float, days: int = 30, per_day: int = 1) -> list[tuple[datetime, float]]:
    return [(T0 + timedelta(days=i / per_day), start + slope * i / per_day) for i in range(days * per_day)]


def growing(slope: float) -> Trend:
    return Trend(slope_per_day=slope, intercept=0.0, r2=1.0, points=30)


# -- trend ------------------------------------------------------------------------------------------


def test_exact_line() -> None:
    fit = trend(line(1000.0, 5000.0, per_day=4))
    assert fit is not None
    assert fit.slope_per_day == pytest.approx(1000.0, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.points == 120
    assert fit.at(T0) == pytest.approx(5000.0, rel=1e-9)
    assert fit.at(T0 + timedelta(days=10)) == pytest.approx(15_000.0, rel=1e-9)


def test_noisy_line() -> None:
    rng = random.Random(7)
    points = [(at, value + rng.gauss(0, 50)) for at, value in line(100.0, 10_000.0, days=30, per_day=24)]
    fit = trend(points)
    assert fit is not None
    assert fit.slope_per_day == pytest.approx(100.0, rel=0.02)
    assert 0.95 < fit.r2 < 1.0


def test_pure_noise_has_low_r2() -> None:
    rng = random.Random(3)
    fit = trend([(T0 + timedelta(hours=i), rng.uniform(0, 1)) for i in range(500)])
    assert fit is not None
    assert fit.r2 < 0.05


def test_flat_line() -> None:
    fit = trend(line(0.0, 42.0))
    assert fit is not None
    assert fit.slope_per_day == 0.0
    assert fit.r2 == 1.0  # like PostgreSQL's regr_r2 when every value is equal
    assert days_until(fit, 42, 100) is None


def test_decreasing_line() -> None:
    fit = trend(line(-10.0, 1000.0))
    assert fit is not None
    assert fit.slope_per_day == pytest.approx(-10.0)
    assert days_until(fit, 700, 1000) is None


def test_single_point_or_no_spread_is_no_trend() -> None:
    assert trend([]) is None
    assert trend([(T0, 1.0)]) is None
    assert trend([(T0, 1.0), (T0, 5.0), (T0, 9.0)]) is None


def test_order_does_not_matter() -> None:
    points = line(3.5, 10.0)
    forward, backward = trend(points), trend(list(reversed(points)))
    assert forward is not None and backward is not None
    assert forward.slope_per_day == pytest.approx(backward.slope_per_day)


# -- days until -------------------------------------------------------------------------------------


def test_days_until() -> None:
    assert days_until(growing(10.0), 500, 1000) == pytest.approx(50.0)
    assert days_until(growing(10.0), 1000, 1000) == 0.0  # reached
    assert days_until(growing(10.0), 1200, 1000) == 0.0  # passed (a lowered limit)
    assert days_until(None, 1200, 1000) == 0.0  # reached needs no trend
    assert days_until(growing(10.0), 500, None) is None  # unlimited
    assert days_until(None, 500, 1000) is None  # no trend
    assert days_until(growing(0.0), 500, 1000) is None  # flat
    assert days_until(growing(-1.0), 500, 1000) is None  # shrinking
    assert days_until(growing(5e-324), 0, 2**62) is None  # infinitely far


def test_projected_at() -> None:
    assert trends.projected_at(T0, 2.5) == T0 + timedelta(days=2.5)
    assert trends.projected_at(T0, None) is None
    assert trends.projected_at(T0, 1e12) is None  # no OverflowError


def test_history_bucket() -> None:
    assert history_bucket(1) == timedelta(hours=1)
    assert history_bucket(30) == timedelta(hours=4)
    assert history_bucket(400) == timedelta(hours=48)
    for days in (1, 7, 30, 90, 400):
        assert days * 24 / (history_bucket(days).total_seconds() / 3600) <= HISTORY_POINTS


# -- recommendations --------------------------------------------------------------------------------


def test_next_tier_follows_tier_order() -> None:
    assert next_tier(Tier.STARTER) is Tier.PROFESSIONAL
    assert next_tier(Tier.PROFESSIONAL) is Tier.ENTERPRISE
    assert next_tier(Tier.ENTERPRISE) is None


def test_no_recommendation_when_far_or_flat() -> None:
    cards = TIER_QUOTAS[Tier.STARTER][QuotaType.CARDS]
    assert cards is not None
    assert recommend(Tier.STARTER, {QuotaType.CARDS: (cards - 150, growing(10.0))}) is None  # 15 days
    assert recommend(Tier.STARTER, {QuotaType.CARDS: (cards - 1, growing(0.0))}) is None
    assert recommend(Tier.STARTER, {QuotaType.CARDS: (cards - 1, None)}) is None
    assert recommend(Tier.ENTERPRISE, {QuotaType.CARDS: (10**9, growing(1e6))}) is None  # unlimited


def test_recommends_next_tier_within_14_days() -> None:
    cards = TIER_QUOTAS[Tier.STARTER][QuotaType.CARDS]
    assert cards is not None
    found = recommend(Tier.STARTER, {QuotaType.CARDS: (cards - 140, growing(10.0))})
    assert found is not None
    assert found.next_tier is Tier.PROFESSIONAL
    assert found.quotas == [QuotaType.CARDS]
    assert found.days_until == pytest.approx(14.0)
    assert "cards" in found.reason


def test_recommends_the_tier_that_is_enough() -> None:
    """Growth that would fill professional's storage within the window too skips to enterprise."""
    storage = TIER_QUOTAS[Tier.STARTER][QuotaType.STORAGE_BYTES]
    assert storage is not None
    found = recommend(Tier.STARTER, {QuotaType.STORAGE_BYTES: (storage // 2, growing(10 * GIB))})
    assert found is not None
    assert found.next_tier is Tier.ENTERPRISE  # professional's 25 GiB is gone in ~2.5 days
    modest = recommend(Tier.STARTER, {QuotaType.STORAGE_BYTES: (storage // 2, growing(0.1 * GIB))})
    assert modest is not None and modest.next_tier is Tier.PROFESSIONAL


def test_soonest_quota_first_and_top_tier() -> None:
    users = TIER_QUOTAS[Tier.PROFESSIONAL][QuotaType.USERS]
    cards = TIER_QUOTAS[Tier.PROFESSIONAL][QuotaType.CARDS]
    assert users is not None and cards is not None
    found = recommend(
        Tier.PROFESSIONAL,
        {QuotaType.CARDS: (cards - 100, growing(10.0)), QuotaType.USERS: (users, growing(0.1))},
    )
    assert found is not None
    assert found.quotas == [QuotaType.USERS, QuotaType.CARDS]
    assert found.days_until == 0.0
    assert found.next_tier is Tier.ENTERPRISE
    storage = TIER_QUOTAS[Tier.ENTERPRISE][QuotaType.STORAGE_BYTES]
    assert storage is not None
    top = recommend(Tier.ENTERPRISE, {QuotaType.STORAGE_BYTES: (storage - GIB, growing(GIB))})
    assert top is not None and top.next_tier is None and "top tier" in top.reason


def test_projections_use_quota_limits() -> None:
    points = {"cards": line(10.0, 0.0), "database_bytes": line(1000.0, 8e6)}
    current = {"cards": 290.0, "database_bytes": 8.03e6}
    out = {p.metric: p for p in trends.projections(points, current, {QuotaType.CARDS: 1000}, T0)}
    assert set(out) == set(trends.METRICS)
    assert out["cards"].days_until == pytest.approx(71.0)
    assert out["cards"].projected_at == T0 + timedelta(days=71)
    assert out["database_bytes"].quota is None and out["database_bytes"].days_until is None
    assert out["database_bytes"].slope_per_day == pytest.approx(1000.0)
    assert out["users"].slope_per_day is None and out["users"].points == 0
