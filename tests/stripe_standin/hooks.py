"""Test hooks of the stand-in (``/_test/...``, JSON in and out): what a customer or Stripe would do.

- ``POST /_test/checkout/{session}/complete`` ``{"card"?, "deliver"?}``: the customer pays: a card is attached,
  the subscription is created in localstripe for the session's customer and licensed price (its metered
  prices become the stand-in's metered items of it), the session completes and a signed
  ``checkout.session.completed`` goes to the registered endpoints -> ``{session, subscription, deliveries}``.
- ``POST /_test/subscriptions/{sub}/renew`` ``{"fail"?, "deliver"?}``: a renewal invoice is charged (a failing
  card with ``fail``): localstripe moves the subscription to ``past_due`` / back to ``active``; the stand-in
  sends ``invoice.payment_failed`` / ``invoice.paid`` and ``customer.subscription.updated``.
- ``GET /_test/meter_events[?event_name=&customer=]`` -> ``{data: [...], duplicates: n}``.
- ``POST /_test/fail`` ``{path, count, status?, method?}``: the next ``count`` requests to ``path`` fail;
  ``DELETE /_test/fail`` forgets every pending failure.
- ``POST /_test/events`` ``{type, object? | fixture?, overrides?, url?, secret?, timestamp?, created?}``: a signed
  event to ``url`` (or every registered endpoint) -> ``{event, deliveries}``.
- ``GET /_test/requests[?path=]`` -> ``{data: [[method, path], ...]}``: the ``/v1`` requests received.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.stripe_standin import items, objects
from tests.stripe_standin.proxy import enrich_subscription
from tests.stripe_standin.state import Failure, StandinError, State

OK_CARD = "4242424242424242"
#: Attaches fine, every charge is declined (localstripe's test number).
FAILING_CARD = "4000000000000341"


def _card(number: str) -> dict[str, Any]:
    return {"object": "card", "number": number, "exp_month": 12, "exp_year": 2040, "cvc": "123"}


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    found = await request.json()
    if not isinstance(found, dict):
        raise StandinError(400, "a JSON object is expected")
    return found


async def _use_card(state: State, customer: str, number: str) -> None:
    card = await state.localstripe_call("POST", f"/v1/customers/{customer}/sources", {"source": _card(number)})
    await state.localstripe_call("POST", f"/v1/customers/{customer}", {"default_source": card["id"]})


async def complete_checkout(request: web.Request, state: State) -> dict[str, Any]:
    body = await _body(request)
    session = state.checkout_session(request.match_info["id"])
    if session["status"] != "open" or session["mode"] != "subscription":
        raise StandinError(400, f"session is {session['status']} in {session['mode']} mode; needs open subscription")
    customer = session["customer"]
    if customer is None:
        created = await state.localstripe_call("POST", "/v1/customers", {"email": session["customer_email"]})
        customer = created["id"]
    lines = session["_line_items"]
    licensed = [line for line in lines if not items.is_metered(state.prices.get(line["price"]))]
    if len(licensed) != 1:
        raise StandinError(400, "the stand-in subscribes to exactly one licensed price (localstripe's limit)")
    await _use_card(state, customer, body.get("card", OK_CARD))
    metadata = session["_subscription_data"].get("metadata") or {}
    found = await state.localstripe_call(
        "POST",
        "/v1/subscriptions",
        {
            "customer": customer,
            "items": [{"plan": licensed[0]["price"], "quantity": licensed[0].get("quantity", 1)}],
            "metadata": metadata,
        },
    )
    items.apply(state, found["id"], [line for line in lines if line not in licensed])
    subscription = enrich_subscription(state, found)
    session.update(customer=customer, status="complete", payment_status="paid", subscription=subscription["id"])
    deliveries = []
    if body.get("deliver", True):
        deliveries = await state.deliver(objects.event("checkout.session.completed", objects.public(session)))
    return {"session": objects.public(session), "subscription": subscription, "deliveries": deliveries}


async def renew(request: web.Request, state: State) -> dict[str, Any]:
    body = await _body(request)
    sub_id = request.match_info["id"]
    subscription = await state.localstripe_call("GET", f"/v1/subscriptions/{sub_id}")
    await _use_card(state, subscription["customer"], FAILING_CARD if body.get("fail") else OK_CARD)
    renewed = await state.localstripe_call("POST", f"/_standin/subscriptions/{sub_id}/renew")
    invoice, subscription = renewed["invoice"], enrich_subscription(state, renewed["subscription"])
    deliveries = []
    if body.get("deliver", True):
        kind = "invoice.paid" if invoice["status"] == "paid" else "invoice.payment_failed"
        deliveries += await state.deliver(objects.event(kind, invoice))
        deliveries += await state.deliver(objects.event("customer.subscription.updated", subscription))
    return {"invoice": invoice, "subscription": subscription, "deliveries": deliveries}


async def meter_events(request: web.Request, state: State) -> dict[str, Any]:
    name, customer = request.query.get("event_name"), request.query.get("customer")
    found = [
        event
        for event in state.meter_events
        if name in (None, event["event_name"]) and customer in (None, event["payload"].get("stripe_customer_id"))
    ]
    return {"data": found, "duplicates": state.duplicate_meter_events}


async def fail(request: web.Request, state: State) -> dict[str, Any]:
    if request.method == "DELETE":
        state.failures.clear()
        return {"failures": []}
    body = await _body(request)
    if not isinstance(body.get("path"), str) or not isinstance(body.get("count"), int):
        raise StandinError(400, "path (string) and count (integer) are required")
    failure = Failure(
        path=body["path"], count=body["count"], status=int(body.get("status", 500)), method=body.get("method")
    )
    state.failures.append(failure)
    return {"failures": [vars(f) for f in state.failures if f.count > 0]}


async def send_event(request: web.Request, state: State) -> dict[str, Any]:
    body = await _body(request)
    if not isinstance(body.get("type"), str):
        raise StandinError(400, "type is required")
    obj = body.get("object") or objects.fixture(body.get("fixture") or body["type"].rsplit(".", 1)[0])
    obj.update(body.get("overrides") or {})
    event = objects.event(body["type"], obj, created=body.get("created"))
    deliveries = await state.deliver(
        event, url=body.get("url"), secret=body.get("secret"), timestamp=body.get("timestamp")
    )
    return {"event": event, "deliveries": deliveries}


async def requests_seen(request: web.Request, state: State) -> dict[str, Any]:
    path = request.query.get("path")
    return {"data": [entry for entry in state.log if path in (None, entry[1])]}


def add_hooks(app: web.Application, key: web.AppKey[State]) -> None:
    def route(func: Any) -> Any:
        async def handle(request: web.Request) -> web.Response:
            try:
                return web.json_response(await func(request, request.app[key]))
            except StandinError as exc:
                return web.json_response({"error": exc.message}, status=exc.status)

        return handle

    app.router.add_post("/_test/checkout/{id}/complete", route(complete_checkout))
    app.router.add_post("/_test/subscriptions/{id}/renew", route(renew))
    app.router.add_get("/_test/meter_events", route(meter_events))
    app.router.add_post("/_test/fail", route(fail))
    app.router.add_delete("/_test/fail", route(fail))
    app.router.add_post("/_test/events", route(send_event))
    app.router.add_get("/_test/requests", route(requests_seen))
