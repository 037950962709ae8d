"""Plans through the tenant billing API with Stripe on: checkout, portal, plan changes, the usage check,
a super-admin's force, and Stripe being unreachable.

Proven here: the first paid plan goes through a Checkout Session for a customer made once per tenant
(metadata: tenant id and slug); a second checkout while subscribed is 409 ``already_subscribed``; the
portal answers its URL; a plan change moves the Stripe subscription to the new price (prorated) and the
tier at once; a downgrade below what the tenant uses is 409 ``over_quota`` with exactly what exceeds and
changes nothing at Stripe or here, and a super-admin's ``force`` goes through; when Stripe cannot be
reached the routes answer 503 ``provider_unavailable`` and neither the registry, the billing record nor
the tenant's audit log changed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from controlplane.registry.models import TIER_QUOTAS, QuotaType, Tier
from controlplane.settings import Settings
from tests.integration.auth_support import add_user, audit_rows, create_tenant, tenant_rows
from tests.integration.billing_support import Billed, open_billed
from tests.stripe_harness import StripeStandin


@pytest.fixture
async def billed(stripe_settings: Settings, stripe_standin: StripeStandin) -> AsyncIterator[Billed]:
    async with open_billed(stripe_settings, stripe_standin) as opened:
        yield opened


async def _stripe_price(billed: Billed, subscription_id: str) -> str | None:
    state = await billed.provider.subscription(subscription_id)
    assert state is not None
    return state.price_id


async def test_checkout_then_portal_for_one_customer_per_tenant(billed: Billed) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    free = await billed.client.post(acme.api("/billing/checkout"), json={"tier": "starter"}, headers=acme.auth)
    assert (free.status_code, free.json()["error"]) == (400, "invalid_tier")
    first = await billed.checkout(acme, "professional", "year")
    second = await billed.checkout(acme, "professional", "year")  # abandoned the first: a new session, same customer
    assert first != second
    state = await billed.tenant_state(acme.id)
    customer = await billed.provider.client.v1.customers.retrieve_async(state["customer_id"])
    assert customer.metadata.to_dict() == {"tenant_id": str(acme.id), "slug": "acme"}

    paid = await billed.standin.complete_checkout(second, deliver=False)
    answer, _ = await billed.post_event("checkout.session.completed", paid["session"])
    assert answer.status_code == 200
    assert await _stripe_price(billed, paid["subscription"]["id"]) == await billed.price(Tier.PROFESSIONAL, "year")
    shown = (await billed.client.get(acme.api("/billing"), headers=acme.auth)).json()
    assert (shown["tier"], shown["interval"], shown["subscription_status"]) == ("professional", "year", "active")
    assert shown["current_period_end"] is not None and shown["has_customer"] is True

    again = await billed.client.post(acme.api("/billing/checkout"), json={"tier": "enterprise"}, headers=acme.auth)
    assert (again.status_code, again.json()["error"]) == (409, "already_subscribed")
    portal = await billed.client.post(acme.api("/billing/portal"), headers=acme.auth)
    assert portal.status_code == 200 and portal.json()["url"].startswith(billed.standin.url), portal.text
    assert (await billed.tenant_state(acme.id))["customer_id"] == state["customer_id"]
    logged = [r["action"] for r in await audit_rows(billed.platform, "acme") if r["action"].startswith("billing.")]
    assert logged == ["billing.checkout", "billing.checkout", "billing.portal"]


async def test_a_plan_change_moves_the_subscription_and_the_tier_at_once(billed: Billed) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    subscription = await billed.subscribe(acme, "professional")
    before = await billed.client.post(acme.api("/billing/checkout"), json={"tier": "enterprise"}, headers=acme.auth)
    assert before.status_code == 409
    changed = await billed.client.post(acme.api("/billing/plan"), json={"tier": "enterprise"}, headers=acme.auth)
    assert changed.status_code == 200, changed.text
    assert (changed.json()["tier"], changed.json()["subscription_status"]) == ("enterprise", "active")
    assert await _stripe_price(billed, subscription["id"]) == await billed.price(Tier.ENTERPRISE)
    state = await billed.tenant_state(acme.id)
    assert (state["tier"], state["price_id"]) == ("enterprise", await billed.price(Tier.ENTERPRISE))
    quotas = await billed.rows(
        "SELECT quota_limit FROM tenant_quotas WHERE tenant_id = %s AND quota_type = 'cards'", (acme.id,)
    )
    assert quotas == [{"quota_limit": TIER_QUOTAS[Tier.ENTERPRISE][QuotaType.CARDS]}]
    (logged,) = [r for r in await audit_rows(billed.platform, "acme", "billing.plan")]
    assert logged["details"]["from"] == "professional" and logged["details"]["tier"] == "enterprise"
    # A plan for a tenant without a subscription: start with a checkout.
    other = await create_tenant(billed.client, "other", tier="starter")
    none = await billed.client.post(other.api("/billing/plan"), json={"tier": "enterprise"}, headers=other.auth)
    assert (none.status_code, none.json()["error"]) == (409, "no_subscription")


async def test_a_downgrade_below_usage_is_refused_until_a_super_admin_forces_it(billed: Billed) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    subscription = await billed.subscribe(acme, "professional")
    starter = TIER_QUOTAS[Tier.STARTER]
    cards = starter[QuotaType.CARDS]
    assert cards is not None
    await tenant_rows(
        billed.platform,
        "acme",
        "INSERT INTO cards (cardnumber) SELECT 'C-' || g FROM generate_series(1, %s) g",
        (cards + 5,),
    )
    await add_user(billed.platform, "acme", "second@acme.test", "user")
    before = await billed.tenant_state(acme.id)

    refused = await billed.client.post(acme.api("/billing/plan"), json={"tier": "starter"}, headers=acme.auth)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "over_quota"
    assert refused.json()["exceeds"] == [
        {"quota": "users", "usage": 2, "limit": starter[QuotaType.USERS]},
        {"quota": "cards", "usage": cards + 5, "limit": cards},
    ]
    assert await billed.tenant_state(acme.id) == before
    assert await _stripe_price(billed, subscription["id"]) == await billed.price(Tier.PROFESSIONAL)
    # A super-admin may force it (the automation token here).
    forced = await billed.client.post("/admin/tenants/acme/billing/plan", json={"tier": "starter", "force": True})
    assert forced.status_code == 200, forced.text
    assert await _stripe_price(billed, subscription["id"]) == await billed.price(Tier.STARTER)
    state = await billed.tenant_state(acme.id)
    assert (state["tier"], state["subscription_status"]) == ("starter", "active")
    (cards_left,) = await tenant_rows(billed.platform, "acme", "SELECT count(*) AS n FROM cards")
    assert cards_left["n"] == cards + 5  # the data is kept; the quota refuses new cards
    refused_card = await billed.client.post(acme.api("/cards"), json={"cardnumber": "X"}, headers=acme.auth)
    assert (refused_card.status_code, refused_card.json()["error"]) == (403, "quota_exceeded")


async def test_stripe_unreachable_is_503_and_changes_nothing(billed: Billed) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    subscription = await billed.subscribe(acme, "professional")
    before = await billed.tenant_state(acme.id)
    await billed.standin.fail_next(f"/v1/subscriptions/{subscription['id']}", 2, method="POST")
    failed = await billed.client.post(acme.api("/billing/plan"), json={"tier": "enterprise"}, headers=acme.auth)
    assert (failed.status_code, failed.json()["error"]) == (503, "provider_unavailable"), failed.text
    assert await billed.tenant_state(acme.id) == before
    assert await _stripe_price(billed, subscription["id"]) == await billed.price(Tier.PROFESSIONAL)
    assert await audit_rows(billed.platform, "acme", "billing.plan") == []

    other = await create_tenant(billed.client, "other", tier="starter")
    await billed.standin.fail_next("/v1/customers", 2, method="POST")
    failed = await billed.client.post(other.api("/billing/checkout"), json={"tier": "professional"}, headers=other.auth)
    assert (failed.status_code, failed.json()["error"]) == (503, "provider_unavailable"), failed.text
    assert await billed.rows("SELECT * FROM tenant_billing WHERE tenant_id = %s", (other.id,)) == []
    assert await audit_rows(billed.platform, "other", "billing.checkout") == []
    assert (await billed.tenant_state(other.id))["tier"] == "starter"
