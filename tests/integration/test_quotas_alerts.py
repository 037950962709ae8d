"""Quota alerts against a real control database.

Proven here: alerts open at 80 % and 100 % of the effective limit, are never duplicated by re-evaluation
(nor by two evaluations at once), resolve when usage falls or the limit grows, cover every quota, and list
with paging and filters. Admin quota controls are in ``test_quota_controls.py``, capacity planning in
``test_capacity_planning.py``.

The usage collectors are switched off (``usage.interval = 0``): the tests set ``current_usage`` and the
history themselves.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from controlplane.platform import Platform
from controlplane.registry.models import TIER_QUOTAS, QuotaType, Tier
from controlplane.settings import Settings
from controlplane.usage import alerts
from controlplane.usage.alerts import ChangeKind
from tests.conftest import quiet_settings
from tests.integration.auth_support import create_tenant
from tests.integration.quota_support import alert_rows, assert_error, evaluate, set_usage

Client = AsyncTestClient[Any]
GIB = 1024**3


@pytest.fixture
def settings(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> Settings:
    return quiet_settings(control_dsn, tenant_template_name, tmp_path)


# -- alerts -----------------------------------------------------------------------------------------


async def test_alerts_open_deduplicate_and_resolve(client: Client, platform: Platform, control: Any) -> None:
    acme = await create_tenant(client, "acme", "starter")  # cards limit 1,000
    other = await create_tenant(client, "other", "starter")
    await set_usage(control, acme.id, "cards", 799)
    assert await evaluate(platform) == []

    await set_usage(control, acme.id, "cards", 800)
    changes = await evaluate(platform)
    assert [(c.kind, c.slug, c.quota, c.threshold, c.usage, c.limit) for c in changes] == [
        (ChangeKind.OPENED, "acme", QuotaType.CARDS, 80, 800, 1000)
    ]
    # Re-evaluating the same condition changes nothing; more usage updates the open row in place.
    assert await evaluate(platform) == []
    await set_usage(control, acme.id, "cards", 850)
    changes = await evaluate(platform)
    assert [(c.kind, c.threshold, c.usage) for c in changes] == [(ChangeKind.UPDATED, 80, 850)]
    assert await alert_rows(control, acme.id) == [("cards", 80, "open", 850, 1000)]

    await set_usage(control, acme.id, "cards", 1000)
    changes = await evaluate(platform)
    assert {(c.kind, c.threshold) for c in changes} == {(ChangeKind.UPDATED, 80), (ChangeKind.OPENED, 100)}
    for _ in range(3):
        await evaluate(platform)
    assert await alert_rows(control, acme.id) == [("cards", 80, "open", 1000, 1000), ("cards", 100, "open", 1000, 1000)]
    assert await alert_rows(control, other.id) == []

    # Falling below 100 % resolves that alert only; below 80 % resolves the other.
    await set_usage(control, acme.id, "cards", 900)
    changes = await evaluate(platform)
    assert {(c.kind, c.threshold) for c in changes} == {(ChangeKind.RESOLVED, 100), (ChangeKind.UPDATED, 80)}
    await set_usage(control, acme.id, "cards", 10)
    changes = await evaluate(platform)
    assert [(c.kind, c.threshold, c.usage) for c in changes] == [(ChangeKind.RESOLVED, 80, 10)]
    rows = await alert_rows(control, acme.id)
    assert [(r[1], r[2]) for r in rows] == [(80, "resolved"), (100, "resolved")]
    cur = await control.execute("SELECT count(*) FROM quota_alerts WHERE resolved_at IS NULL")
    assert (await cur.fetchone())[0] == 0

    # The condition coming back opens a new event; the resolved ones stay as history.
    await set_usage(control, acme.id, "cards", 950)
    changes = await evaluate(platform)
    assert [(c.kind, c.threshold) for c in changes] == [(ChangeKind.OPENED, 80)]
    assert len(await alert_rows(control, acme.id)) == 3


async def test_a_collection_measures_evaluates_and_exports_alerts(client: Client) -> None:
    """End to end through the app: cards made, ``POST /admin/usage/collect`` measures them, opens the
    alerts, and ``/metrics`` counts them; deleting a card and collecting again resolves them."""
    acme = await create_tenant(client, "acme", "starter")
    other = await create_tenant(client, "other", "starter")
    assert (await client.put("/admin/tenants/acme/quotas", json={"limits": {"cards": 2}})).status_code == 200
    ids = []
    for n in range(2):
        created = await client.post(acme.api("/cards"), json={"cardnumber": f"C-{n}"}, headers=acme.auth)
        ids.append(created.json()["id"])
    await client.post(other.api("/cards"), json={"cardnumber": "O-1"}, headers=other.auth)

    assert (await client.post("/admin/usage/collect")).status_code == 200
    # (Each starter tenant's one admin is also 100 % of its users quota of 1: alerts, not asserted here.)
    cards = [a for a in (await client.get("/admin/alerts")).json()["items"] if a["quota"] == "cards"]
    assert sorted((a["tenant_slug"], a["quota"], a["threshold"], a["usage"], a["limit"]) for a in cards) == [
        ("acme", "cards", 80, 2, 2),
        ("acme", "cards", 100, 2, 2),
    ]
    exposition = (await client.get("/metrics")).text
    assert 'cardvault_quota_alerts_open{quota="cards",threshold="100"} 1.0' in exposition
    assert 'cardvault_quota_alerts_open{quota="storage_bytes",threshold="80"} 0.0' in exposition

    deleted = await client.delete(acme.api(f"/cards/{ids[0]}"), headers=acme.auth)
    assert deleted.status_code == 204, deleted.text
    assert (await client.post("/admin/usage/collect", params={"full": "true"})).status_code == 200
    assert [a for a in (await client.get("/admin/alerts")).json()["items"] if a["quota"] == "cards"] == []
    resolved = (await client.get("/admin/alerts", params={"state": "resolved"})).json()["items"]
    assert sorted((a["threshold"], a["usage"]) for a in resolved) == [(80, 1), (100, 1)]
    assert 'cardvault_quota_alerts_open{quota="cards",threshold="100"} 0.0' in (await client.get("/metrics")).text


async def test_alerts_cover_every_quota_and_follow_limits(client: Client, platform: Platform, control: Any) -> None:
    acme = await create_tenant(client, "acme", "starter")
    limits = TIER_QUOTAS[Tier.STARTER]
    for quota in QuotaType:
        limit = limits[quota]
        assert limit is not None
        await set_usage(control, acme.id, quota.value, limit)
    changes = await evaluate(platform)
    assert {(c.quota, c.threshold) for c in changes} == {(q, t) for q in QuotaType for t in (80, 100)}

    # A raised limit resolves what no longer holds (and an unlimited quota resolves all of its alerts).
    response = await client.put(
        "/admin/tenants/acme/quotas", json={"limits": {"cards": limits[QuotaType.CARDS] * 2, "users": None}}
    )
    assert response.status_code == 200, response.text
    cur = await control.execute(
        "SELECT quota_type, threshold FROM quota_alerts WHERE tenant_id = %s AND state = 'open' ORDER BY 1, 2",
        (acme.id,),
    )
    assert await cur.fetchall() == [
        ("api_calls_per_hour", 80),
        ("api_calls_per_hour", 100),
        ("storage_bytes", 80),
        ("storage_bytes", 100),
    ]


async def test_zero_usage_never_alerts_and_deleting_tenants_resolve(
    client: Client, platform: Platform, control: Any
) -> None:
    acme = await create_tenant(client, "acme", "starter")
    response = await client.put("/admin/tenants/acme/quotas", json={"limits": {"cards": 0}})
    assert response.status_code == 200
    assert await evaluate(platform) == []  # 0 of 0: quiet
    await set_usage(control, acme.id, "cards", 1)
    assert {c.threshold for c in await evaluate(platform)} == {80, 100}
    assert (await client.delete("/admin/tenants/acme")).status_code == 200  # soft delete
    changes = await evaluate(platform)
    assert {(c.kind, c.threshold) for c in changes} == {(ChangeKind.RESOLVED, 80), (ChangeKind.RESOLVED, 100)}
    # A tenant being deleted keeps its limits.
    assert_error(await client.put("/admin/tenants/acme/quotas", json={"limits": {"cards": 5}}), 409, "invalid_state")
    expand = {"extra_bytes": 10, "hours": 1, "reason": "why not"}
    assert_error(await client.post("/admin/tenants/acme/quotas/storage-expansion", json=expand), 409, "invalid_state")


async def test_concurrent_evaluations_do_not_duplicate(client: Client, platform: Platform, control: Any) -> None:
    tenants = [await create_tenant(client, f"t{i}-shop", "starter") for i in range(3)]
    for tenant in tenants:
        await set_usage(control, tenant.id, "cards", 1000)
    results = await asyncio.gather(*(evaluate(platform) for _ in range(6)))
    opened = [c for changes in results for c in changes if c.kind is ChangeKind.OPENED]
    assert len(opened) == 6  # 3 tenants x 2 thresholds, each opened by exactly one evaluation
    cur = await control.execute("SELECT count(*) FROM quota_alerts")
    assert (await cur.fetchone())[0] == 6


async def test_quota_alerts_keeps_counts_and_limits(client: Client, platform: Platform, control: Any) -> None:
    acme = await create_tenant(client, "acme", "starter")
    await set_usage(control, acme.id, "storage_bytes", GIB)
    evaluator = alerts.QuotaAlerts(platform.control)
    assert evaluator.open_counts[("storage_bytes", 100)] == 0
    line = await evaluator.job()
    assert line == "quota alerts: 2 opened, 0 resolved, 0 updated; 2 open"
    assert evaluator.open_counts[("storage_bytes", 80)] == evaluator.open_counts[("storage_bytes", 100)] == 1
    assert sum(evaluator.open_counts.values()) == 2 and len(evaluator.open_counts) == 8
    assert evaluator.limits_of(acme.id)["storage_bytes"] == GIB
    assert evaluator.limits_of(uuid.uuid4()) == {}
    assert await evaluator.refresh_job() == "quota alerts: 2 open"


async def test_alert_listing_pages_and_filters(client: Client, platform: Platform, control: Any) -> None:
    acme = await create_tenant(client, "acme", "starter")
    other = await create_tenant(client, "other", "starter")
    await set_usage(control, acme.id, "cards", 1000)
    await set_usage(control, other.id, "users", 1)
    await evaluate(platform)
    await set_usage(control, acme.id, "cards", 900)
    await evaluate(platform)  # acme's 100 % resolved

    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"state": "all", "limit": 1}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/admin/alerts", params=params)).json()
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 4
    assert [a["id"] for a in seen] == sorted((a["id"] for a in seen), reverse=True)

    open_ = (await client.get("/admin/alerts")).json()["items"]
    assert {(a["tenant_slug"], a["quota"], a["threshold"]) for a in open_} == {
        ("acme", "cards", 80),
        ("other", "users", 80),
        ("other", "users", 100),
    }
    resolved = (await client.get("/admin/alerts", params={"state": "resolved"})).json()["items"]
    assert [(a["tenant_slug"], a["threshold"], a["usage"]) for a in resolved] == [("acme", 100, 900)]
    assert resolved[0]["resolved_at"] is not None
    mine = (await client.get("/admin/alerts", params={"tenant": "other", "state": "all"})).json()["items"]
    assert {a["tenant_slug"] for a in mine} == {"other"}
    assert mine[0]["ratio"] == 1.0
    cards = (await client.get("/admin/alerts", params={"quota": "cards", "state": "all"})).json()["items"]
    assert {(a["tenant_slug"], a["threshold"]) for a in cards} == {("acme", 80), ("acme", 100)}
    full = (await client.get("/admin/alerts", params={"threshold": 100})).json()["items"]
    assert {(a["tenant_slug"], a["quota"]) for a in full} == {("other", "users")}
