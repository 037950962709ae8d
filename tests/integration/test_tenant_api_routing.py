"""The tenant API through the whole app: resolution by path, subdomain and header, pools, lifecycle.

Every request here goes through create_app: the registry cache, the credential check (each tenant API
request carries the access token of a tenant_admin of the tenant it names), TenantPools (each tenant's
own login role on its own database) and the cards handlers. Errors of tenant resolution (404, 400, 423,
410) come before the credential is looked at; then a missing or bad one is a 401, another tenant's a 403.
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
from tests.integration.tenant_support import create_tenant_as_admin

BASE = "cards.test"


@pytest.fixture
async def app_client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    configured = settings.replace(http=dataclasses.replace(settings.http, base_domain=BASE))
    async with AsyncTestClient(app=create_app(configured)) as client:
        yield client


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def create_tenant(client: AsyncTestClient[Any], slug: str) -> dict[str, str]:
    """Create ``slug`` (professional, with a tenant_admin); the ``Authorization`` header of that admin."""
    return await create_tenant_as_admin(client, slug)


def via(method: str, slug: str, rest: str, auth: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """Path and headers addressing ``slug`` by ``method`` (path, host or header), with ``auth`` if given."""
    if method == "path":
        return f"/t/{slug}/api{rest}", {**(auth or {})}
    if method == "host":
        return f"/api{rest}", {"host": f"{slug}.{BASE}", **(auth or {})}
    return f"/api{rest}", {"x-tenant": slug, **(auth or {})}


METHODS = ("path", "host", "header")


def tampered(auth: dict[str, str]) -> dict[str, str]:
    """``auth`` with one character in the middle of the JWT's signature changed."""
    head, _, signature = auth["Authorization"].rpartition(".")
    middle = len(signature) // 2
    changed = "A" if signature[middle] != "A" else "B"
    return {"Authorization": f"{head}.{signature[:middle]}{changed}{signature[middle + 1 :]}"}


async def test_each_resolution_method_reaches_the_tenants_own_rows(app_client: AsyncTestClient[Any]) -> None:
    tokens: dict[str, dict[str, str]] = {}
    for slug in ("alpha", "bravo"):
        tokens[slug] = await create_tenant(app_client, slug)
        url, headers = via("path", slug, "/manufacturers", tokens[slug])
        created = await app_client.post(url, json={"name": f"maker of {slug}"}, headers=headers)
        assert created.status_code == 201, created.text

    for method, slug in itertools.product(METHODS, ("alpha", "bravo")):
        url, headers = via(method, slug, "/manufacturers", tokens[slug])
        listing = await app_client.get(url, headers=headers)
        assert listing.status_code == 200, listing.text
        assert [m["name"] for m in listing.json()["items"]] == [f"maker of {slug}"], (method, slug)


async def test_no_combination_of_signals_reaches_another_tenants_rows(app_client: AsyncTestClient[Any]) -> None:
    alpha = await create_tenant(app_client, "alpha")
    bravo = await create_tenant(app_client, "bravo")
    url, headers = via("path", "bravo", "/manufacturers", bravo)
    secret = await app_client.post(url, json={"name": "bravo secret"}, headers=headers)
    assert secret.status_code == 201, secret.text
    secret_id = secret.json()["id"]

    # alpha named by one method, bravo by another: a conflict, never bravo's data, whichever tenant's
    # token comes with it (resolution fails before the credential is looked at).
    for auth in (alpha, bravo):
        for first, second in itertools.permutations(METHODS, 2):
            url, headers = via(first, "alpha", f"/manufacturers/{secret_id}")
            _, other = via(second, "bravo", "")
            if second == "path":
                url = f"/t/bravo/api/manufacturers/{secret_id}"
                headers = via(first, "alpha", "")[1]
                if first == "path":
                    continue
            response = await app_client.get(url, headers={**headers, **other, **auth})
            assert response.status_code == 400, (first, second, response.text)
            assert response.json()["error"] == "tenant_conflict"
            assert "bravo secret" not in response.text

    # Through alpha alone (as alpha's admin), bravo's id is simply not there.
    for method in METHODS:
        url, headers = via(method, "alpha", f"/manufacturers/{secret_id}", alpha)
        response = await app_client.get(url, headers=headers)
        assert response.status_code == 404, (method, response.text)
        assert "bravo secret" not in response.text


