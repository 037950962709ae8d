"""Quota alerts, admin quota controls and capacity planning against a real control database.

Proven here: alerts open at 80 % and 100 % of the effective limit, are never duplicated by
re-evaluation (nor by two evaluations at once), and resolve when usage falls or the limit grows;
``PUT /admin/tenants/{slug}/quotas`` changes the limits enforcement uses (a lowered cards limit refuses
the next card with ``quota_exceeded``); a storage expansion raises the effective limit until it
expires (an expired one counts for nothing) and lets an upload through that was refused; both
changes are audited; the usage and capacity views give the slope, days-until and recommendation of
synthetic histories, PostgreSQL's ``regr_*`` agree with the Python ``trend``, and one tenant's history
never shows in another's view. Bad input is a 4xx JSON error, never a 5xx.

The usage collectors are switched off (``usage.interval = 0``): the tests set ``current_usage`` and the
history themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg.rows import dict_row

from controlplane.platform import Platform
from controlplane.registry.models import TIER_QUOTAS, QuotaType, Tier
from controlplane.schemas.alembic_runner import registry_scripts
from controlplane.settings import ProvisioningSettings, Settings, UsageSettings
from controlplane.usage import alerts, capacity, quota_repository, trends
from controlplane.usage.alerts import ChangeKind
from tests.conftest import ADMIN_TOKEN, Served, make_settings
from tests.integration.admin_support import registry_snapshot, run_schemathesis, selected
from tests.integration.auth_support import TenantAdmin, create_tenant

Client = AsyncTestClient[Any]
GIB = 1024**3
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


@pytest.fixture
def settings(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> Settings:
    """The usual test settings, collectors off and files under ``tmp_path``."""
    base = make_settings(control_dsn, tenant_template_name)
    return dataclasses.replace(base, data_dir=tmp_path / "data", usage=UsageSettings(interval=0, compact_interval=0))


@pytest.fixture
async def control(control_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A superuser connection to the control database, around the code under test."""
    async with await psycopg.AsyncConnection.connect(control_dsn, autocommit=True) as conn:
        yield conn


async def set_usage(control: psycopg.AsyncConnection[Any], tenant_id: uuid.UUID, quota: str, usage: int) -> None:
    await control.execute(
        "UPDATE tenant_quotas SET current_usage = %s WHERE tenant_id = %s AND quota_type = %s",
        (usage, tenant_id, quota),
    )


async def alert_rows(control: psycopg.AsyncConnection[Any], tenant_id: uuid.UUID) -> list[tuple[Any, ...]]:
    """(quota, threshold, state, usage, limit) of every alert of the tenant, by id."""
    cur = await control.execute(
        "SELECT quota_type, threshold, state, usage, quota_limit FROM quota_alerts WHERE tenant_id = %s ORDER BY id",
        (tenant_id,),
    )
    return await cur.fetchall()


async def evaluate(platform: Platform, tenant_id: uuid.UUID | None = None) -> list[alerts.AlertChange]:
    async with platform.control.connection() as conn:
        return await alerts.evaluate(conn, tenant_id=tenant_id)


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) >= {"error", "detail"}, body
    if code is not None:
        assert body["error"] == code, body
    return body


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


# -- admin controls ---------------------------------------------------------------------------------


