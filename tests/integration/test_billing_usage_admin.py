"""``GET /admin/billing/usage`` and ``POST /admin/billing/usage/{id}/retry`` against a real control database.

Proven here: the ledger is listed newest period first with each row's state, filtered by tenant slug,
meter and state, in keyset pages that cover every row once; bad filters and cursors are 4xx JSON
errors; a retry makes a failed row pending again (audited) and refuses a reported or unknown one; a
tenant's own admin (and an anonymous caller) cannot reach either route.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient

from controlplane.billing import metering
from controlplane.platform import Platform
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN, Served, quiet_settings
from tests.integration.admin_support import assert_error, run_schemathesis, selected
from tests.integration.auth_support import TenantAdmin, create_tenant
from tests.integration.billing_usage_support import (
    DAY0,
    DAY1,
    NOW,
    add_calls,
    add_points,
    ledger,
    set_customer,
)

Client = AsyncTestClient[Any]
H = timedelta(hours=1)


@pytest.fixture
def settings(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> Settings:
    return quiet_settings(control_dsn, tenant_template_name, tmp_path)


@pytest.fixture
async def tenants(client: Client, platform: Platform, control: Any) -> dict[str, TenantAdmin]:
    """acme (cards and API calls over on two days) and bravo (storage over on one), both customers;
    acme's oldest API-call row reported, its oldest cards row failed."""
    made = {slug: await create_tenant(client, slug, "starter") for slug in ("acme", "bravo")}
    acme, bravo = made["acme"].id, made["bravo"].id
    for tenant_id in (acme, bravo):
        await set_customer(control, tenant_id, f"cus_{tenant_id.hex[:8]}")
    await add_points(control, acme, "cards", (DAY0 + H, 1200), (DAY1 + H, 1300))
    await add_calls(control, acme, (DAY0, 1500), (DAY1, 1600))
    await add_points(control, bravo, "storage_bytes", (DAY1 + H, 3 * 1024**3))
    async with platform.control.connection() as conn:
        assert await metering.record_overage(conn, now=NOW) == 5
    await control.execute(
        "UPDATE billing_usage_reports SET reported_at = %s, attempts = 1 WHERE tenant_id = %s AND meter = 'api_calls'"
        " AND period_start = %s",
        (NOW, acme, DAY0),
    )
    await control.execute(
        "UPDATE billing_usage_reports SET failed_at = %s, attempts = 8, last_error = 'boom'"
        " WHERE tenant_id = %s AND meter = 'cards' AND period_start = %s",
        (NOW, acme, DAY0),
    )
    return made


