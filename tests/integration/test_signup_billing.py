"""Signup with billing on (``CARDVAULT_BILLING=stripe`` against the local Stripe stand-ins): a paid tier
starts on starter with a Checkout URL and is upgraded by the paid webhook; when the provider fails during
the checkout step, the signup leaves nothing behind."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.settings import Settings
from tests.integration.billing_support import open_stripe_client, post_event, tenant_state
from tests.integration.signup_support import (
    assert_nothing_left,
    bearer_of,
    onboarding_settings,
    server_objects,
    sign_up,
    signup_body,
    tenant_id_of,
)
from tests.stripe_harness import StripeStandin


async def test_a_paid_signup_starts_on_starter_and_the_paid_checkout_upgrades_it(
    stripe_settings: Settings, stripe_standin: StripeStandin
) -> None:
    async with open_stripe_client(onboarding_settings(stripe_settings)) as client:
        body = await sign_up(client, "paying-shop", tier="professional", interval="year")
        assert body["tenant"]["tier"] == "starter" and body["requested_tier"] == "professional"
        url = body["checkout_url"]
        assert isinstance(url, str) and url.startswith("http")
        auth = bearer_of(body)
        checklist = await client.get("/t/paying-shop/api/onboarding", headers=auth)
        assert checklist.json()["plan_chosen"] is False

        # The customer pays; Stripe's event arrives: the tenant is on the tier it signed up for.
        paid = await stripe_standin.complete_checkout(url.rsplit("/", 1)[1], deliver=False)
        answer, _ = await post_event(client, stripe_standin, "checkout.session.completed", paid["session"])
        assert answer.status_code == 200, answer.text
        tenant_id = await tenant_id_of(stripe_settings.database.url, "paying-shop")
        assert tenant_id is not None
        state = await tenant_state(client, tenant_id)
        assert state["tier"] == "professional" and state["subscription_status"] == "active"
        checklist = await client.get("/t/paying-shop/api/onboarding", headers=auth)
        assert checklist.json()["plan_chosen"] is True

        # A free tier needs no checkout, billing on or not.
        free = await sign_up(client, "free-shop")
        assert free["checkout_url"] is None and free["tenant"]["tier"] == "starter"


@pytest.mark.parametrize("failing", ["/v1/customers", "/v1/checkout/sessions"])
async def test_a_provider_failure_in_the_checkout_step_leaves_nothing(
    stripe_settings: Settings, stripe_standin: StripeStandin, admin_dsn: str, failing: str
) -> None:
    control = stripe_settings.database.url
    before = await server_objects(admin_dsn)
    async with open_stripe_client(onboarding_settings(stripe_settings)) as client:
        await stripe_standin.fail_next(failing, 2)  # the SDK retries once
        try:
            response = await client.post("/signup", json=signup_body("unlucky-shop", tier="enterprise"))
        finally:
            await stripe_standin.clear_failures()
        assert response.status_code == 503, response.text
        failed: dict[str, Any] = response.json()
        assert failed["error"] == "provider_unavailable"
    await assert_nothing_left(control, admin_dsn, "unlucky-shop", before)
