"""The admin HTTP API (``/admin/*``, health, OpenAPI) against a real control database and server.

Every endpoint's happy path, keyset pagination and filters, the bearer-token guard on every admin
route, and bad input on every endpoint: a 4xx JSON ``{"error", "detail"}`` with the documented code,
never a 5xx, and the registry tables exactly as they were. Schemathesis fuzzes the whole admin API
served by ``cardvault serve`` (uvicorn) and checks that nothing answers 5xx.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from tests.conftest import ADMIN_TOKEN
from tests.harness import LocalClusterHandle
from tests.integration.admin_support import (
    ADMIN_ROUTES,
    HEAD,
    assert_error,
    create,
    registry_snapshot,
    tenant_databases,
)

Client = AsyncTestClient[Any]
StartCluster = Callable[[], LocalClusterHandle]

#: A complete server DSN that reaches nothing (port 1 on the loopback: nobody listens there).
UNREACHABLE_DSN = "host=127.0.0.1 port=1 user=nobody dbname=postgres"


# -- health and OpenAPI ----------------------------------------------------------------------------


async def test_health_probes_need_no_token(client: Client) -> None:
    client.headers.pop("Authorization")
    live = await client.get("/health/live")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    ready = await client.get("/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})


async def test_openapi_lists_every_admin_route(client: Client) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    listed = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        if path.startswith("/admin/")
        for method in operations
        if method in ("get", "post", "patch", "put", "delete")
    }
    expected = {
        (m, p.replace("/acme", "/{slug}").replace("/default/", "/{name}/").replace("/usage/1/", "/usage/{report_id}/"))
        for m, p in ADMIN_ROUTES
    }
    assert listed == expected, "ADMIN_ROUTES (the auth test's list) must name every admin operation"
    assert {"/health/live", "/health/ready"} <= set(schema["paths"])
    assert "bearer" in schema["components"]["securitySchemes"]


# -- tenants: happy paths ----------------------------------------------------------------------------


async def test_tenant_lifecycle(client: Client, pg_admin_dsn: str) -> None:
    tenant = await create(client, "acme", tier="professional", name="Acme Cards")
    assert tenant["slug"] == "acme" and tenant["name"] == "Acme Cards"
    assert tenant["status"] == "active" and tenant["subscription_tier"] == "professional"
    assert tenant["server_name"] == "default" and tenant["schema_revision"] == HEAD
    assert tenant["database_name"] == f"t_{tenant['id'].replace('-', '')}"
    assert tenant["database_name"] in tenant_databases(pg_admin_dsn)

    detail = (await client.get("/admin/tenants/acme")).json()
    assert detail["tenant"] == tenant
    quotas = {q["quota_type"]: q["quota_limit"] for q in detail["quotas"]}
    assert quotas["users"] == 10 and quotas["cards"] == 50_000
    assert [(op["kind"], op["state"]) for op in detail["operations"]] == [("provision", "succeeded")]

    response = await client.patch("/admin/tenants/acme", json={"name": "Acme Inc", "tier": "enterprise"})
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Acme Inc" and response.json()["subscription_tier"] == "enterprise"
    quotas = {q["quota_type"]: q["quota_limit"] for q in (await client.get("/admin/tenants/acme")).json()["quotas"]}
    assert quotas["users"] is None and quotas["api_calls_per_hour"] == 100_000

    response = await client.patch("/admin/tenants/acme", json={"slug": "acme-cards"})
    assert response.status_code == 200 and response.json()["slug"] == "acme-cards"
    assert response.json()["database_name"] == tenant["database_name"]  # the database keeps its name
    assert_error(await client.get("/admin/tenants/acme"), 404, "tenant_not_found")

    response = await client.post("/admin/tenants/acme-cards/suspend")
    assert response.status_code == 200 and response.json()["status"] == "suspended"
    assert response.json()["suspended_at"] is not None
    response = await client.post("/admin/tenants/acme-cards/resume")
    assert response.status_code == 200 and response.json()["status"] == "active"
    assert response.json()["suspended_at"] is None

    response = await client.delete("/admin/tenants/acme-cards")  # soft delete
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "deleting" and response.json()["delete_after"] is not None
    assert tenant["database_name"] in tenant_databases(pg_admin_dsn)
    response = await client.post("/admin/tenants/acme-cards/resume")  # cancels the deletion
    assert response.status_code == 200 and response.json()["status"] == "active"
    assert response.json()["delete_after"] is None

    response = await client.delete("/admin/tenants/acme-cards", params={"now": "true"})
    assert response.status_code == 204 and response.content == b""
    assert_error(await client.get("/admin/tenants/acme-cards"), 404, "tenant_not_found")
    assert tenant["database_name"] not in tenant_databases(pg_admin_dsn)
    assert (await client.get("/admin/tenants")).json() == {"items": [], "next_cursor": None}


async def test_pagination_walks_every_tenant_once_and_filters(client: Client) -> None:
    tiers = ["starter", "professional", "enterprise"]
    slugs = [f"shop-{i:02d}" for i in range(8)]
    for i, slug in enumerate(reversed(slugs)):  # created out of order: pages follow the slug
        await create(client, slug, tier=tiers[i % 3])
    for slug in ("shop-01", "shop-04"):
        assert (await client.post(f"/admin/tenants/{slug}/suspend")).status_code == 200
    assert (await client.delete("/admin/tenants/shop-06")).status_code == 200

    async def walk(limit: int, **filters: str) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": limit, **filters}
        for _ in range(20):
            response = await client.get("/admin/tenants", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["items"]) <= limit
            seen += page["items"]
            if page["next_cursor"] is None:
                return seen
            assert page["next_cursor"] == page["items"][-1]["slug"]
            params["cursor"] = page["next_cursor"]
        raise AssertionError("pagination did not end")

    for limit in (1, 3, 8, 1000):
        assert [t["slug"] for t in await walk(limit)] == slugs
    everyone = {t["slug"]: t for t in await walk(100)}
    assert [t["slug"] for t in await walk(2, status="suspended")] == ["shop-01", "shop-04"]
    assert [t["slug"] for t in await walk(2, status="deleting")] == ["shop-06"]
    for tier in tiers:
        expected = [s for s in slugs if everyone[s]["subscription_tier"] == tier]
        assert expected and [t["slug"] for t in await walk(2, tier=tier)] == expected
    expected = [s for s in slugs if everyone[s]["subscription_tier"] == "starter" and everyone[s]["status"] == "active"]
    assert [t["slug"] for t in await walk(1, tier="starter", status="active")] == expected
    assert (await client.get("/admin/tenants", params={"status": "provisioning"})).json()["items"] == []
    # An exact page: no cursor when nothing follows.
    assert (await client.get("/admin/tenants", params={"limit": 8})).json()["next_cursor"] is None


# -- servers, reconcile, migrations ------------------------------------------------------------------


async def test_servers_list_add_drain_activate(client: Client, extra_cluster: StartCluster) -> None:
    servers = (await client.get("/admin/servers")).json()
    assert [(s["name"], s["status"], s["tenants"]) for s in servers] == [("default", "active", 0)]
    await create(client, "acme")
    assert (await client.get("/admin/servers")).json()[0]["tenants"] == 1

    # A second PostgreSQL server (the harness's own; a superuser DSN passes the check).
    second = extra_cluster()
    response = await client.post("/admin/servers", json={"name": "second", "dsn": second.dsn})
    assert response.status_code == 201, response.text
    added = response.json()
    assert added["name"] == "second" and added["status"] == "active" and added["tenants"] == 0
    assert added["port"] == second.port and added["system_identifier"].isdigit()
    assert "password=***" in added["dsn_display"]
    with psycopg.connect(second.dsn) as conn:
        password = conn.info.password
    assert password and password not in added["dsn_display"]

    response = await client.post("/admin/servers/second/drain")
    assert response.status_code == 200 and response.json()["status"] == "draining"
    response = await client.post("/admin/servers/second/activate")
    assert response.status_code == 200 and response.json()["status"] == "active"
    names = [(s["name"], s["status"]) for s in (await client.get("/admin/servers")).json()]
    assert names == [("default", "active"), ("second", "active")]


async def test_reconcile_and_migration_status(client: Client) -> None:
    await create(client, "acme")
    for fix in ("false", "true"):
        response = await client.post("/admin/reconcile", params={"fix": fix})
        assert response.status_code == 200, response.text
        assert response.json() == {"findings": [], "fixed": fix == "true"}

    response = await client.get("/admin/migrations")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "head": HEAD,
        "revisions": [{"revision": HEAD, "tenants": 1, "failed": 0}],
        "failures": [],
    }


# -- authentication ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong-token", f"Basic {ADMIN_TOKEN}", f"Bearer {ADMIN_TOKEN}x", ADMIN_TOKEN],
    ids=["missing", "empty", "no-token", "wrong", "wrong-scheme", "longer", "no-scheme"],
)
async def test_every_admin_route_needs_the_token(client: Client, control_dsn: str, authorization: str | None) -> None:
    await create(client, "acme")
    before = registry_snapshot(control_dsn)
    headers = {} if authorization is None else {"Authorization": authorization}
    client.headers.pop("Authorization")
    bodies: dict[str, Any] = {
        "POST /admin/tenants": {"name": "Beta", "slug": "beta"},
        "PATCH /admin/tenants/acme": {"name": "Changed"},
        "POST /admin/servers": {"name": "other", "dsn": UNREACHABLE_DSN},
        "PUT /admin/servers/default/dsn": {"dsn": UNREACHABLE_DSN},
    }
    for method, path in ADMIN_ROUTES:
        body = bodies.get(f"{method} {path}")
        response = await client.request(method, path, headers=headers, json=body)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"] in ("unauthorized", "invalid_token"), response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert registry_snapshot(control_dsn) == before


# -- bad input ------------------------------------------------------------------------------------------

#: (method, path, request kwargs, status, error code). ``acme`` (active), ``beta`` (suspended) and
#: ``gone`` (soft-deleted) exist when these run.
BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    # POST /admin/tenants
    ("POST", "/admin/tenants", {"json": {"name": "X", "slug": "No_Caps"}}, 400, "invalid_slug"),
    ("POST", "/admin/tenants", {"json": {"name": "X", "slug": "ab"}}, 400, "invalid_slug"),
    ("POST", "/admin/tenants", {"json": {"name": "X", "slug": "admin"}}, 400, "invalid_slug"),
    ("POST", "/admin/tenants", {"json": {"name": "X", "slug": "a--b"}}, 400, "invalid_slug"),
    ("POST", "/admin/tenants", {"json": {"name": "X", "slug": "x'; DROP DATABASE postgres; --"}}, 400, "invalid_slug"),
    ("POST", "/admin/tenants", {"json": {"name": "X", "slug": "new-one", "tier": "gold"}}, 400, "invalid_tier"),
    ("POST", "/admin/tenants", {"json": {"name": "X", "slug": "acme"}}, 409, "slug_taken"),
    ("POST", "/admin/tenants", {"json": {"name": "X", "slug": "new-one", "plan": "x"}}, 400, "validation_failed"),
    ("POST", "/admin/tenants", {"json": {"name": "X", "slug": 42}}, 400, "validation_failed"),
    ("POST", "/admin/tenants", {"json": {"name": ["X"], "slug": "new-one"}}, 400, "validation_failed"),
    ("POST", "/admin/tenants", {"json": {"name": "X", "slug": "new-one", "tier": None}}, 400, "validation_failed"),
    ("POST", "/admin/tenants", {"json": {"slug": "new-one"}}, 400, "validation_failed"),
    ("POST", "/admin/tenants", {"json": ["new-one"]}, 400, "validation_failed"),
    ("POST", "/admin/tenants", {"json": {"name": "   ", "slug": "new-one"}}, 400, "validation_failed"),
    ("POST", "/admin/tenants", {"json": {"name": "x" * 201, "slug": "new-one"}}, 400, "validation_failed"),
    ("POST", "/admin/tenants", {"json": {"name": "X\x00", "slug": "new-one"}}, 400, "validation_failed"),
    ("POST", "/admin/tenants", {"content": b'{"name": "X", "slug":'}, 400, "validation_failed"),
    ("POST", "/admin/tenants", {"content": b"not json at all"}, 400, "validation_failed"),
    ("POST", "/admin/tenants", {}, 400, "validation_failed"),
    # GET /admin/tenants
    ("GET", "/admin/tenants", {"params": {"limit": "0"}}, 400, "validation_failed"),
    ("GET", "/admin/tenants", {"params": {"limit": "1001"}}, 400, "validation_failed"),
    ("GET", "/admin/tenants", {"params": {"limit": "-5"}}, 400, "validation_failed"),
    ("GET", "/admin/tenants", {"params": {"limit": "ten"}}, 400, "validation_failed"),
    ("GET", "/admin/tenants", {"params": {"status": "bogus"}}, 400, "validation_failed"),
    ("GET", "/admin/tenants", {"params": {"tier": "gold"}}, 400, "validation_failed"),
    # GET / PATCH / DELETE /admin/tenants/{slug}
    ("GET", "/admin/tenants/nope", {}, 404, "tenant_not_found"),
    ("GET", "/admin/tenants/%00", {}, 404, "tenant_not_found"),
    ("PATCH", "/admin/tenants/nope", {"json": {"name": "X"}}, 404, "tenant_not_found"),
    ("PATCH", "/admin/tenants/acme", {"json": {"slug": "Bad Slug"}}, 400, "invalid_slug"),
    ("PATCH", "/admin/tenants/acme", {"json": {"slug": "www"}}, 400, "invalid_slug"),
    ("PATCH", "/admin/tenants/acme", {"json": {"tier": "platinum"}}, 400, "invalid_tier"),
    ("PATCH", "/admin/tenants/acme", {"json": {"slug": "beta"}}, 409, "slug_taken"),
    ("PATCH", "/admin/tenants/acme", {"json": {"name": ""}}, 400, "validation_failed"),
    ("PATCH", "/admin/tenants/acme", {"json": {"status": "active"}}, 400, "validation_failed"),
    ("PATCH", "/admin/tenants/acme", {"json": {"tier": 3}}, 400, "validation_failed"),
    ("PATCH", "/admin/tenants/acme", {"content": b"{tier: gold}"}, 400, "validation_failed"),
    ("PATCH", "/admin/tenants/gone", {"json": {"name": "Back"}}, 409, "invalid_state"),
    ("DELETE", "/admin/tenants/nope", {}, 404, "tenant_not_found"),
    ("DELETE", "/admin/tenants/nope", {"params": {"now": "true"}}, 404, "tenant_not_found"),
    ("DELETE", "/admin/tenants/acme", {"params": {"now": "maybe"}}, 400, "validation_failed"),
    ("DELETE", "/admin/tenants/gone", {}, 409, "invalid_state"),
    # suspend / resume
    ("POST", "/admin/tenants/nope/suspend", {}, 404, "tenant_not_found"),
    ("POST", "/admin/tenants/beta/suspend", {}, 409, "invalid_state"),
    ("POST", "/admin/tenants/gone/suspend", {}, 409, "invalid_state"),
    ("POST", "/admin/tenants/nope/resume", {}, 404, "tenant_not_found"),
    ("POST", "/admin/tenants/acme/resume", {}, 409, "invalid_state"),
    # servers (no DSN here can reach a server, even if the explicitness check were gone: each names
    # port 1, where nothing listens; DSNs that lean on libpq defaults are in test_server_identity.py)
    ("POST", "/admin/servers", {"json": {"name": "Bad Name!", "dsn": UNREACHABLE_DSN}}, 400, "validation_failed"),
    ("POST", "/admin/servers", {"json": {"name": "other", "dsn": "host=127.0.0.1 nonsense"}}, 400, "validation_failed"),
    ("POST", "/admin/servers", {"json": {"name": "other", "dsn": "port=1 host=127.0.0.1"}}, 400, "validation_failed"),
    ("POST", "/admin/servers", {"json": {"name": "other", "dsn": UNREACHABLE_DSN}}, 400, "validation_failed"),
    ("POST", "/admin/servers", {"json": {"name": "other"}}, 400, "validation_failed"),
    ("POST", "/admin/servers", {"json": {"name": "other", "dsn": 5}}, 400, "validation_failed"),
    ("POST", "/admin/servers", {"json": {"name": "o", "dsn": "x", "extra": 1}}, 400, "validation_failed"),
    ("POST", "/admin/servers", {"content": b"{"}, 400, "validation_failed"),
    ("POST", "/admin/servers/nope/drain", {}, 404, "server_not_found"),
    ("POST", "/admin/servers/%00/drain", {}, 404, "server_not_found"),
    ("POST", "/admin/servers/nope/activate", {}, 404, "server_not_found"),
    ("PUT", "/admin/servers/nope/dsn", {"json": {"dsn": UNREACHABLE_DSN}}, 404, "server_not_found"),
    ("PUT", "/admin/servers/%00/dsn", {"json": {"dsn": UNREACHABLE_DSN}}, 404, "server_not_found"),
    ("PUT", "/admin/servers/default/dsn", {"json": {"dsn": "port=1 host=127.0.0.1"}}, 400, "validation_failed"),
    ("PUT", "/admin/servers/default/dsn", {"json": {"dsn": UNREACHABLE_DSN}}, 400, "validation_failed"),
    ("PUT", "/admin/servers/default/dsn", {"json": {"dsn": 5}}, 400, "validation_failed"),
    ("PUT", "/admin/servers/default/dsn", {"json": {"dsn": "x", "name": "y"}}, 400, "validation_failed"),
    ("PUT", "/admin/servers/default/dsn", {"json": {}}, 400, "validation_failed"),
    # reconcile
    ("POST", "/admin/reconcile", {"params": {"fix": "perhaps"}}, 400, "validation_failed"),
]


@pytest.fixture
async def three_tenants(client: Client) -> None:
    await create(client, "acme")
    await create(client, "beta")
    await create(client, "gone")
    assert (await client.post("/admin/tenants/beta/suspend")).status_code == 200
    assert (await client.delete("/admin/tenants/gone")).status_code == 200


async def test_bad_input_is_a_4xx_json_error_and_changes_nothing(
    client: Client, control_dsn: str, pg_admin_dsn: str, three_tenants: None
) -> None:
    before, databases = registry_snapshot(control_dsn), tenant_databases(pg_admin_dsn)
    failures: list[str] = []
    for method, path, kwargs, status, code in BAD_REQUESTS:
        response = await client.request(method, path, **kwargs)
        try:
            assert_error(response, status, code)
        except AssertionError:
            failures.append(f"{method} {path} {kwargs}: {response.status_code} {response.text[:300]}")
    assert not failures, "\n".join(failures)
    # The server-name duplicate is checked after the DSN: a valid superuser DSN under a taken name.
    assert_error(
        await client.post("/admin/servers", json={"name": "default", "dsn": pg_admin_dsn}), 409, "server_exists"
    )
    assert registry_snapshot(control_dsn) == before
    assert tenant_databases(pg_admin_dsn) == databases


async def test_unknown_routes_and_methods_are_json_errors(client: Client) -> None:
    assert_error(await client.get("/admin/nowhere"), 404, "not_found")
    assert_error(await client.put("/admin/tenants/acme", json={}), 405, "method_not_allowed")
