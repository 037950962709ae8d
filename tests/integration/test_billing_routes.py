"""The billing routes with ``CARDVAULT_BILLING=none`` (the default), and who may use them.

Proven here: with no provider ``GET /t/{slug}/api/billing`` still answers (the tier, no subscription,
usage against the plan) while checkout, portal and plan answer 409 ``billing_disabled`` and the webhook
is not mounted; only tenant admins of that very tenant reach a tenant's billing (another tenant's admin
403, a user of the tenant 403 ``permission_denied``, an unknown tenant 404); a super-admin's plan change
below what the tenant uses is refused 409 ``over_quota`` naming exactly the quotas it exceeds, changes
nothing, and goes through with ``force``. With Stripe on, the app closes the SDK's connections when it stops.
"""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from controlplane.http.state import BILLING_STATE_KEY
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.registry.models import TIER_QUOTAS, QuotaType, Tier
from controlplane.settings import Settings
from tests.integration.auth_support import (
    add_user,
    create_tenant,
    login_as,
    super_admin,
    tenant_rows,
)
from tests.integration.billing_support import open_stripe_client

Client = AsyncTestClient[Any]
PLAN = {"tier": "professional", "interval": "month"}


async def test_without_a_provider_the_plan_is_shown_and_payment_routes_say_billing_disabled(client: Client) -> None:
    acme = await create_tenant(client, "acme", tier="professional")
    shown = await client.get(acme.api("/billing"), headers=acme.auth)
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert body["provider"] == "none" and body["tier"] == "professional"
    assert body["subscription_status"] is None and body["has_customer"] is False
    usage = {q["quota"]: q for q in body["usage"]}
    assert usage["cards"]["limit"] == TIER_QUOTAS[Tier.PROFESSIONAL][QuotaType.CARDS]
    for path, payload in (("/billing/checkout", PLAN), ("/billing/portal", None), ("/billing/plan", PLAN)):
        answer = await client.post(acme.api(path), json=payload, headers=acme.auth)
        assert (answer.status_code, answer.json()["error"]) == (409, "billing_disabled"), (path, answer.text)
    webhook = await client.post("/billing/stripe/webhook", content=b"{}", headers={"Stripe-Signature": "t=1,v1=0"})
    assert webhook.status_code == 404


async def test_only_the_tenants_own_admins_reach_its_billing(client: Client, platform: Platform) -> None:
    acme = await create_tenant(client, "acme")
    other = await create_tenant(client, "other")
    await add_user(platform, "acme", "manager@acme.test", "collection_manager")
    manager = await login_as(client, "acme", "manager@acme.test")
    routes = [("GET", "/billing", None), ("POST", "/billing/checkout", PLAN), ("POST", "/billing/portal", None)]
    routes.append(("POST", "/billing/plan", PLAN))
    for method, path, payload in routes:
        stranger = await client.request(method, acme.api(path), json=payload, headers=other.auth)
        assert (stranger.status_code, stranger.json()["error"]) == (403, "wrong_tenant"), stranger.text
        # the other tenant's admin naming acme by header on the /api mount: refused the same way
        by_header = await client.request(
            method, f"/api{path}", json=payload, headers={**other.auth, "X-Tenant": "acme"}
        )
        assert by_header.status_code == 403, by_header.text
        member = await client.request(method, acme.api(path), json=payload, headers=manager)
        assert (member.status_code, member.json()["error"]) == (403, "permission_denied"), member.text
    missing = await client.get("/t/nobody/api/billing", headers=acme.auth)
    assert missing.status_code == 404
    # Their own billing is theirs: each sees its own tier.
    assert (await client.get(other.api("/billing"), headers=other.auth)).json()["tier"] == "professional"


async def _fill(platform: Platform, slug: str, *, cards: int, users: int) -> None:
    await tenant_rows(
        platform, slug, "INSERT INTO cards (cardnumber) SELECT 'C-' || g FROM generate_series(1, %s) g", (cards,)
    )
    for n in range(users):
        await add_user(platform, slug, f"u{n}@{slug}.test", "user")


async def _tier(platform: Platform, slug: str) -> Tier:
    async with platform.control.connection() as conn:
        tenant = await registry.get_by_slug(conn, slug)
    assert tenant is not None
    return tenant.subscription_tier


async def test_a_downgrade_below_usage_is_refused_with_what_exceeds_unless_forced(
    client: Client, platform: Platform, settings: Settings
) -> None:
    await create_tenant(client, "acme", tier="professional")
    starter = TIER_QUOTAS[Tier.STARTER]
    await _fill(platform, "acme", cards=starter[QuotaType.CARDS] + 1, users=1)  # + the first admin: 2 users
    actor, admin = await super_admin(client, platform, settings)
    client.headers.pop("Authorization")

    refused = await client.post("/admin/tenants/acme/billing/plan", json={"tier": "starter"}, headers=admin)
    assert refused.status_code == 409, refused.text
    body = refused.json()
    assert body["error"] == "over_quota"
    assert body["exceeds"] == [
        {"quota": "users", "usage": 2, "limit": starter[QuotaType.USERS]},
        {"quota": "cards", "usage": starter[QuotaType.CARDS] + 1, "limit": starter[QuotaType.CARDS]},
    ]
    assert await _tier(platform, "acme") is Tier.PROFESSIONAL

    forced = await client.post(
        "/admin/tenants/acme/billing/plan", json={"tier": "starter", "force": True}, headers=admin
    )
    assert forced.status_code == 200, forced.text
    assert forced.json()["tier"] == "starter"
    assert await _tier(platform, "acme") is Tier.STARTER
    async with platform.control.connection() as conn:
        cur = await conn.execute(
            "SELECT actor, outcome, details FROM platform_audit WHERE action = 'billing.plan' ORDER BY id"
        )
        rows = await cur.fetchall()
    assert [(r["actor"], r["outcome"]) for r in rows] == [(actor, "failed"), (actor, "succeeded")]
    assert rows[0]["details"]["error"] == "over_quota"
    assert rows[1]["details"]["changes"]["subscription_tier"] == ["professional", "starter"]


@pytest.mark.parametrize("role", ["tenant_admin", "user"])
async def test_tenant_identities_cannot_use_the_admin_billing_routes(
    client: Client, platform: Platform, role: str
) -> None:
    acme = await create_tenant(client, "acme")
    auth = acme.auth
    if role == "user":
        await add_user(platform, "acme", "user@acme.test", "user")
        auth = await login_as(client, "acme", "user@acme.test")
    client.headers.pop("Authorization")
    for method, path, payload in (
        ("GET", "/admin/tenants/acme/billing", None),
        ("POST", "/admin/tenants/acme/billing/plan", {"tier": "enterprise", "force": True}),
    ):
        answer = await client.request(method, path, json=payload, headers=auth)
        assert answer.status_code == 403, answer.text
    assert await _tier(platform, "acme") is Tier.PROFESSIONAL


async def test_the_app_closes_the_stripe_connections_when_it_stops(stripe_settings: Settings) -> None:
    async with open_stripe_client(stripe_settings) as client:
        acme = await create_tenant(client, "acme", tier="starter")
        portal = await client.post(acme.api("/billing/portal"), headers=acme.auth)  # Stripe through the app
        assert portal.status_code == 200, portal.text
        provider = client.app.state[BILLING_STATE_KEY].provider
        (http,) = provider._http.values()  # the SDK's HTTP client of the app's event loop
        assert not http._client_async.is_closed
    assert http._client_async.is_closed