async def test_put_quotas_changes_enforcement(client: Client, platform: Platform, control: Any) -> None:
    acme = await create_tenant(client, "acme", "starter")
    response = await client.put("/admin/tenants/acme/quotas", json={"limits": {"cards": 2, "api_calls_per_hour": None}})
    assert response.status_code == 200, response.text
    body = response.json()
    by_quota = {q["quota"]: q for q in body["quotas"]}
    assert by_quota["cards"]["limit"] == by_quota["cards"]["effective_limit"] == 2
    assert by_quota["cards"]["tier_limit"] == 1000
    assert by_quota["api_calls_per_hour"]["limit"] is None
    assert by_quota["api_calls_per_hour"]["effective_limit"] is None and by_quota["api_calls_per_hour"]["ratio"] is None
    async with platform.control.connection() as conn:
        assert await quota_repository.effective_limit(conn, acme.id, QuotaType.API_CALLS_PER_HOUR) is None
        assert await quota_repository.effective_limit(conn, acme.id, QuotaType.CARDS) == 2
        assert await quota_repository.effective_limit(conn, uuid.uuid4(), QuotaType.CARDS) is None
    assert by_quota["users"]["limit"] == 1  # not named: kept

    for n in range(2):
        created = await client.post(acme.api("/cards"), json={"cardnumber": f"C-{n}"}, headers=acme.auth)
        assert created.status_code == 201, created.text
    refused = assert_error(
        await client.post(acme.api("/cards"), json={"cardnumber": "C-3"}, headers=acme.auth), 403, "quota_exceeded"
    )
    assert (refused["quota"], refused["limit"], refused["usage"]) == ("cards", 2, 2)

    cur = await control.execute(
        "SELECT actor, outcome, tenant_id, details FROM platform_audit WHERE action = 'tenant.quotas.update'"
    )
    ((actor, outcome, tenant_id, details),) = await cur.fetchall()
    assert (actor, outcome, tenant_id) == ("automation", "succeeded", acme.id)
    assert details["limits"] == {"cards": 2, "api_calls_per_hour": None}
    assert details["previous"] == {"cards": 1000, "api_calls_per_hour": 1000}


async def upload(client: Client, tenant: TenantAdmin, card_id: int, size: int) -> Any:
    data = PNG + bytes(size - len(PNG))
    headers = {**tenant.auth, "Content-Type": "image/png"}
    return await client.put(tenant.api(f"/cards/{card_id}/image"), content=data, headers=headers)


