"""The Stripe stand-in: what ``localstripe`` lacks, from Stripe's fixtures; everything else proxied to it.

Served here (state in memory): Prices (``/v1/prices``: list by ``lookup_keys``, create, update with
``transfer_lookup_key``), Checkout Sessions, Billing Portal sessions, Billing Meters and Meter events. A new
licensed Price also becomes a localstripe Plan with the same id, amount, interval and product, so localstripe
subscriptions can use it; metered Prices (on a meter) and the metered items of subscriptions are kept here
(``items.py``: localstripe holds one item per subscription). Everything else under ``/v1`` (customers,
products, plans, subscriptions, invoices...) goes to localstripe; for ``/v1/subscriptions*`` the request's
``items[i][price]`` becomes ``items[i][plan]`` and the answer's items gain ``price`` and their period (as
real Stripe sends them), followed by the subscription's metered items.
Like Stripe, a POST with an ``Idempotency-Key`` seen before answers the first answer again.

Test hooks live under ``/_test/`` (``hooks.py``). Run: ``python -m tests.stripe_standin.server
--localstripe URL``; it prints ``PORT <n>`` once it listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import ClientSession, ClientTimeout, web

from tests.stripe_standin import forms, items, objects
from tests.stripe_standin.proxy import proxy_to_localstripe
from tests.stripe_standin.state import StandinError, State

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATE: web.AppKey[State] = web.AppKey("state", State)


def stripe_error(status: int, message: str, *, kind: str = "invalid_request_error", **extra: Any) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message, **extra}}, status=status)


async def params(request: web.Request) -> dict[str, Any]:
    """The request's parameters (query, then a form or JSON body), decoded the way Stripe reads them."""
    data = forms.decode(request.query.items())
    if request.method in ("POST", "DELETE") and request.can_read_body:
        body = await request.text()
        if request.content_type == "application/json":
            data.update(json.loads(body or "{}"))
        else:
            data.update(forms.decode(parse_qsl(body, keep_blank_values=True)))
    data.pop("expand", None)
    return data


