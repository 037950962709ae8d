"""Maintenance over the admin API and the CLI: per-tenant health (as the tenant's own role), slow
queries from pg_stat_statements, VACUUM / ANALYZE now and in each tenant's maintenance window."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg import sql

from controlplane.http.state import TENANT_CACHE_STATE_KEY
from controlplane.maintenance.service import HealthMonitor, check_health, maintenance_hour, run_maintenance_window
from controlplane.metrics.service import CardVaultMetrics
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from tests.integration.auth_support import create_tenant

Client = AsyncTestClient[Any]


async def test_health_connects_as_the_tenant(client: Client) -> None:
    await create_tenant(client, "acme")
    healthy = await client.get("/admin/tenants/acme/health")
    assert healthy.status_code == 200, healthy.text
    body = healthy.json()
    assert body["ok"] is True and body["connect_ms"] > 0 and body["query_ms"] > 0 and body["error"] is None
    # Suspended: the role cannot log in, and the check says so instead of failing.
    assert (await client.post("/admin/tenants/acme/suspend")).status_code == 200
    locked = (await client.get("/admin/tenants/acme/health")).json()
    assert locked["ok"] is False and locked["connect_ms"] is None and locked["error"]
    missing = await client.get("/admin/tenants/nobody/health")
    assert (missing.status_code, missing.json()["error"]) == (404, "tenant_not_found")


async def test_slow_queries_of_the_tenant_only(client: Client, pg_admin_dsn: str) -> None:
    acme = await create_tenant(client, "acme")
    await create_tenant(client, "other")
    for _ in range(3):
        assert (await client.get(acme.api("/cards"), headers=acme.auth)).status_code == 200
    with psycopg.connect(pg_admin_dsn) as conn:
        row = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    response = await client.get("/admin/tenants/acme/slow-queries", params={"limit": 50})
    if row is not None and "pg_stat_statements" in row[0]:
        assert response.status_code == 200, response.text
        queries = response.json()
        assert any(re.search(r"FROM\s+\"?cards\b", q["query"]) for q in queries), [q["query"] for q in queries]
        cards = [q for q in queries if re.search(r"FROM\s+\"?cards\b", q["query"])]
        assert sum(q["calls"] for q in cards) >= 3, cards  # the three GET /cards above
        assert [q["total_ms"] for q in queries] == sorted((q["total_ms"] for q in queries), reverse=True)
        assert all(q["mean_ms"] * q["calls"] == pytest.approx(q["total_ms"], rel=1e-6) for q in queries)
        assert len(queries) <= 50
        other = (await client.get("/admin/tenants/other/slow-queries", params={"limit": 50})).json()
        assert not any(re.search(r"FROM\s+\"?cards\b", q["query"]) for q in other), other  # it read no cards
    else:  # a server without the library: a clear 409, never a 500
        assert (response.status_code, response.json()["error"]) == (409, "extension_missing")
        assert "shared_preload_libraries" in response.json()["detail"]
    bad = await client.get("/admin/tenants/acme/slow-queries", params={"limit": 0})
    assert bad.status_code == 400


async def test_maintenance_now_is_audited(client: Client, control_dsn: str) -> None:
    await create_tenant(client, "acme")
    done = await client.post("/admin/tenants/acme/maintenance", params={"action": "vacuum"})
    assert done.status_code == 200, done.text
    assert done.json()["ok"] is True and done.json()["action"] == "vacuum"
    wrong = await client.post("/admin/tenants/acme/maintenance", params={"action": "drop"})
    assert wrong.status_code == 400
    with psycopg.connect(control_dsn) as conn:
        actions = [r[0] for r in conn.execute("SELECT action FROM platform_audit ORDER BY id")]
    assert "tenant.vacuum" in actions


async def test_the_maintenance_window_takes_the_tenants_due_this_hour(client: Client, platform: Platform) -> None:
    for slug in ("one", "two", "three", "four"):
        await create_tenant(client, slug)
    async with platform.control.connection() as conn:
        tenants = await registry.list_tenants(conn)
    hour = maintenance_hour(tenants[0])
    results = await run_maintenance_window(platform, hour, concurrency=2)
    assert sorted(r.tenant for r in results) == sorted(t.slug for t in tenants if maintenance_hour(t) == hour)
    assert all(r.ok and r.action == "vacuum" for r in results)


async def test_health_round_checks_active_tenants_and_exports_them(
    client: Client, platform: Platform, pg_admin_dsn: str
) -> None:
    """A round over the fleet: active tenants only, a tenant whose role cannot log in is down (and the
    others are not), and ``/metrics`` exposes the round."""
    for slug in ("acme", "beta", "gamma"):
        await create_tenant(client, slug)
    assert (await client.post("/admin/tenants/gamma/suspend")).status_code == 200
    async with platform.control.connection() as conn:
        beta = await registry.get_by_slug(conn, "beta")
    assert beta is not None
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:  # broken behind the registry's back
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(beta.role_name)))

    monitor = HealthMonitor(platform, client.app.state[TENANT_CACHE_STATE_KEY], concurrency=2)
    assert await monitor.job() == "2 tenant(s) checked, 1 unhealthy (beta)"
    assert monitor.latest is not None
    by_slug = {h.tenant: h for h in monitor.latest.results}
    assert set(by_slug) == {"acme", "beta"}
    assert by_slug["acme"].ok and by_slug["acme"].connect_ms and by_slug["acme"].query_ms is not None
    assert not by_slug["beta"].ok and by_slug["beta"].connect_ms is None and by_slug["beta"].error

    metrics = CardVaultMetrics()
    metrics.bind(health=monitor)
    text = metrics.render().decode()
    assert 'cardvault_tenant_up{tenant="acme"} 1.0' in text
    assert 'cardvault_tenant_up{tenant="beta"} 0.0' in text
    assert 'tenant="gamma"' not in text
    assert 'cardvault_tenant_health_connect_seconds{tenant="beta"}' not in text

    # A tenant purged while a round is under way is reported down, not an error of the whole round.
    async with platform.control.connection() as conn:
        acme = await registry.get_by_slug(conn, "acme")
    assert acme is not None
    assert (await client.delete("/admin/tenants/acme", params={"now": "true"})).status_code == 204
    gone = await check_health(platform, client.app.state[TENANT_CACHE_STATE_KEY], acme)
    assert not gone.ok and gone.error and "no tenant" in gone.error