async def test_storage_expansion_raises_the_effective_limit_until_it_expires(
    client: Client, platform: Platform, control: Any
) -> None:
    acme = await create_tenant(client, "acme", "starter")
    assert (await client.put("/admin/tenants/acme/quotas", json={"limits": {"storage_bytes": 1000}})).status_code == 200
    card = (await client.post(acme.api("/cards"), json={"cardnumber": "C-1"}, headers=acme.auth)).json()
    assert_error(await upload(client, acme, card["id"], 1500), 403, "quota_exceeded")

    # An expired expansion counts for nothing.
    await control.execute(
        "INSERT INTO quota_expansions (tenant_id, quota_type, extra, reason, expires_at, created_by)"
        " VALUES (%s, 'storage_bytes', 100000, 'long gone', now() - interval '1 second', 'test')",
        (acme.id,),
    )
    async with platform.control.connection() as conn:
        assert await quota_repository.effective_limit(conn, acme.id, QuotaType.STORAGE_BYTES) == 1000
    assert_error(await upload(client, acme, card["id"], 1500), 403, "quota_exceeded")

    response = await client.post(
        "/admin/tenants/acme/quotas/storage-expansion", json={"extra_bytes": 1000, "hours": 2, "reason": "import day"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["quota"]["limit"] == 1000 and body["quota"]["expansion"] == 1000
    assert body["quota"]["effective_limit"] == 2000
    assert body["expansion"]["created_by"] == "automation" and body["expansion"]["reason"] == "import day"
    async with platform.control.connection() as conn:
        assert await quota_repository.effective_limit(conn, acme.id, QuotaType.STORAGE_BYTES) == 2000
        assert await quota_repository.effective_limit(conn, acme.id, QuotaType.CARDS) == 1000  # others unchanged
    assert (await upload(client, acme, card["id"], 1500)).status_code == 200

    # Alerts use the effective limit too: 1,500 of 2,000 is 75 %.
    await set_usage(control, acme.id, "storage_bytes", 1500)
    assert await evaluate(platform) == []
    # Once it expires, the limit is back to 1,000 (and usage 1,500 is over it).
    await control.execute("UPDATE quota_expansions SET expires_at = now() - interval '1 second'")
    async with platform.control.connection() as conn:
        assert await quota_repository.effective_limit(conn, acme.id, QuotaType.STORAGE_BYTES) == 1000
        assert {c.threshold for c in await alerts.evaluate(conn)} == {80, 100}
        assert await quota_repository.delete_expired_expansions(conn) == 0  # within the grace
        assert await quota_repository.delete_expired_expansions(conn, grace=timedelta(0)) == 2
    cur = await control.execute(
        "SELECT outcome, tenant_id, entity, entity_id, details FROM platform_audit"
        " WHERE action = 'tenant.storage.expand'"
    )
    ((outcome, tenant_id, entity, entity_id, details),) = await cur.fetchall()
    assert (outcome, tenant_id, entity, entity_id) == (
        "succeeded",
        acme.id,
        "quota_expansion",
        str(body["expansion"]["id"]),
    )
    assert details["extra_bytes"] == 1000 and details["hours"] == 2 and details["reason"] == "import day"


async def test_bad_input_is_a_4xx(client: Client, control: Any, control_dsn: str) -> None:
    """Every refusal is a 4xx JSON error and changes nothing in the registry (but the audit trail)."""
    await create_tenant(client, "acme", "enterprise")
    put = "/admin/tenants/acme/quotas"
    before = registry_snapshot(control_dsn)
    for body in (
        {"limits": {"bogus": 1}},
        {"limits": {"cards": -1}},
        {"limits": {"cards": 2**62 + 1}},
        {"limits": {"cards": 2**70}},
        {"limits": {"cards": 1.5}},
        {"limits": {"cards": True}},
        {"limits": {}},
        {"limits": {"cards\x00": 1}},
        {"limits": {"cards": 1}, "extra": 1},
        {},
        [],
    ):
        assert_error(await client.put(put, json=body), 400)
    assert_error(
        await client.put("/admin/tenants/nobody/quotas", json={"limits": {"cards": 1}}), 404, "tenant_not_found"
    )
    assert_error(await client.put("/admin/tenants/NO%00BODY/quotas", json={"limits": {"cards": 1}}), 404)
    assert registry_snapshot(control_dsn) == before
    assert (await client.put(put, json={"limits": {"cards": 2**62}})).status_code == 200

    before = registry_snapshot(control_dsn)
    expand = "/admin/tenants/acme/quotas/storage-expansion"
    for body in (
        {"extra_bytes": 0, "hours": 1, "reason": "why not"},
        {"extra_bytes": 2**62 + 1, "hours": 1, "reason": "why not"},
        {"extra_bytes": 10, "hours": 0, "reason": "why not"},
        {"extra_bytes": 10, "hours": 721, "reason": "why not"},
        {"extra_bytes": 10, "hours": 1, "reason": ""},
        {"extra_bytes": 10, "hours": 1, "reason": "   "},
        {"extra_bytes": 10, "hours": 1, "reason": "a\x00b"},
        {"extra_bytes": 10, "hours": 1},
        {"extra_bytes": 10, "hours": 1, "reason": "why not", "quota": "cards"},
    ):
        assert_error(await client.post(expand, json=body), 400)
    ok = {"extra_bytes": 10, "hours": 1, "reason": "why not"}
    assert_error(await client.post("/admin/tenants/nobody/quotas/storage-expansion", json=ok), 404, "tenant_not_found")
    assert registry_snapshot(control_dsn) == before
    assert (await client.put(put, json={"limits": {"storage_bytes": None}})).status_code == 200
    before = registry_snapshot(control_dsn)
    assert_error(await client.post(expand, json=ok), 409, "conflict")  # unlimited: nothing to expand
    assert registry_snapshot(control_dsn) == before

    for params in (
        {"state": "bogus"},
        {"cursor": "abc"},
        {"cursor": "-1"},
        {"cursor": "0"},
        {"cursor": str(2**63)},
        {"cursor": "١٢"},
        {"limit": 0},
        {"limit": 501},
        {"quota": "bogus"},
        {"threshold": 90},
        {"threshold": "x"},
    ):
        assert_error(await client.get("/admin/alerts", params=params), 400)
    assert_error(await client.get("/admin/alerts", params={"tenant": "nobody"}), 404, "tenant_not_found")
    assert_error(await client.get("/admin/alerts", params={"tenant": "a\x00"}), 400)

    for params in ({"days": 0}, {"days": 401}, {"days": "x"}):
        assert_error(await client.get("/admin/tenants/acme/usage", params=params), 400)
    assert_error(await client.get("/admin/tenants/nobody/usage"), 404, "tenant_not_found")
    for params in ({"days": 0}, {"days": 366}, {"capacity_bytes": 0}, {"capacity_bytes": 2**63}, {"limit": 0}):
        assert_error(await client.get("/admin/capacity", params=params), 400)

    cur = await control.execute(
        "SELECT outcome, count(*) FROM platform_audit WHERE action LIKE 'tenant.%%.%%' GROUP BY 1 ORDER BY 1"
    )
    counts = dict(await cur.fetchall())
    assert counts["succeeded"] == 2 and counts["failed"] >= 3  # refused attempts are audited too


# -- capacity ---------------------------------------------------------------------------------------


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


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(served: Served, tmp_path: Path) -> None:
    """Property-based requests to every endpoint of this module (a real tenant exists): no 5xx."""
    created = httpx.post(
        f"{served.url}/admin/tenants",
        json={"name": "Acme", "slug": "acme", "tier": "starter"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    output = run_schemathesis(
        served.url,
        tmp_path,
        100,
        "--include-path-regex=^/admin/(alerts|capacity|tenants/[^/]+/(quotas|usage))",
    )
    assert selected(output) == 5, output


async def test_evaluate_covers_a_large_fleet_in_one_statement(
    platform: Platform, control_dsn: str, control: Any
) -> None:
    """1,200 tenants with random usage: one statement opens exactly the alerts the thresholds call for.

    (``platform`` registers the default server the tenants are put on.)
    """
    server_id = (await (await control.execute("SELECT id FROM db_servers")).fetchone())[0]
    rng = random.Random(5)
    ids = [uuid.uuid4() for _ in range(1200)]
    async with control.cursor() as cur:
        await cur.executemany(
            "INSERT INTO tenants (id, name, slug, status, subscription_tier, server_id, database_name, role_name,"
            " role_password_encrypted) VALUES (%s, 'Bulk', %s, 'active', 'starter', %s, %s, %s, 'x')",
            [(i, f"bulk-{n}", server_id, f"t_{i.hex}", f"t_{i.hex}") for n, i in enumerate(ids)],
        )
        await cur.executemany(
            "INSERT INTO tenant_quotas (tenant_id, quota_type, quota_limit, current_usage) VALUES (%s, %s, %s, %s)",
            [(i, q, 1000, rng.randrange(0, 1200)) for i in ids for q in ("cards", "users", "storage_bytes")],
        )
    cur = await control.execute(
        "SELECT count(*) FILTER (WHERE current_usage >= 800) + count(*) FILTER (WHERE current_usage >= 1000)"
        " FROM tenant_quotas"
    )
    expected = (await cur.fetchone())[0]
    statements: list[str] = []
    async with await psycopg.AsyncConnection.connect(control_dsn, autocommit=True, row_factory=dict_row) as conn:
        original = conn.execute

        async def counting(query: Any, *args: Any, **kwargs: Any) -> Any:
            statements.append(str(query))
            return await original(query, *args, **kwargs)

        conn.execute = counting  # type: ignore[method-assign]
        changes = await alerts.evaluate(conn)
        assert len(statements) == 1
        assert len(changes) == expected > 1000
        assert await alerts.evaluate(conn) == []
        counts = await alerts.open_counts(conn)
    assert sum(counts.values()) == expected


async def test_revision_0005_downgrades_and_upgrades(control_dsn: str) -> None:
    scripts = registry_scripts(ProvisioningSettings())
    tables = "SELECT count(*) FROM pg_tables WHERE tablename IN ('quota_alerts', 'quota_expansions')"
    with psycopg.connect(control_dsn, autocommit=True) as conn:
        assert conn.execute(tables).fetchone() == (2,)
    await asyncio.to_thread(scripts.downgrade, control_dsn, "0004")
    with psycopg.connect(control_dsn, autocommit=True) as conn:
        assert conn.execute(tables).fetchone() == (0,)
    assert await asyncio.to_thread(scripts.upgrade, control_dsn) == scripts.head()
    with psycopg.connect(control_dsn, autocommit=True) as conn:
        assert conn.execute(tables).fetchone() == (2,)