@web.middleware
async def stripe_rules(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth, injected failures and idempotency for ``/v1``; ``StandinError`` as Stripe's error shape."""
    state = request.app[STATE]
    if not request.path.startswith("/v1/"):
        return await handler(request)
    state.log.append((request.method, request.path))
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer sk_"):
        return stripe_error(401, "Invalid API Key provided")
    if failure := state.take_failure(request.method, request.path):
        return stripe_error(failure.status, "stand-in: injected failure", kind="api_error")
    key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
    if key and (cached := state.idempotent.get(key)):
        status, body = cached
        return web.Response(
            status=status, body=body, content_type="application/json", headers={"Idempotent-Replayed": "true"}
        )
    try:
        response = await handler(request)
    except StandinError as exc:
        response = stripe_error(exc.status, exc.message, param=exc.param)
    if key and response.status < 500 and isinstance(response, web.Response) and response.body is not None:
        body = response.body if isinstance(response.body, bytes) else response.text.encode()
        state.idempotent[key] = (response.status, body)
    return response


def ok(obj: dict[str, Any]) -> web.Response:
    return web.json_response(objects.public(obj))


def listing(url: str, items: list[dict[str, Any]], limit: Any) -> web.Response:
    count = max(1, min(100, int(limit or 10)))
    data = [objects.public(item) for item in items[:count]]
    return web.json_response({"object": "list", "url": url, "has_more": len(items) > count, "data": data})


# -- prices ----------------------------------------------------------------------------------------------------


async def list_prices(request: web.Request) -> web.Response:
    query = await params(request)
    found = request.app[STATE].find_prices(
        lookup_keys=query.get("lookup_keys"),
        active=None if "active" not in query else objects.as_bool(query["active"]),
        product=query.get("product"),
    )
    return listing("/v1/prices", found, query.get("limit"))


async def create_price(request: web.Request) -> web.Response:
    return ok(await request.app[STATE].create_price(await params(request)))


async def get_price(request: web.Request) -> web.Response:
    return ok(request.app[STATE].price(request.match_info["id"]))


async def update_price(request: web.Request) -> web.Response:
    return ok(await request.app[STATE].update_price(request.match_info["id"], await params(request)))


# -- checkout, portal --------------------------------------------------------------------------------------------


async def create_checkout_session(request: web.Request) -> web.Response:
    data = await params(request)
    items.check_line_items(request.app[STATE], data.get("line_items") or [], "line_items")
    return ok(await request.app[STATE].create_checkout_session(data))


async def get_checkout_session(request: web.Request) -> web.Response:
    return ok(request.app[STATE].checkout_session(request.match_info["id"]))


async def create_portal_session(request: web.Request) -> web.Response:
    return ok(await request.app[STATE].create_portal_session(await params(request)))


# -- meters ------------------------------------------------------------------------------------------------------


async def list_meters(request: web.Request) -> web.Response:
    query = await params(request)
    meters = [m for m in request.app[STATE].meters.values() if query.get("status") in (None, m["status"])]
    return listing("/v1/billing/meters", meters[::-1], query.get("limit"))


async def create_meter(request: web.Request) -> web.Response:
    return ok(request.app[STATE].create_meter(await params(request)))


async def get_meter(request: web.Request) -> web.Response:
    return ok(request.app[STATE].meter(request.match_info["id"]))


async def update_meter(request: web.Request) -> web.Response:
    meter = request.app[STATE].meter(request.match_info["id"])
    query = await params(request)
    if "display_name" in query:
        meter["display_name"] = query["display_name"]
        meter["updated"] = int(time.time())
    return ok(meter)


async def deactivate_meter(request: web.Request) -> web.Response:
    meter = request.app[STATE].meter(request.match_info["id"])
    meter.update(status="inactive", updated=int(time.time()))
    meter["status_transitions"] = {"deactivated_at": meter["updated"]}
    return ok(meter)


async def create_meter_event(request: web.Request) -> web.Response:
    return ok(request.app[STATE].record_meter_event(await params(request)))


# -- webhooks configuration (shared with localstripe) -----------------------------------------------------------


async def config_webhook(request: web.Request) -> web.StreamResponse:
    """Register a webhook endpoint for the stand-in's events and localstripe's (``POST /_config/webhooks/{id}``)."""
    state = request.app[STATE]
    data = await params(request)
    url, secret, events = data.get("url"), data.get("secret"), data.get("events")
    if not isinstance(url, str) or not url.startswith("http") or not isinstance(secret, str) or not secret:
        return stripe_error(400, "url and secret are required")
    if events is not None and not isinstance(events, list):
        return stripe_error(400, "events must be a list")
    state.webhooks[request.match_info["id"]] = {"url": url, "secret": secret, "events": events}
    async with state.http.post(
        f"{state.localstripe}/_config/webhooks/{request.match_info['id']}",
        json={"url": url, "secret": secret, "events": events},
    ) as answer:
        return web.Response(status=answer.status)


def build_app(localstripe: str, base_url: str) -> web.Application:
    from tests.stripe_standin.hooks import add_hooks

    app = web.Application(middlewares=[stripe_rules], client_max_size=4 * 1024 * 1024)
    state = State(localstripe=localstripe, base_url=base_url)
    app[STATE] = state

    async def lifecycle(_: web.Application) -> Any:
        state.http = ClientSession(timeout=ClientTimeout(total=30))
        yield
        await state.http.close()

    app.cleanup_ctx.append(lifecycle)
    r = app.router
    r.add_get("/v1/prices", list_prices)
    r.add_post("/v1/prices", create_price)
    r.add_get("/v1/prices/{id}", get_price)
    r.add_post("/v1/prices/{id}", update_price)
    r.add_post("/v1/checkout/sessions", create_checkout_session)
    r.add_get("/v1/checkout/sessions/{id}", get_checkout_session)
    r.add_post("/v1/billing_portal/sessions", create_portal_session)
    r.add_get("/v1/billing/meters", list_meters)
    r.add_post("/v1/billing/meters", create_meter)
    r.add_get("/v1/billing/meters/{id}", get_meter)
    r.add_post("/v1/billing/meters/{id}", update_meter)
    r.add_post("/v1/billing/meters/{id}/deactivate", deactivate_meter)
    r.add_post("/v1/billing/meter_events", create_meter_event)
    r.add_post("/_config/webhooks/{id}", config_webhook)
    add_hooks(app, STATE)
    r.add_route("*", "/v1/{tail:.*}", proxy_to_localstripe(STATE))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--localstripe", required=True, help="base URL of the localstripe server")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = build_app(args.localstripe.rstrip("/"), f"http://127.0.0.1:{port}")
    print(f"PORT {port}", flush=True)
    web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=True)


if __name__ == "__main__":
    main()
