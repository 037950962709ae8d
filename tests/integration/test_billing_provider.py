"""``StripeProvider`` against the local Stripe (localstripe + the stand-in), through the real ``stripe`` SDK.

Each test makes its own customers; the catalogue comes from one ``sync_catalog`` per module (prices are
shared by the session's stand-in and found again by lookup key).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import pytest
import stripe

from controlplane.billing.provider import CatalogPrice, ProviderCatalog, SubscriptionState
from controlplane.billing.providers import provider_for
from controlplane.billing.stripe_provider import StripeProvider
from controlplane.errors import InvalidSignature, ProviderUnavailable
from controlplane.registry.models import Overage, Tier
from controlplane.settings import BillingSettings
from tests.processes import free_port
from tests.stripe_harness import StripeStandin, stripe_billing


@pytest.fixture
def provider(stripe_standin: StripeStandin) -> StripeProvider:
    return StripeProvider(stripe_billing(stripe_standin))


@pytest.fixture
async def synced(provider: StripeProvider) -> ProviderCatalog:
    return await provider.sync_catalog()


@pytest.fixture
def prices(synced: ProviderCatalog) -> dict[tuple[Tier, str], CatalogPrice]:
    return {(p.tier, p.interval): p for p in synced.prices}


@pytest.fixture
def overage(synced: ProviderCatalog) -> list[str]:
    """The metered overage prices every paid subscription carries."""
    return [p.price_id for p in synced.overage_prices]


def sdk(standin: StripeStandin) -> stripe.StripeClient:
    return stripe.StripeClient(standin.api_key, base_addresses={"api": standin.url}, http_client=stripe.HTTPXClient())


async def new_customer(provider: StripeProvider) -> str:
    tenant = str(uuid.uuid4())
    return await provider.ensure_customer(tenant_id=tenant, slug=f"t-{tenant[:8]}", name="Acme", email="a@example.com")


async def subscribe(
    standin: StripeStandin, provider: StripeProvider, customer: str, price: str, overage: list[str]
) -> SubscriptionState:
    url = await provider.checkout_url(
        customer_id=customer,
        price_id=price,
        overage_price_ids=overage,
        tenant_id="t",
        success_url="http://x/ok",
        cancel_url="http://x/no",
    )
    done = await standin.complete_checkout(url.rsplit("/", 1)[1], deliver=False)
    state = await provider.subscription(done["subscription"]["id"])
    assert state is not None
    return state


def test_provider_for_follows_the_setting(stripe_standin: StripeStandin) -> None:
    assert provider_for(BillingSettings()) is None
    assert isinstance(provider_for(stripe_billing(stripe_standin)), StripeProvider)


async def test_customer_is_made_once_per_tenant_with_its_metadata(
    provider: StripeProvider, stripe_standin: StripeStandin
) -> None:
    tenant = str(uuid.uuid4())
    first = await provider.ensure_customer(tenant_id=tenant, slug="acme", name="Acme Cards", email="boss@acme.test")
    await provider.aclose()  # a closed provider reconnects when used again
    again = await provider.ensure_customer(tenant_id=tenant, slug="acme", name="Acme Cards", email="boss@acme.test")
    other = await provider.ensure_customer(tenant_id=str(uuid.uuid4()), slug="beta", name="Beta", email=None)

    assert first == again != other
    customer = await sdk(stripe_standin).v1.customers.retrieve_async(first)
    assert customer.metadata.to_dict() == {"tenant_id": tenant, "slug": "acme"}
    assert (customer.name, customer.email) == ("Acme Cards", "boss@acme.test")
    assert await provider.customer_email(first) == "boss@acme.test"
    assert await provider.customer_email(other) is None
    assert await provider.customer_email("cus_doesnotexist") is None


async def test_checkout_and_portal_urls_for_a_real_customer(
    provider: StripeProvider, stripe_standin: StripeStandin, prices: dict[tuple[Tier, str], CatalogPrice]
) -> None:
    customer = await new_customer(provider)
    price = prices[Tier.PROFESSIONAL, "month"].price_id
    url = await provider.checkout_url(
        customer_id=customer,
        price_id=price,
        overage_price_ids=[],
        tenant_id="tenant-1",
        success_url="http://x/ok",
        cancel_url="http://x/no",
    )
    assert url.startswith(f"{stripe_standin.url}/checkout/cs_test_")
    session = await sdk(stripe_standin).v1.checkout.sessions.retrieve_async(url.rsplit("/", 1)[1])
    assert (session.mode, session.customer, session.client_reference_id) == ("subscription", customer, "tenant-1")
    assert (session.success_url, session.cancel_url) == ("http://x/ok", "http://x/no")

    portal = await provider.portal_url(customer_id=customer, return_url="http://x/back")
    assert portal.startswith(f"{stripe_standin.url}/portal/bps_")

    with pytest.raises(ProviderUnavailable):  # Stripe refuses an unknown customer
        await provider.portal_url(customer_id="cus_nobody", return_url="http://x/back")


async def test_completed_checkout_is_the_current_subscription(
    provider: StripeProvider,
    stripe_standin: StripeStandin,
    prices: dict[tuple[Tier, str], CatalogPrice],
    overage: list[str],
) -> None:
    customer = await new_customer(provider)
    assert await provider.current_subscription(customer) is None
    price = prices[Tier.ENTERPRISE, "year"].price_id
    state = await subscribe(stripe_standin, provider, customer, price, overage)

    assert (state.customer_id, state.status, state.price_id) == (customer, "active", price)
    assert state.item_id is not None and state.current_period_end is not None
    # The yearly plan carries the monthly overage prices (flexible billing mode), one item each.
    assert sorted(state.overage_items.values()) == sorted(overage) and state.item_id not in state.overage_items
    assert state.current_period_end > datetime.now(UTC)
    assert await provider.current_subscription(customer) == state
    assert await provider.subscription("sub_doesnotexist") is None


async def test_change_price_moves_the_plan_and_keeps_the_overage_items(
    provider: StripeProvider,
    stripe_standin: StripeStandin,
    prices: dict[tuple[Tier, str], CatalogPrice],
    overage: list[str],
) -> None:
    customer = await new_customer(provider)
    state = await subscribe(stripe_standin, provider, customer, prices[Tier.PROFESSIONAL, "month"].price_id, overage)
    enterprise = prices[Tier.ENTERPRISE, "month"].price_id

    changed = await provider.change_price(state, enterprise, overage)

    assert (changed.id, changed.price_id, changed.status) == (state.id, enterprise, "active")
    assert changed.overage_items == state.overage_items  # the same items: usage so far stays on them
    at_stripe = (await sdk(stripe_standin).v1.subscriptions.retrieve_async(state.id)).to_dict()
    assert [item["plan"]["id"] for item in at_stripe["items"]["data"]] == [enterprise, *state.overage_items.values()]
    assert await provider.subscription(state.id) == changed


async def test_change_price_adds_missing_overage_items_and_replaces_others(
    provider: StripeProvider,
    stripe_standin: StripeStandin,
    prices: dict[tuple[Tier, str], CatalogPrice],
    overage: list[str],
) -> None:
    customer = await new_customer(provider)
    professional = prices[Tier.PROFESSIONAL, "month"].price_id
    older = await subscribe(stripe_standin, provider, customer, professional, overage[:1])  # before the others
    assert list(older.overage_items.values()) == overage[:1]

    same_plan = await provider.change_price(older, professional, overage[1:])

    assert same_plan.price_id == professional and same_plan.item_id == older.item_id
    assert sorted(same_plan.overage_items.values()) == sorted(overage[1:])  # the first one is not wanted now
    assert not set(same_plan.overage_items) & set(older.overage_items)


async def test_current_subscription_prefers_the_live_one(
    provider: StripeProvider,
    stripe_standin: StripeStandin,
    prices: dict[tuple[Tier, str], CatalogPrice],
    overage: list[str],
) -> None:
    customer = await new_customer(provider)
    first = await subscribe(stripe_standin, provider, customer, prices[Tier.PROFESSIONAL, "month"].price_id, overage)
    second = await subscribe(stripe_standin, provider, customer, prices[Tier.ENTERPRISE, "month"].price_id, overage)
    client = sdk(stripe_standin)
    await client.v1.subscriptions.cancel_async(second.id)
    current = await provider.current_subscription(customer)
    assert current is not None and (current.id, current.status) == (first.id, "active")

    await client.v1.subscriptions.cancel_async(first.id)
    ended = await provider.current_subscription(customer)
    assert ended is not None and ended.status == "canceled"


async def test_verify_event_accepts_only_a_fresh_correct_signature(
    provider: StripeProvider, stripe_standin: StripeStandin
) -> None:
    event = stripe_standin.event("customer.subscription.updated", {"id": "sub_1", "object": "subscription"})
    body, headers = stripe_standin.signed(event)

    verified = provider.verify_event(body, headers["Stripe-Signature"])
    assert (verified.id, verified.type, verified.object["id"]) == (event["id"], event["type"], "sub_1")
    assert verified.created == datetime.fromtimestamp(event["created"], UTC) and verified.payload == event

    forged = stripe_standin.sign(body, secret="whsec_someone_else")
    stale = stripe_standin.sign(body, timestamp=int(time.time()) - stripe.Webhook.DEFAULT_TOLERANCE - 60)
    tampered = json.dumps(event | {"type": "invoice.paid"}).encode()
    for payload, signature in [
        (body, forged),
        (body, None),
        (body, ""),
        (body, stale),
        (tampered, headers["Stripe-Signature"]),
    ]:
        with pytest.raises(InvalidSignature):
            provider.verify_event(payload, signature)

    for junk in (b"not json", b'{"id": "evt_1"}', b"\xff\xfe"):
        with pytest.raises(InvalidSignature):
            provider.verify_event(junk, stripe_standin.sign(junk.decode("utf-8", "replace")))


async def test_usage_reports_reach_the_meter_once_per_identifier(
    provider: StripeProvider, stripe_standin: StripeStandin
) -> None:
    meters = (await provider.sync_catalog()).meters
    cards = next(m for m in meters if m.meter is Overage.CARDS)
    customer = await new_customer(provider)
    identifier = f"{customer}:cards:2026-12-01"
    now = datetime.now(UTC)
    for _ in range(2):
        await provider.report_usage(
            event_name=cards.event_name, customer_id=customer, quantity=42, identifier=identifier, timestamp=now
        )

    received = await stripe_standin.meter_events(customer=customer)
    assert [(e["identifier"], e["event_name"], e["payload"]["value"]) for e in received] == [
        (identifier, "cardvault_cards", "42")
    ]
    assert received[0]["timestamp"] == int(now.timestamp())

    await stripe_standin.fail_next("/v1/billing/meter_events", 2)  # the first try and the SDK's one retry
    with pytest.raises(ProviderUnavailable):
        await provider.report_usage(
            event_name=cards.event_name, customer_id=customer, quantity=1, identifier=f"{identifier}+1", timestamp=now
        )
    assert len(await stripe_standin.meter_events(customer=customer)) == 1


async def test_unreachable_stripe_is_provider_unavailable(stripe_standin: StripeStandin) -> None:
    nowhere = StripeProvider(
        stripe_billing(stripe_standin, stripe_api_base=f"http://127.0.0.1:{free_port()}"), retries=0, timeout=2
    )
    with pytest.raises(ProviderUnavailable) as raised:
        await nowhere.ensure_customer(tenant_id=str(uuid.uuid4()), slug="x", name="X", email=None)
    assert raised.value.status == 503 and raised.value.code == "provider_unavailable"
