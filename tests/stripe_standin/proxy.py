"""Everything the stand-in does not serve goes to localstripe, translated where the two APIs differ.

localstripe speaks an older API: subscription items name a ``plan`` (no ``price``), the period sits on the
subscription (no ``items[].current_period_end``), an update takes no ``proration_behavior`` and sends no
``customer.subscription.updated`` event, and a subscription has exactly one item. The proxy bridges these so
the SDK sees today's shapes (metered items are kept by the stand-in: ``items.py``), and sends that event
itself to the registered webhook endpoints after a subscription update.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from tests.stripe_standin import forms, items, objects
from tests.stripe_standin.state import StandinError, State

_SUBSCRIPTIONS = re.compile(r"^/v1/(customers/[^/]+/)?subscriptions(/(?P<id>[^/]+))?$")
_ITEM_PRICE = re.compile(r"^items\[(\d+)\]\[price\]$")
#: What localstripe refuses on subscriptions (it does not know these parameters or values).
_DROP = {"proration_behavior", "payment_behavior", "off_session", "collection_method", "automatic_tax[enabled]"}
_background: set[asyncio.Task[Any]] = set()


def rewrite_subscription_form(body: str) -> str:
    """``items[i][price]`` -> ``items[i][plan]``; parameters localstripe does not know are left out."""
    pairs = []
    for key, value in parse_qsl(body, keep_blank_values=True):
        if key in _DROP:
            continue
        if match := _ITEM_PRICE.match(key):
            key = f"items[{match.group(1)}][plan]"
        pairs.append((key, value))
    return urlencode(pairs)


def enrich_subscription(state: State, sub: dict[str, Any]) -> dict[str, Any]:
    """Give each item its ``price`` (the stand-in's Price of the item's plan) and its period, as Stripe does,
    and add the subscription's metered items (kept by the stand-in)."""
    found = sub.get("items")
    for item in found.get("data", []) if isinstance(found, dict) else []:
        plan = item.get("plan")
        if isinstance(plan, dict) and "price" not in item:
            item["price"] = objects.public(state.prices[plan["id"]]) if plan["id"] in state.prices else None
        item.setdefault("current_period_start", sub.get("current_period_start"))
        item.setdefault("current_period_end", sub.get("current_period_end"))
    return items.attach(state, sub)


def split_metered(state: State, subscription_id: str | None, body: str) -> tuple[str, list[dict[str, Any]]]:
    """A subscription create/update body without its metered items (for localstripe), and those items'
    changes (for ``items.apply`` once localstripe has accepted the rest)."""
    data = forms.decode(parse_qsl(body, keep_blank_values=True))
    if not isinstance(data.get("items"), list):
        return body, []
    local, metered = items.split(state, subscription_id, data["items"])
    if not metered:
        return body, []
    if local:
        data["items"] = local
    else:
        del data["items"]
    return forms.encode(data), metered


def _enrich_body(state: State, found: Any) -> Any:
    if isinstance(found, dict) and found.get("object") == "subscription":
        return enrich_subscription(state, found)
    if isinstance(found, dict) and found.get("object") == "list":
        for entry in found.get("data", []):
            _enrich_body(state, entry)
    return found


def proxy_to_localstripe(key: web.AppKey[State]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        state = request.app[key]
        body = await request.text() if request.can_read_body else ""
        subscription = _SUBSCRIPTIONS.match(request.path)
        metered: list[dict[str, Any]] = []
        if subscription and body:
            try:
                body, metered = split_metered(state, subscription.group("id"), body)
            except StandinError as exc:
                error = {"type": "invalid_request_error", "message": exc.message, "param": exc.param}
                return web.json_response({"error": error}, status=exc.status)
            body = rewrite_subscription_form(body)
        headers = {
            name: value for name, value in request.headers.items() if name.lower() in ("authorization", "content-type")
        }
        url = f"{state.localstripe}{request.path_qs}"
        method = request.method
        if subscription and subscription.group("id") and method == "POST" and not body:
            method = "GET"  # only metered items changed (or nothing localstripe knows): it refuses an empty update
        async with state.http.request(method, url, data=body.encode(), headers=headers) as answer:
            status, raw = answer.status, await answer.read()
        if subscription and status < 400:
            found = json.loads(raw)
            if metered and isinstance(found, dict) and found.get("object") == "subscription":
                items.apply(state, found["id"], metered)
            found = _enrich_body(state, found)
            raw = json.dumps(found).encode()
            if request.method == "POST" and subscription.group("id"):
                event = objects.event("customer.subscription.updated", found)
                task = asyncio.create_task(state.deliver(event))
                _background.add(task)
                task.add_done_callback(_background.discard)
        return web.Response(status=status, body=raw, content_type="application/json")

    return handle
