"""Admin quota controls against a real control database.

Proven here: ``PUT /admin/tenants/{slug}/quotas`` changes the limits enforcement uses (a lowered cards limit
refuses the next card with ``quota_exceeded``); a storage expansion raises the effective limit until it
expires (an expired one counts for nothing) and lets an upload through that was refused; both changes are
audited; bad input is a 4xx JSON error, never a 5xx (also under schemathesis); alert evaluation covers a
large fleet in one statement; revision 0005 downgrades and upgrades.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg.rows import dict_row

from controlplane.platform import Platform
from controlplane.registry.models import QuotaType
from controlplane.schemas.alembic_runner import registry_scripts
from controlplane.settings import ProvisioningSettings, Settings
from controlplane.usage import alerts, quota_repository
from tests.conftest import ADMIN_TOKEN, Served, quiet_settings
from tests.integration.admin_support import registry_snapshot, run_schemathesis, selected
from tests.integration.auth_support import TenantAdmin, create_tenant
from tests.integration.quota_support import assert_error, evaluate, set_usage

Client = AsyncTestClient[Any]
GIB = 1024**3
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


@pytest.fixture
def settings(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> Settings:
    return quiet_settings(control_dsn, tenant_template_name, tmp_path)


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
