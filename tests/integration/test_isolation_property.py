"""Property: whatever users of two tenants do, in any order and through any resolution method, no
response ever carries a row of the other tenant.

Against a real ``cardvault serve``. Two tenants are provisioned with their first tenant_admin (the
``admin_email`` of ``POST /admin/tenants``), each gets a collection_manager and a user, and every row
created is marked with its tenant's slug. Hypothesis generates sequences of requests (create, list,
get, change, delete of every resource, by path, ``X-Tenant`` header or a token presented to the
other tenant); every JSON answer is searched for the other tenant's marker.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ADMIN_TOKEN, Served

SLUGS = ("iso-alpha", "iso-bravo")
PASSWORD = "correct horse battery staple"
RESOURCES = ("manufacturers", "teams", "players", "cards")
ROLES = ("tenant_admin", "collection_manager", "user")


def _body(resource: str, marker: str, n: int) -> dict[str, Any]:
    if resource == "manufacturers":
        return {"name": f"{marker} maker {n}"}
    if resource == "teams":
        return {"name": f"{marker} team {n}", "league": marker}
    if resource == "players":
        return {"last_name": f"{marker} player {n}"}
    return {"cardnumber": f"{marker}-{n}", "notes": marker}


class Fleet:
    """The two tenants, their users' tokens, and an HTTP client."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        self.tokens: dict[tuple[str, str], str] = {}
        for slug in SLUGS:
            created = self.http.post(
                "/admin/tenants",
                json={
                    "name": slug,
                    "slug": slug,
                    "tier": "professional",
                    "admin_email": f"admin@{slug}.test",
                    "admin_password": PASSWORD,
                },
                headers=admin,
            )
            assert created.status_code == 201, created.text
            self.tokens[(slug, "tenant_admin")] = self.login(slug, f"admin@{slug}.test")
            for role in ROLES[1:]:
                email = f"{role}@{slug}.test"
                made = self.http.post(
                    f"/t/{slug}/api/users",
                    json={"email": email, "role": role, "password": PASSWORD},
                    headers=self.auth(slug, "tenant_admin"),
                )
                assert made.status_code == 201, made.text
                self.tokens[(slug, role)] = self.login(slug, email)
        self.counter = 0

    def login(self, slug: str, email: str) -> str:
        response = self.http.post(f"/t/{slug}/auth/token", json={"email": email, "password": PASSWORD})
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    def auth(self, slug: str, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[(slug, role)]}"}


@pytest.fixture
def fleet(served: Served) -> Iterator[Fleet]:
    made = Fleet(served.url)
    yield made
    made.http.close()


operation = st.tuples(
    st.sampled_from(SLUGS),  # whose user acts
    st.sampled_from(ROLES),
    st.sampled_from(("path", "header", "other-tenant-path")),
    st.sampled_from(("create", "list", "get", "patch", "delete")),
    st.sampled_from(RESOURCES),
    st.integers(min_value=1, max_value=12),  # row id
)


@pytest.mark.slow
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(operation, min_size=1, max_size=12))
def test_no_response_ever_carries_the_other_tenants_rows(fleet: Fleet, steps: list[tuple[Any, ...]]) -> None:
    for slug, role, via, action, resource, row_id in steps:
        other = SLUGS[1 - SLUGS.index(slug)]
        target = other if via == "other-tenant-path" else slug
        base, headers = (f"/t/{target}/api", {}) if via != "header" else ("/api", {"X-Tenant": slug})
        headers |= fleet.auth(slug, role)
        fleet.counter += 1
        if action == "create":
            response = fleet.http.post(
                f"{base}/{resource}/", json=_body(resource, slug, fleet.counter), headers=headers
            )
        elif action == "list":
            response = fleet.http.get(f"{base}/{resource}/", params={"limit": 100}, headers=headers)
        elif action == "get":
            response = fleet.http.get(f"{base}/{resource}/{row_id}", headers=headers)
        elif action == "patch":
            field = {"cards": "notes", "players": "position", "teams": "city", "manufacturers": "name"}[resource]
            response = fleet.http.patch(
                f"{base}/{resource}/{row_id}", json={field: f"{slug} changed {fleet.counter}"}, headers=headers
            )
        else:
            response = fleet.http.delete(f"{base}/{resource}/{row_id}", headers=headers)
        assert response.status_code < 500, response.text
        if target != slug:
            # A token of one tenant presented to the other is refused before anything is read.
            assert response.status_code == 403, (steps, response.text)
            assert response.json()["error"] == "wrong_tenant"
            continue
        text = json.dumps(response.json()) if response.content else ""
        assert other not in text, f"{slug}'s user saw {other}'s data: {text}"
