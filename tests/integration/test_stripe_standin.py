"""The local Stripe itself (tests/stripe_harness.py): what the billing tests rely on behaves like Stripe.

Driven through the real ``stripe`` SDK; webhooks are received by a small aiohttp server in the test.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import stripe
from aiohttp import web

from tests.conftest import eventually
from tests.processes import free_port
from tests.stripe_harness import StripeStandin


class Receiver:
    """Webhook endpoint on 127.0.0.1 that verifies each event with the SDK and keeps it."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.events: list[Any] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = stripe.Webhook.construct_event(body, request.headers.get("Stripe-Signature"), self.secret)
        except stripe.SignatureVerificationError:
            return web.Response(status=400)
        self.events.append(event)
        return web.Response(status=200)

    def types(self, customer: str) -> list[str]:
        return [e.type for e in self.events if e.data.object.to_dict().get("customer") == customer]


@pytest.fixture
async def receiver(stripe_standin: StripeStandin) -> AsyncIterator[Receiver]:
    found = Receiver(stripe_standin.webhook_secret)
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    found.url = f"http://127.0.0.1:{port}/hook"
    async with stripe_standin.webhook(found.url):
        yield found
    await runner.cleanup()


def sdk(standin: StripeStandin) -> stripe.StripeClient:
    return stripe.StripeClient(standin.api_key, base_addresses={"api": standin.url}, http_client=stripe.HTTPXClient())


async def price_for(client: stripe.StripeClient, amount: int) -> str:
    product = await client.v1.products.create_async({"name": f"standin-{time.monotonic_ns()}"})
    price = await client.v1.prices.create_async(
        {"product": product.id, "currency": "usd", "unit_amount": amount, "recurring": {"interval": "month"}}
    )
    return price.id


async def test_checkout_completion_subscribes_and_sends_signed_events(
    stripe_standin: StripeStandin, receiver: Receiver
) -> None:
    client = sdk(stripe_standin)
    price = await price_for(client, 2_900)
    customer = (await client.v1.customers.create_async({"email": "payer@example.com"})).id
    session = await client.v1.checkout.sessions.create_async(
        {"mode": "subscription", "customer": customer, "line_items": [{"price": price}], "success_url": "http://x/ok"}
    )
    done = await stripe_standin.complete_checkout(session.id)

    assert [d["status"] for d in done["deliveries"]] == [200]
    subscription = await client.v1.subscriptions.retrieve_async(done["subscription"]["id"])
    assert subscription.status == "active"
    assert subscription["items"].data[0].price.id == price
    assert (await client.v1.checkout.sessions.retrieve_async(session.id)).subscription == subscription.id
    # localstripe's own events come a second later, signed with the same secret.
    await eventually(lambda: "customer.subscription.created" in receiver.types(customer), "subscription.created")
    assert "checkout.session.completed" in receiver.types(customer)


async def test_renewal_failure_makes_past_due_and_payment_reinstates(stripe_standin: StripeStandin) -> None:
    client = sdk(stripe_standin)
    customer = (await client.v1.customers.create_async({"email": "late@example.com"})).id
    session = await client.v1.checkout.sessions.create_async(
        {
            "mode": "subscription",
            "customer": customer,
            "line_items": [{"price": await price_for(client, 500)}],
            "success_url": "http://x/ok",
        }
    )
    sub_id = (await stripe_standin.complete_checkout(session.id))["subscription"]["id"]

    failed = await stripe_standin.renew(sub_id, fail=True)
    assert (failed["invoice"]["status"], failed["subscription"]["status"]) == ("open", "past_due")
    assert (await client.v1.subscriptions.retrieve_async(sub_id)).status == "past_due"
    paid = await stripe_standin.renew(sub_id)
    assert (paid["invoice"]["status"], paid["subscription"]["status"]) == ("paid", "active")


