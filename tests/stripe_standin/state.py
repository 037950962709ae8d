"""The stand-in's memory: prices, sessions, meters, meter events, webhooks, injected failures, idempotency."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import aiohttp
from aiohttp import ClientSession

from tests.stripe_standin import forms, objects

#: Stripe refuses meter events older than this or further in the future than ``_FUTURE``.
_PAST = 35 * 86400
_FUTURE = 300


class StandinError(Exception):
    """A Stripe-shaped API error (``{"error": {"type", "message", "param"}}``)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


@dataclasses.dataclass
class Failure:
    """The next ``count`` requests to ``path`` (and below it; ``method`` if set) answer ``status``."""

    path: str
    count: int
    status: int = 500
    method: str | None = None

    def matches(self, method: str, path: str) -> bool:
        base = self.path.rstrip("/")
        return (self.method in (None, method)) and (path == base or path.startswith(base + "/"))


@dataclasses.dataclass
class State:
    localstripe: str
    base_url: str
    http: ClientSession = dataclasses.field(init=False)
    prices: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    portal_sessions: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    meters: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    meter_events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: The metered items of each subscription (``items.py``: localstripe holds one item per subscription).
    sub_items: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    duplicate_meter_events: int = 0
    webhooks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    failures: list[Failure] = dataclasses.field(default_factory=list)
    idempotent: dict[str, tuple[int, bytes]] = dataclasses.field(default_factory=dict)
    log: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    # -- localstripe ------------------------------------------------------------------------------------------

    async def localstripe_call(self, method: str, path: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call localstripe's API (as the test secret key); its error becomes a ``StandinError``."""
        headers = {"Authorization": "Bearer sk_test_standin", "Content-Type": "application/x-www-form-urlencoded"}
        body = forms.encode(data or {})
        async with self.http.request(method, f"{self.localstripe}{path}", data=body, headers=headers) as answer:
            text = await answer.text()
            found: dict[str, Any] = json.loads(text) if text else {}
            if answer.status >= 400:
                message = found.get("error", {}).get("message", text) if isinstance(found, dict) else text
                raise StandinError(answer.status, f"localstripe: {message}")
            return found

    async def _require_customer(self, customer: Any) -> None:
        if not isinstance(customer, str) or not customer.startswith("cus_"):
            raise StandinError(400, "Invalid customer", "customer")
        try:
            await self.localstripe_call("GET", f"/v1/customers/{customer}")
        except StandinError:
            raise StandinError(400, f"No such customer: '{customer}'", "customer") from None

    # -- webhooks ---------------------------------------------------------------------------------------------

    async def deliver(
        self, event: dict[str, Any], *, url: str | None = None, secret: str | None = None, timestamp: int | None = None
    ) -> list[dict[str, Any]]:
        """Post ``event`` signed like Stripe to ``url`` (with ``secret``), or to every registered endpoint
        that wants its type; the answers as ``[{url, status, body}]`` (status 0: unreachable)."""
        if url is not None:
            targets = [{"url": url, "secret": secret or ""}]
        else:
            targets = [
                hook for hook in self.webhooks.values() if hook["events"] is None or event["type"] in hook["events"]
            ]
        payload = json.dumps(event, indent=2)
        results = []
        for target in targets:
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": objects.sign(payload, target["secret"], timestamp=timestamp),
            }
            try:
                async with self.http.post(target["url"], data=payload.encode(), headers=headers) as answer:
                    results.append({"url": target["url"], "status": answer.status, "body": await answer.text()})
            except (OSError, TimeoutError, aiohttp.ClientError) as exc:
                results.append({"url": target["url"], "status": 0, "body": repr(exc)})
        return results

    # -- failures ---------------------------------------------------------------------------------------------

    def take_failure(self, method: str, path: str) -> Failure | None:
        for failure in self.failures:
            if failure.count > 0 and failure.matches(method, path):
                failure.count -= 1
                return failure
        return None

    # -- prices -----------------------------------------------------------------------------------------------

    def price(self, price_id: str) -> dict[str, Any]:
        if price_id not in self.prices:
            raise StandinError(404, f"No such price: '{price_id}'", "id")
        return self.prices[price_id]

    def find_prices(
        self, *, lookup_keys: Any = None, active: bool | None = None, product: Any = None
    ) -> list[dict[str, Any]]:
        found = list(self.prices.values())[::-1]  # newest first, as Stripe lists
        if lookup_keys is not None:
            keys = lookup_keys if isinstance(lookup_keys, list) else [lookup_keys]
            found = [p for p in found if p["lookup_key"] in keys]
        if active is not None:
            found = [p for p in found if p["active"] == active]
        if product is not None:
            found = [p for p in found if p["product"] == product]
        return found

    def _take_lookup_key(self, key: str | None, transfer: bool, keep: str | None = None) -> None:
        if key is None:
            return
        for other in self.prices.values():
            if other["lookup_key"] == key and other["id"] != keep:
                if not transfer:
                    raise StandinError(400, f"A price with lookup_key '{key}' already exists", "lookup_key")
                other["lookup_key"] = None

    async def create_price(self, data: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(data.get("product"), str):
            raise StandinError(400, "Missing required param: product.", "product")
        if "currency" not in data:
            raise StandinError(400, "Missing required param: currency.", "currency")
        if data.get("unit_amount") is None and data.get("unit_amount_decimal") is None:
            raise StandinError(400, "Missing required param: unit_amount.", "unit_amount")
        if data.get("unit_amount") is not None and data.get("unit_amount_decimal") is not None:
            raise StandinError(400, "You may only specify one of unit_amount and unit_amount_decimal.", "unit_amount")
        asked = data.get("recurring") or {}
        if asked.get("usage_type") == "metered":
            # Since API 2025-03-31 a metered price is billed from a Billing Meter's events.
            meter = self.meters.get(asked.get("meter") or "")
            if meter is None or meter["status"] != "active":
                raise StandinError(400, "A metered price needs an active meter (recurring[meter]).", "recurring[meter]")
        try:
            await self.localstripe_call("GET", f"/v1/products/{data['product']}")
        except StandinError:
            raise StandinError(400, f"No such product: '{data['product']}'", "product") from None
        transfer = objects.as_bool(data.get("transfer_lookup_key", False))
        self._take_lookup_key(data.get("lookup_key"), transfer)
        price = objects.price(data)
        recurring = price["recurring"]
        if recurring and recurring["usage_type"] == "licensed" and price["unit_amount"] is not None:
            # A localstripe Plan under the same id, so that localstripe subscriptions can use this price
            # (metered prices stay here: see items.py).
            await self.localstripe_call(
                "POST",
                "/v1/plans",
                {
                    "id": price["id"],
                    "amount": price["unit_amount"],
                    "currency": price["currency"],
                    "interval": recurring["interval"],
                    "interval_count": recurring["interval_count"],
                    "product": price["product"],
                },
            )
        self.prices[price["id"]] = price
        return price

    async def update_price(self, price_id: str, data: dict[str, Any]) -> dict[str, Any]:
        price = self.price(price_id)
        if "lookup_key" in data:
            key = data["lookup_key"] or None
            self._take_lookup_key(key, objects.as_bool(data.get("transfer_lookup_key", False)), keep=price_id)
            price["lookup_key"] = key
        if "active" in data:
            price["active"] = objects.as_bool(data["active"])
        if "nickname" in data:
            price["nickname"] = data["nickname"] or None
        if isinstance(data.get("metadata"), dict):
            price["metadata"] = {**price["metadata"], **data["metadata"]}
        return price

    # -- checkout and portal ----------------------------------------------------------------------------------

    def checkout_session(self, session_id: str) -> dict[str, Any]:
        if session_id not in self.sessions:
            raise StandinError(404, f"No such checkout.session: '{session_id}'", "session")
        return self.sessions[session_id]

    async def create_checkout_session(self, data: dict[str, Any]) -> dict[str, Any]:
        mode = data.get("mode")
        if mode not in ("payment", "setup", "subscription"):
            raise StandinError(400, "Missing required param: mode.", "mode")
        if not data.get("success_url"):
            raise StandinError(400, "Missing required param: success_url.", "success_url")
        if "customer" in data:
            await self._require_customer(data["customer"])
        items = data.get("line_items") or []
        if mode == "subscription" and not items:
            raise StandinError(400, "Missing required param: line_items.", "line_items")
        for index, item in enumerate(items):
            price = self.prices.get(item.get("price", ""))
            if price is None or not price["active"]:
                raise StandinError(400, f"No such price: '{item.get('price')}'", f"line_items[{index}][price]")
            if mode == "subscription" and price["recurring"] is None:
                raise StandinError(400, "Subscription mode needs recurring prices", f"line_items[{index}][price]")
        session = objects.checkout_session(data, self.base_url)
        self.sessions[session["id"]] = session
        return session

    async def create_portal_session(self, data: dict[str, Any]) -> dict[str, Any]:
        await self._require_customer(data.get("customer"))
        session = objects.portal_session(data, self.base_url)
        self.portal_sessions[session["id"]] = session
        return session

    # -- meters -----------------------------------------------------------------------------------------------

    def meter(self, meter_id: str) -> dict[str, Any]:
        if meter_id not in self.meters:
            raise StandinError(404, f"No such billing.meter: '{meter_id}'", "id")
        return self.meters[meter_id]

    def create_meter(self, data: dict[str, Any]) -> dict[str, Any]:
        for field in ("display_name", "event_name", "default_aggregation"):
            if not data.get(field):
                raise StandinError(400, f"Missing required param: {field}.", field)
        if any(m["event_name"] == data["event_name"] and m["status"] == "active" for m in self.meters.values()):
            raise StandinError(400, f"An active meter with event_name '{data['event_name']}' exists", "event_name")
        meter = objects.meter(data)
        self.meters[meter["id"]] = meter
        return meter

    def record_meter_event(self, data: dict[str, Any]) -> dict[str, Any]:
        name = data.get("event_name")
        meter = next((m for m in self.meters.values() if m["event_name"] == name and m["status"] == "active"), None)
        if meter is None:
            raise StandinError(400, f"No active meter with event_name '{name}'", "event_name")
        payload = data.get("payload")
        customer_key = meter["customer_mapping"]["event_payload_key"]
        value_key = meter["value_settings"]["event_payload_key"]
        if not isinstance(payload, dict) or not payload.get(customer_key):
            raise StandinError(400, f"payload[{customer_key}] is required", "payload")
        try:
            float(payload.get(value_key, ""))
        except ValueError:
            raise StandinError(400, f"payload[{value_key}] must be a number", "payload") from None
        now = int(time.time())
        stamp = int(data.get("timestamp") or now)
        if not now - _PAST <= stamp <= now + _FUTURE:
            raise StandinError(400, "timestamp must be within the past 35 days or 5 minutes ahead", "timestamp")
        identifier = data.get("identifier")
        duplicate = next((e for e in self.meter_events if identifier and e["identifier"] == identifier), None)
        if duplicate is not None:  # Stripe enforces identifier uniqueness: the second one is dropped
            self.duplicate_meter_events += 1
            return duplicate
        event = objects.meter_event(data)
        self.meter_events.append(event)
        return event
