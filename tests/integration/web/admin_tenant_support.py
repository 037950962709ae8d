"""Helpers of the tenant detail page tests: a tenant with cards, measured and with its requests recorded,
and what the control database holds afterwards (read around the code under test)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from litestar import Litestar

from controlplane.http.state import PLATFORM_STATE_KEY, TENANT_REQUESTS_STATE_KEY
from controlplane.platform import Platform
from controlplane.usage.request_stats import TenantRequests
from tests.integration.auth_support import TenantAdmin, create_tenant, make_admin
from tests.integration.web.web_support import sign_in_admin

Row = dict[str, Any]


async def signed_in_admin(browser: httpx.AsyncClient, platform: Platform) -> uuid.UUID:
    """A super-admin signed in to the dashboard in ``browser``; its id."""
    admin_id = await make_admin(platform)
    await sign_in_admin(browser)
    return admin_id


async def measured_tenant(api: httpx.AsyncClient, app: Litestar, slug: str, cards: int) -> TenantAdmin:
    """``slug`` with ``cards`` cards made through the tenant API, a full usage collection run, and the
    requests of those creates flushed to ``tenant_request_stats``."""
    tenant = await create_tenant(api, slug)
    for i in range(cards):
        made = await api.post(
            tenant.api("/cards"), json={"cardnumber": f"{slug}-{i}", "year": 1989}, headers=tenant.auth
        )
        assert made.status_code == 201, made.text
    collected = await api.post("/admin/usage/collect", params={"full": "true"})
    assert collected.status_code == 200, collected.text
    recorder: TenantRequests = app.state[TENANT_REQUESTS_STATE_KEY]
    app_platform: Platform = app.state[PLATFORM_STATE_KEY]
    async with app_platform.control.connection() as conn:
        await recorder.flush(conn)
    return tenant


async def tenant_row(platform: Platform, slug: str) -> Row:
    async with platform.control.connection() as conn:
        cur = await conn.execute("SELECT status, subscription_tier FROM tenants WHERE slug = %s", (slug,))
        row = await cur.fetchone()
    assert row is not None, f"no tenant {slug!r}"
    return dict(row)


async def quota_limits(platform: Platform, slug: str) -> dict[str, int | None]:
    async with platform.control.connection() as conn:
        cur = await conn.execute(
            "SELECT q.quota_type, q.quota_limit FROM tenant_quotas q JOIN tenants t ON t.id = q.tenant_id"
            " WHERE t.slug = %s",
            (slug,),
        )
        return {r["quota_type"]: r["quota_limit"] for r in await cur.fetchall()}


async def audit_actions(platform: Platform, slug: str) -> list[Row]:
    """The ``platform_audit`` rows of ``slug``, oldest first: actor, action, outcome, details."""
    async with platform.control.connection() as conn:
        cur = await conn.execute(
            "SELECT actor, action, outcome, details FROM platform_audit WHERE tenant_slug = %s ORDER BY id", (slug,)
        )
        return [dict(r) for r in await cur.fetchall()]


async def add_storage_history(platform: Platform, tenant_id: uuid.UUID, points: dict[int, int]) -> None:
    """Storage history of the tenant: ``{days ago: bytes}`` written into ``tenant_usage_metrics``."""
    async with platform.control.connection() as conn, conn.transaction():
        for days, value in points.items():
            await conn.execute(
                "INSERT INTO tenant_usage_metrics (tenant_id, metric_name, metric_value, recorded_at)"
                " VALUES (%s, 'storage_bytes', %s, now() - make_interval(days => %s))",
                (tenant_id, value, days),
            )