@pytest.mark.parametrize("auth", [{}, {"Authorization": "Bearer not-a-token"}], ids=["no token", "garbage token"])
async def test_unknown_missing_and_unroutable_tenants(app_client: AsyncTestClient[Any], auth: dict[str, str]) -> None:
    # Tenant resolution answers before any credential is checked.
    response = await app_client.get("/t/nobody/api/cards", headers=auth)
    assert (response.status_code, response.json()["error"]) == (404, "tenant_not_found")
    response = await app_client.get("/api/cards", headers=auth)
    assert response.status_code == 400
    assert response.json()["error"] == "tenant_required"
    response = await app_client.get("/api/cards", headers={"host": f"nobody.{BASE}", **auth})
    assert (response.status_code, response.json()["error"]) == (404, "tenant_not_found")


@pytest.mark.parametrize("method", METHODS)
async def test_each_resolution_method_requires_a_token_of_that_tenant(
    app_client: AsyncTestClient[Any], method: str
) -> None:
    alpha = await create_tenant(app_client, "alpha")
    bravo = await create_tenant(app_client, "bravo")
    url, headers = via("path", "alpha", "/teams", alpha)
    created = await app_client.post(url, json={"name": "alpha secret"}, headers=headers)
    assert created.status_code == 201, created.text

    # The right token: served.
    url, headers = via(method, "alpha", "/teams", alpha)
    response = await app_client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    assert [t["name"] for t in response.json()["items"]] == ["alpha secret"]

    refusals = [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Basic YWxwaGE6c2VjcmV0"}, 401, "unauthorized"),
        (bravo, 403, "wrong_tenant"),
        ({"Authorization": "Bearer not-a-token"}, 401, "invalid_token"),
        (tampered(alpha), 401, "invalid_token"),
        (admin(), 401, "invalid_token"),  # the platform's admin token is no tenant credential
    ]
    for auth, status, code in refusals:
        for verb, body in (("GET", None), ("POST", {"name": "intruder"})):
            url, headers = via(method, "alpha", "/teams", auth)
            response = await app_client.request(verb, url, headers=headers, json=body)
            assert (response.status_code, response.json()["error"]) == (status, code), (auth, verb, response.text)
            assert "alpha secret" not in response.text
        # Also for a row that exists.
        url, headers = via(method, "alpha", f"/teams/{created.json()['id']}", auth)
        response = await app_client.get(url, headers=headers)
        assert (response.status_code, response.json()["error"]) == (status, code), (auth, response.text)
        assert "alpha secret" not in response.text

    # Nothing was written by the refused requests.
    url, headers = via(method, "alpha", "/teams", alpha)
    assert [t["name"] for t in (await app_client.get(url, headers=headers)).json()["items"]] == ["alpha secret"]
    # And bravo's token still works for bravo, through the same method.
    url, headers = via(method, "bravo", "/teams", bravo)
    response = await app_client.get(url, headers=headers)
    assert (response.status_code, response.json()["items"]) == (200, []), response.text