def keys(body: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(slug, meter, period day, state) of a page's rows."""
    return [(r["slug"], r["meter"], r["period_start"][:10], r["state"]) for r in body["items"]]


async def listing(client: Client, **params: Any) -> dict[str, Any]:
    response = await client.get("/admin/billing/usage", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_ledger_is_listed_and_filtered(client: Client, tenants: dict[str, TenantAdmin]) -> None:
    day0, day1 = f"{DAY0:%Y-%m-%d}", f"{DAY1:%Y-%m-%d}"
    body = await listing(client)
    assert body["next_cursor"] is None
    assert sorted(keys(body)) == sorted(
        [
            ("acme", "cards", day0, "failed"),
            ("acme", "api_calls", day0, "reported"),
            ("acme", "cards", day1, "pending"),
            ("acme", "api_calls", day1, "pending"),
            ("bravo", "storage_gb", day1, "pending"),
        ]
    )
    assert [r["period_start"][:10] for r in body["items"]] == [day1] * 3 + [day0] * 2  # newest period first
    row = next(r for r in body["items"] if r["state"] == "failed")
    assert (row["quantity"], row["usage"], row["quota_limit"], row["attempts"], row["last_error"]) == (
        200,
        1200,
        1000,
        8,
        "boom",
    )
    assert row["identifier"] == f"cv-{tenants['acme'].id}-cards-{DAY0:%Y%m%d}T0000Z"

    assert {r["slug"] for r in (await listing(client, tenant="bravo"))["items"]} == {"bravo"}
    assert keys(await listing(client, tenant="acme", meter="api_calls", state="reported")) == [
        ("acme", "api_calls", day0, "reported")
    ]
    assert keys(await listing(client, state="failed")) == [("acme", "cards", day0, "failed")]
    assert len((await listing(client, state="pending"))["items"]) == 3
    assert len((await listing(client, meter="storage_gb"))["items"]) == 1


async def test_pages_cover_every_row_once(client: Client, tenants: dict[str, TenantAdmin]) -> None:
    seen: list[int] = []
    cursor = None
    for _ in range(5):
        body = await listing(client, limit=2, **({"cursor": cursor} if cursor else {}))
        seen += [r["id"] for r in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 5
    assert seen == [r["id"] for r in (await listing(client))["items"]]


async def test_bad_filters_and_cursors_are_4xx(client: Client, tenants: dict[str, TenantAdmin]) -> None:
    assert_error(await client.get("/admin/billing/usage", params={"tenant": "nobody"}), 404, "tenant_not_found")
    assert_error(await client.get("/admin/billing/usage", params={"tenant": "NOT A SLUG"}), 404, "tenant_not_found")
    for params in ({"state": "lost"}, {"meter": "users"}, {"limit": 0}, {"limit": 501}, {"tenant": "a\x00b"}):
        response = await client.get("/admin/billing/usage", params=params)
        assert response.status_code == 400, (params, response.text)
        assert set(response.json()) >= {"error", "detail"}
    assert_error(await client.get("/admin/billing/usage", params={"cursor": "garbage"}), 400, "invalid_cursor")
    audit = (await client.get("/admin/audit", params={"limit": 1})).json()["next_cursor"]
    assert audit is not None
    assert_error(await client.get("/admin/billing/usage", params={"cursor": audit}), 400, "invalid_cursor")


async def test_retry_makes_a_failed_row_pending_again(
    client: Client, platform: Platform, control: Any, tenants: dict[str, TenantAdmin]
) -> None:
    rows = {(r["meter"], r["period_start"]): r for r in await ledger(control, tenants["acme"].id)}
    failed, reported = rows[("cards", DAY0)], rows[("api_calls", DAY0)]

    response = await client.post(f"/admin/billing/usage/{failed['id']}/retry")
    assert response.status_code == 204, response.text
    after = {r["id"]: r for r in await ledger(control)}[failed["id"]]
    assert after["failed_at"] is None and after["reported_at"] is None and after["attempts"] == 8
    assert keys(await listing(client, state="failed")) == []
    cur = await control.execute(
        "SELECT outcome, entity_id FROM platform_audit WHERE action = 'billing.usage.retry' ORDER BY id"
    )
    assert await cur.fetchall() == [("succeeded", str(failed["id"]))]

    assert_error(await client.post(f"/admin/billing/usage/{reported['id']}/retry"), 404, "usage_report_not_found")
    assert_error(await client.post("/admin/billing/usage/999999/retry"), 404, "usage_report_not_found")
    response = await client.post(f"/admin/billing/usage/{2**63}/retry")
    assert response.status_code == 400, response.text


async def test_a_tenant_user_cannot_reach_the_ledger(client: Client, tenants: dict[str, TenantAdmin]) -> None:
    acme = tenants["acme"]
    row_id = (await listing(client))["items"][0]["id"]
    for method, path in (("GET", "/admin/billing/usage"), ("POST", f"/admin/billing/usage/{row_id}/retry")):
        response = await client.request(method, path, headers=acme.auth)
        assert_error(response, 403, "wrong_tenant")
        response = await client.request(method, path, headers={"Authorization": ""})
        assert response.status_code == 401, response.text
    assert (await client.get(acme.api("/cards"), headers=acme.auth)).status_code == 200


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(served: Served, control_dsn: str, tmp_path: Path) -> None:
    """Property-based requests to both routes, with ledger rows to page through and retry: no 5xx."""
    created = httpx.post(
        f"{served.url}/admin/tenants",
        json={"name": "Acme", "slug": "acme", "tier": "starter"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    with psycopg.connect(control_dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO billing_usage_reports
                   (tenant_id, meter, period_start, period_end, identifier, quantity, usage, quota_limit)
            SELECT %s, 'cards', d, d + interval '24 hours', 'cv-fuzz-' || d, 5, 1005, 1000
              FROM generate_series(%s::timestamptz, %s::timestamptz, interval '24 hours') d
            """,
            (created.json()["id"], DAY0 - timedelta(days=30), DAY0),
        )
    output = run_schemathesis(served.url, tmp_path, 50, "--include-path-regex=^/admin/billing/usage")
    assert selected(output) == 2, output
