"""The tenant API through the whole app: resolution by path, subdomain and header, pools, lifecycle.

Every request here goes through create_app: the registry cache, TenantPools (each tenant's own login
role on its own database) and the cards handlers.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from controlplane.app import create_app
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN

BASE = "cards.test"


@pytest.fixture
async def app_client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    configured = settings.replace(http=dataclasses.replace(settings.http, base_domain=BASE))
    async with AsyncTestClient(app=create_app(configured)) as client:
        yield client


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def create_tenant(client: AsyncTestClient[Any], slug: str) -> None:
    response = await client.post(
        "/admin/tenants", json={"name": slug, "slug": slug, "tier": "professional"}, headers=admin()
    )
    assert response.status_code == 201, response.text


def via(method: str, slug: str, rest: str) -> tuple[str, dict[str, str]]:
    """Path and headers addressing ``slug`` by ``method`` (path, host or header)."""
    if method == "path":
        return f"/t/{slug}/api{rest}", {}
    if method == "host":
        return f"/api{rest}", {"host": f"{slug}.{BASE}"}
    return f"/api{rest}", {"x-tenant": slug}


METHODS = ("path", "host", "header")


async def test_each_resolution_method_reaches_the_tenants_own_rows(app_client: AsyncTestClient[Any]) -> None:
    for slug in ("alpha", "bravo"):
        await create_tenant(app_client, slug)
        url, headers = via("path", slug, "/manufacturers")
        created = await app_client.post(url, json={"name": f"maker of {slug}"}, headers=headers)
        assert created.status_code == 201, created.text

    for method, slug in itertools.product(METHODS, ("alpha", "bravo")):
        url, headers = via(method, slug, "/manufacturers")
        listing = await app_client.get(url, headers=headers)
        assert listing.status_code == 200, listing.text
        assert [m["name"] for m in listing.json()["items"]] == [f"maker of {slug}"], (method, slug)


async def test_no_combination_of_signals_reaches_another_tenants_rows(app_client: AsyncTestClient[Any]) -> None:
    await create_tenant(app_client, "alpha")
    await create_tenant(app_client, "bravo")
    url, headers = via("path", "bravo", "/manufacturers")
    secret = await app_client.post(url, json={"name": "bravo secret"}, headers=headers)
    secret_id = secret.json()["id"]

    # alpha named by one method, bravo by another: a conflict, never bravo's data.
    for first, second in itertools.permutations(METHODS, 2):
        url, headers = via(first, "alpha", f"/manufacturers/{secret_id}")
        _, other = via(second, "bravo", "")
        if second == "path":
            url = f"/t/bravo/api/manufacturers/{secret_id}"
            headers = via(first, "alpha", "")[1]
            if first == "path":
                continue
        response = await app_client.get(url, headers={**headers, **other})
        assert response.status_code == 400, (first, second, response.text)
        assert response.json()["error"] == "tenant_conflict"
        assert "bravo secret" not in response.text

    # Through alpha alone, bravo's id is simply not there.
    for method in METHODS:
        url, headers = via(method, "alpha", f"/manufacturers/{secret_id}")
        response = await app_client.get(url, headers=headers)
        assert response.status_code == 404, (method, response.text)
        assert "bravo secret" not in response.text


async def test_unknown_missing_and_unroutable_tenants(app_client: AsyncTestClient[Any]) -> None:
    response = await app_client.get("/t/nobody/api/cards")
    assert (response.status_code, response.json()["error"]) == (404, "tenant_not_found")
    response = await app_client.get("/api/cards")
    assert response.status_code == 400
    assert response.json()["error"] == "tenant_required"
    response = await app_client.get("/api/cards", headers={"host": f"nobody.{BASE}"})
    assert (response.status_code, response.json()["error"]) == (404, "tenant_not_found")


async def test_lifecycle_is_seen_by_the_tenant_api(app_client: AsyncTestClient[Any]) -> None:
    await create_tenant(app_client, "gamma")
    url, headers = via("header", "gamma", "/teams")
    assert (await app_client.post(url, json={"name": "Tigers"}, headers=headers)).status_code == 201

    assert (await app_client.post("/admin/tenants/gamma/suspend", headers=admin())).status_code == 200
    response = await app_client.get(url, headers=headers)
    assert (response.status_code, response.json()["error"]) == (423, "tenant_suspended")

    assert (await app_client.post("/admin/tenants/gamma/resume", headers=admin())).status_code == 200
    response = await app_client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    assert [t["name"] for t in response.json()["items"]] == ["Tigers"]

    renamed = await app_client.patch("/admin/tenants/gamma", json={"slug": "delta"}, headers=admin())
    assert renamed.status_code == 200
    assert (await app_client.get(url, headers=headers)).status_code == 404
    moved_url, moved_headers = via("header", "delta", "/teams")
    assert [t["name"] for t in (await app_client.get(moved_url, headers=moved_headers)).json()["items"]] == ["Tigers"]

    assert (await app_client.delete("/admin/tenants/delta", headers=admin())).status_code == 200
    response = await app_client.get(moved_url, headers=moved_headers)
    assert (response.status_code, response.json()["error"]) == (410, "tenant_deleted")


async def test_quota_comes_from_the_registry(app_client: AsyncTestClient[Any]) -> None:
    await create_tenant(app_client, "echo")
    response = await app_client.patch("/admin/tenants/echo", json={"tier": "starter"}, headers=admin())
    assert response.status_code == 200
    # starter allows 1,000 cards: lower it in the registry to make the limit reachable quickly.
    state = app_client.app.state
    async with state.platform.control.connection() as conn:
        await conn.execute(
            "UPDATE tenant_quotas SET quota_limit = 2 WHERE quota_type = 'cards'"
            " AND tenant_id = (SELECT id FROM tenants WHERE slug = 'echo')"
        )
    url, headers = via("path", "echo", "/cards")
    for number in ("1", "2"):
        assert (await app_client.post(url, json={"cardnumber": number}, headers=headers)).status_code == 201
    refused = await app_client.post(url, json={"cardnumber": "3"}, headers=headers)
    assert refused.status_code == 403
    assert refused.json() | {"detail": ""} == {
        "error": "quota_exceeded",
        "detail": "",
        "quota": "cards",
        "limit": 2,
        "usage": 2,
    }


async def test_pool_stats_count_hits_and_misses(app_client: AsyncTestClient[Any]) -> None:
    await create_tenant(app_client, "foxtrot")
    url, headers = via("path", "foxtrot", "/cards")
    for _ in range(3):
        assert (await app_client.get(url, headers=headers)).status_code == 200
    stats = (await app_client.get("/admin/pools", headers=admin())).json()
    assert stats["pools"]["misses"] == 1
    assert stats["pools"]["hits"] == 2
    assert stats["pools"]["open_pools"] == 1
    assert stats["pool_hit_ratio"] == 2 / 3
    assert stats["registry_cache"]["listening"] is True
    assert (await app_client.get("/admin/pools")).status_code == 401