async def test_lifecycle_is_seen_by_the_tenant_api(app_client: AsyncTestClient[Any]) -> None:
    gamma = await create_tenant(app_client, "gamma")
    url, headers = via("header", "gamma", "/teams", gamma)
    assert (await app_client.post(url, json={"name": "Tigers"}, headers=headers)).status_code == 201

    assert (await app_client.post("/admin/tenants/gamma/suspend", headers=admin())).status_code == 200
    response = await app_client.get(url, headers=headers)
    assert (response.status_code, response.json()["error"]) == (423, "tenant_suspended")
    # The tenant's status answers before the credential is checked.
    response = await app_client.get(url, headers={"x-tenant": "gamma"})
    assert (response.status_code, response.json()["error"]) == (423, "tenant_suspended")

    # The token issued before the suspension is still good after the resume.
    assert (await app_client.post("/admin/tenants/gamma/resume", headers=admin())).status_code == 200
    response = await app_client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    assert [t["name"] for t in response.json()["items"]] == ["Tigers"]

    renamed = await app_client.patch("/admin/tenants/gamma", json={"slug": "delta"}, headers=admin())
    assert renamed.status_code == 200
    response = await app_client.get(url, headers=headers)
    assert (response.status_code, response.json()["error"]) == (404, "tenant_not_found")
    # The token is bound to the tenant, not to its slug: it serves the new slug.
    moved_url, moved_headers = via("header", "delta", "/teams", gamma)
    assert [t["name"] for t in (await app_client.get(moved_url, headers=moved_headers)).json()["items"]] == ["Tigers"]

    assert (await app_client.delete("/admin/tenants/delta", headers=admin())).status_code == 200
    response = await app_client.get(moved_url, headers=moved_headers)
    assert (response.status_code, response.json()["error"]) == (410, "tenant_deleted")
    response = await app_client.get(moved_url, headers={"x-tenant": "delta"})
    assert (response.status_code, response.json()["error"]) == (410, "tenant_deleted")


async def test_quota_comes_from_the_registry(app_client: AsyncTestClient[Any]) -> None:
    echo = await create_tenant(app_client, "echo")
    response = await app_client.patch("/admin/tenants/echo", json={"tier": "starter"}, headers=admin())
    assert response.status_code == 200
    # starter allows 1,000 cards: lower it in the registry to make the limit reachable quickly.
    state = app_client.app.state
    async with state.platform.control.connection() as conn:
        await conn.execute(
            "UPDATE tenant_quotas SET quota_limit = 2 WHERE quota_type = 'cards'"
            " AND tenant_id = (SELECT id FROM tenants WHERE slug = 'echo')"
        )
    url, headers = via("path", "echo", "/cards", echo)
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
    # The admin's login opens the tenant's pool (the one miss); every API request after it is a hit.
    foxtrot = await create_tenant(app_client, "foxtrot")
    url, headers = via("path", "foxtrot", "/cards", foxtrot)
    for _ in range(3):
        assert (await app_client.get(url, headers=headers)).status_code == 200
    stats = (await app_client.get("/admin/pools", headers=admin())).json()
    assert stats["pools"]["misses"] == 1
    assert stats["pools"]["hits"] == 3
    assert stats["pools"]["open_pools"] == 1
    assert stats["pool_hit_ratio"] == 3 / 4
    assert stats["registry_cache"]["listening"] is True
    assert (await app_client.get("/admin/pools")).status_code == 401


async def test_the_credential_is_checked_before_the_body_is_read(app_client: AsyncTestClient[Any]) -> None:
    alpha = await create_tenant(app_client, "alpha")
    bravo = await create_tenant(app_client, "bravo")

    async def post_broken_card(auth: dict[str, str]) -> int:
        json = {"content-type": "application/json"}
        response = await app_client.post("/t/alpha/api/cards", content=b"{not json", headers={**json, **auth})
        return response.status_code

    # A body Litestar would refuse with 400: without a valid credential of the tenant, nobody learns that.
    assert [await post_broken_card(auth) for auth in ({}, tampered(alpha), bravo)] == [401, 401, 403]
    # The tenant's own admin gets the validation error itself, and nothing was created.
    assert await post_broken_card(alpha) == 400
    listed = await app_client.get("/t/alpha/api/cards", headers=alpha)
    assert listed.status_code == 200 and listed.json()["items"] == [], listed.text
