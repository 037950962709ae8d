"""Stripe objects for the stand-in, made from Stripe's own fixtures (``fixtures3.json``) with fresh ids.

Also the webhook side: an event around an object, and the ``Stripe-Signature`` header exactly as Stripe
computes it (``t=<unix>,v1=<hex HMAC-SHA256(secret, f"{t}.{payload}")>``).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).with_name("fixtures3.json")

_PREFIX = {
    "price": "price_",
    "checkout.session": "cs_test_",
    "billing_portal.session": "bps_",
    "billing.meter": "mtr_",
    "subscription_item": "si_",
    "event": "evt_",
}


@functools.cache
def _resources() -> dict[str, Any]:
    resources: dict[str, Any] = json.loads(FIXTURES.read_text())["resources"]
    return resources


def fixture(kind: str) -> dict[str, Any]:
    """A deep copy of Stripe's example object of type ``kind`` (``price``, ``subscription``, ...)."""
    try:
        return copy.deepcopy(_resources()[kind])
    except KeyError:
        raise KeyError(f"no Stripe fixture for {kind!r}") from None


def new_id(kind: str) -> str:
    return _PREFIX.get(kind, kind.split(".")[-1][:4] + "_") + secrets.token_hex(12)


def _fresh(kind: str, **values: Any) -> dict[str, Any]:
    obj = fixture(kind)
    obj.update(id=new_id(kind), created=int(time.time()), livemode=False)
    obj.update(values)
    return obj


def price(params: dict[str, Any]) -> dict[str, Any]:
    recurring = params.get("recurring") or {}
    unit_amount = params.get("unit_amount")
    decimal = params.get("unit_amount_decimal", unit_amount)
    return _fresh(
        "price",
        active=as_bool(params.get("active", True)),
        currency=params.get("currency", "usd"),
        lookup_key=params.get("lookup_key"),
        metadata=params.get("metadata") or {},
        nickname=params.get("nickname"),
        product=params["product"],
        recurring=None
        if not recurring
        else {
            "interval": recurring.get("interval", "month"),
            "interval_count": int(recurring.get("interval_count", 1)),
            "meter": recurring.get("meter"),
            "usage_type": recurring.get("usage_type", "licensed"),
            "trial_period_days": None,
        },
        type="recurring" if recurring else "one_time",
        transform_quantity=None,
        unit_amount=None if unit_amount is None else int(unit_amount),
        unit_amount_decimal=None if decimal is None else str(decimal),
    )


def checkout_session(params: dict[str, Any], base_url: str) -> dict[str, Any]:
    session = _fresh(
        "checkout.session",
        cancel_url=params.get("cancel_url"),
        success_url=params.get("success_url"),
        client_reference_id=params.get("client_reference_id"),
        customer=params.get("customer"),
        customer_email=params.get("customer_email"),
        metadata=params.get("metadata") or {},
        mode=params.get("mode", "payment"),
        payment_intent=None,
        payment_status="unpaid",
        status="open",
        subscription=None,
        expires_at=int(time.time()) + 86400,
    )
    session["url"] = f"{base_url}/checkout/{session['id']}"
    # Not part of Stripe's object (it expands line_items separately); kept for the completion hook.
    session["_line_items"] = params.get("line_items") or []
    session["_subscription_data"] = params.get("subscription_data") or {}
    return session


def portal_session(params: dict[str, Any], base_url: str) -> dict[str, Any]:
    session = _fresh(
        "billing_portal.session",
        customer=params["customer"],
        return_url=params.get("return_url"),
        flow=None,
        configuration=params.get("configuration", "bpc_standin"),
    )
    session["url"] = f"{base_url}/portal/{session['id']}"
    return session


def meter(params: dict[str, Any]) -> dict[str, Any]:
    now = int(time.time())
    aggregation = params.get("default_aggregation") or {"formula": "sum"}
    return _fresh(
        "billing.meter",
        display_name=params["display_name"],
        event_name=params["event_name"],
        default_aggregation={"formula": aggregation.get("formula", "sum")},
        customer_mapping=params.get("customer_mapping") or {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        value_settings=params.get("value_settings") or {"event_payload_key": "value"},
        status="active",
        updated=now,
    )


def meter_event(params: dict[str, Any]) -> dict[str, Any]:
    obj = fixture("billing.meter_event")
    obj.update(
        created=int(time.time()),
        event_name=params["event_name"],
        identifier=params.get("identifier") or secrets.token_hex(12),
        payload=params.get("payload") or {},
        timestamp=int(params.get("timestamp") or time.time()),
    )
    return obj


def event(kind: str, obj: dict[str, Any], *, created: int | None = None) -> dict[str, Any]:
    """A webhook event of type ``kind`` about ``obj`` (its ``data.object``)."""
    return _fresh(
        "event",
        type=kind,
        created=int(time.time()) if created is None else created,
        data={"object": obj},
        api_version="2026-10-28.endive",
        pending_webhooks=1,
        request={"id": None, "idempotency_key": None},
    )


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without the stand-in's private keys (``_...``)."""
    return {key: value for key, value in obj.items() if not key.startswith("_")}


def sign(payload: bytes | str, secret: str, *, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header value Stripe would send for ``payload``."""
    body = payload.decode() if isinstance(payload, bytes) else payload
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{stamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def as_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() == "true"
