"""Signups that fail or are refused leave nothing: a failure at any step after the tenant exists (no
registry row, database, role, onboarding or outbox row afterwards), the losers of a race for one slug,
and the per-address rate limits (429 with Retry-After; the address as the login throttle sees it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.settings import Settings
from tests.conftest import serve
from tests.integration.signup_support import (
    assert_nothing_left,
    onboarding_rows,
    onboarding_settings,
    outbox_rows,
    running,
    server_objects,
    sign_up,
    signup_body,
)
from tests.integration.tenant_support import fetch


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code, body
    return body


async def test_a_failure_writing_the_onboarding_records_registers_nothing(settings: Settings, admin_dsn: str) -> None:
    """The onboarding row and the verification mail are written with the tenant's registry row: if they
    fail, the registration rolls back before anything is made on a server."""
    control = settings.database.url
    before = await server_objects(admin_dsn)
    async with running(onboarding_settings(settings, failpoints="before:signup_commit=raise")) as client:
        failed = _error(await client.post("/signup", json=signup_body("half-made")), 500, "operation_failed")
        assert failed["step"] == "record" and "nothing was kept" in failed["detail"]
    await assert_nothing_left(control, admin_dsn, "half-made", before)
    assert await fetch(control, "SELECT kind FROM tenant_operations WHERE tenant_slug = 'half-made'") == []
    async with running(onboarding_settings(settings)) as client:
        await sign_up(client, "half-made")
    assert len(await outbox_rows(control)) == 1 and len(await onboarding_rows(control)) == 1


async def test_a_failure_at_any_step_after_the_tenant_exists_leaves_nothing(settings: Settings, admin_dsn: str) -> None:
    control = settings.database.url
    before = await server_objects(admin_dsn)
    async with running(onboarding_settings(settings, failpoints="before:signup_session=raise")) as client:
        failed = _error(await client.post("/signup", json=signup_body("half-made")), 500, "operation_failed")
        assert failed["step"] == "session" and "nothing was kept" in failed["detail"]
    await assert_nothing_left(control, admin_dsn, "half-made", before)
    # The tenant had been made, then purged (the ledger outlives it), and the signup is audited as failed.
    operations = await fetch(control, "SELECT kind, state FROM tenant_operations WHERE tenant_slug = 'half-made'")
    assert {"kind": "provision", "state": "succeeded"} in operations
    assert {"kind": "purge", "state": "succeeded"} in operations
    (audit,) = await fetch(control, "SELECT outcome, details FROM platform_audit WHERE action = 'tenant.signup'")
    assert audit["outcome"] == "failed" and audit["details"]["error"] == "operation_failed"
    # Nothing in the way of the same signup again.
    async with running(onboarding_settings(settings)) as client:
        await sign_up(client, "half-made")
    assert len(await outbox_rows(control)) == 1 and len(await onboarding_rows(control)) == 1


async def test_signup_race_for_one_slug_has_one_winner_and_the_losers_leave_nothing(
    settings: Settings, admin_dsn: str
) -> None:
    control = settings.database.url
    databases_before, roles_before = await server_objects(admin_dsn)
    async with running(onboarding_settings(settings)) as client:
        responses = await asyncio.gather(
            *(client.post("/signup", json=signup_body("contested", email=f"f{i}@contested.test")) for i in range(6))
        )
    winners = [r for r in responses if r.status_code == 201]
    losers = [r for r in responses if r.status_code != 201]
    assert len(winners) == 1, [r.text for r in responses]
    for loser in losers:
        _error(loser, 409, "slug_taken")
    winner = winners[0].json()
    email = next(f"f{i}@contested.test" for i, r in enumerate(responses) if r.status_code == 201)

    assert await fetch(control, "SELECT id::text AS id FROM tenants") == [{"id": winner["tenant"]["id"]}]
    name = f"t_{winner['tenant']['id'].replace('-', '')}"
    databases, roles = await server_objects(admin_dsn)
    assert databases - databases_before == {name} and roles - roles_before == {name}
    assert [r["admin_email"] for r in await onboarding_rows(control)] == [email]
    assert [r["recipient"] for r in await outbox_rows(control)] == [email]


async def test_signups_are_rate_limited_per_address(settings: Settings) -> None:
    control = settings.database.url
    async with running(onboarding_settings(settings, per_address_per_hour=2)) as client:
        await sign_up(client, "first-shop")
        # A refused signup counts too (it reached the registry): the address has used its two.
        _error(await client.post("/signup", json=signup_body("first-shop")), 409, "slug_taken")
        refused = await client.post("/signup", json=signup_body("third-shop"))
        _error(refused, 429, "rate_limited")
        assert 1 <= int(refused.headers["Retry-After"]) <= 3600
        assert refused.headers["RateLimit-Limit"] == "2" and refused.headers["RateLimit-Remaining"] == "0"
        # Bad input costs nothing and is answered as such even now.
        _error(await client.post("/signup", json=signup_body("admin")), 400, "invalid_slug")

        # Another address has its own allowance.
        transport = httpx.ASGITransport(app=client.app, client=("198.51.100.23", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
            assert (await other.post("/signup", json=signup_body("third-shop"))).status_code == 201

        # Slug checks are limited as well, far more generously (30 per allowed signup).
        for _ in range(60):
            response = await client.get("/signup/slug-available", params={"slug": "some-slug"})
            assert response.status_code == 200, response.text
        _error(await client.get("/signup/slug-available", params={"slug": "some-slug"}), 429, "rate_limited")
    assert sorted(r["slug"] for r in await fetch(control, "SELECT slug FROM tenants")) == ["first-shop", "third-shop"]


@pytest.mark.slow
def test_the_signup_limit_counts_the_address_the_login_throttle_sees(settings: Settings, tmp_path: Path) -> None:
    """On the real ``cardvault serve`` behind a trusted proxy, each forwarded client has its own allowance
    (without a trusted proxy the header is not believed at all: ``test_forwarded_for.py``)."""
    env = {"CARDVAULT_SIGNUP_RATE": "1", "CARDVAULT_TRUSTED_PROXIES": "127.0.0.1", "CARDVAULT_SPARE_DATABASES": "0"}
    template = settings.provisioning.template_database
    with (
        serve(settings.database.url, template, tmp_path, **env) as served,
        httpx.Client(base_url=served.url, timeout=30) as client,
    ):

        def status(slug: str, forwarded_for: str) -> int:
            response = client.post("/signup", json=signup_body(slug), headers={"X-Forwarded-For": forwarded_for})
            return response.status_code

        assert status("proxied-one", "198.51.100.1") == 201
        assert status("proxied-two", "198.51.100.1") == 429
        assert status("proxied-two", "198.51.100.2") == 201