async def test_meter_events_dedup_by_identifier_and_injected_failures(stripe_standin: StripeStandin) -> None:
    client = sdk(stripe_standin)
    name = f"standin_meter_{time.monotonic_ns()}"
    await client.v1.billing.meters.create_async(
        {"display_name": name, "event_name": name, "default_aggregation": {"formula": "sum"}}
    )
    customer = (await client.v1.customers.create_async({})).id
    event = {"event_name": name, "payload": {"stripe_customer_id": customer, "value": "3"}, "identifier": name}
    before = await stripe_standin.duplicate_meter_events()
    await client.v1.billing.meter_events.create_async(event)
    await client.v1.billing.meter_events.create_async(event)
    assert [e["payload"]["value"] for e in await stripe_standin.meter_events(event_name=name)] == ["3"]
    assert await stripe_standin.duplicate_meter_events() == before + 1

    await stripe_standin.fail_next("/v1/billing/meter_events", 1)
    with pytest.raises(stripe.APIError):
        await client.v1.billing.meter_events.create_async(event | {"identifier": f"{name}-2"})
    await client.v1.billing.meter_events.create_async(event | {"identifier": f"{name}-2"})
    assert len(await stripe_standin.meter_events(event_name=name)) == 2


async def test_metered_prices_and_items_follow_stripes_rules(stripe_standin: StripeStandin) -> None:
    """Metered prices need a meter; a subscription carries them as items without quantity (kept by the
    stand-in next to localstripe's one licensed item), once per price; an update adds and removes them."""
    client = sdk(stripe_standin)
    name = f"standin_metered_{time.monotonic_ns()}"
    meter = await client.v1.billing.meters.create_async(
        {"display_name": name, "event_name": name, "default_aggregation": {"formula": "sum"}}
    )
    product = (await client.v1.products.create_async({"name": name})).id
    metered_params: Any = {
        "product": product,
        "currency": "usd",
        "unit_amount_decimal": "0.01",
        "recurring": {"interval": "month", "usage_type": "metered"},
    }
    with pytest.raises(stripe.InvalidRequestError):  # no meter
        await client.v1.prices.create_async(metered_params)
    metered = await client.v1.prices.create_async(
        metered_params | {"recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}}
    )
    other = await client.v1.prices.create_async(
        metered_params | {"recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}}
    )
    licensed = await price_for(client, 2_900)
    customer = (await client.v1.customers.create_async({})).id
    checkout: Any = {"mode": "subscription", "customer": customer, "success_url": "http://x/ok"}
    with pytest.raises(stripe.InvalidRequestError, match="Quantity should not be specified"):
        await client.v1.checkout.sessions.create_async(
            checkout | {"line_items": [{"price": licensed, "quantity": 1}, {"price": metered.id, "quantity": 1}]}
        )
    session = await client.v1.checkout.sessions.create_async(
        checkout | {"line_items": [{"price": licensed, "quantity": 1}, {"price": metered.id}]}
    )
    sub_id = (await stripe_standin.complete_checkout(session.id, deliver=False))["subscription"]["id"]

    items = (await client.v1.subscriptions.retrieve_async(sub_id)).to_dict()["items"]["data"]
    assert [(i["price"]["id"], i.get("quantity")) for i in items] == [(licensed, 1), (metered.id, None)]
    assert items[1]["price"]["recurring"]["meter"] == meter.id and items[1]["current_period_end"] is not None
    with pytest.raises(stripe.InvalidRequestError, match="same price"):
        await client.v1.subscriptions.update_async(sub_id, {"items": [{"price": metered.id}]})
    updated = await client.v1.subscriptions.update_async(
        sub_id, {"items": [{"id": items[1]["id"], "deleted": True}, {"price": other.id}]}
    )
    assert [i["price"]["id"] for i in updated.to_dict()["items"]["data"]] == [licensed, other.id]
    async with httpx.AsyncClient(base_url=stripe_standin.localstripe_url) as http:
        at_localstripe = await http.get(f"/v1/subscriptions/{sub_id}", headers={"Authorization": "Bearer sk_test_x"})
    assert [i["plan"]["id"] for i in at_localstripe.json()["items"]["data"]] == [licensed]
