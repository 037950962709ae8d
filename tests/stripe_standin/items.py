"""Metered subscription items, which the stand-in keeps itself.

localstripe holds exactly one item per subscription (more is "Not implemented") and knows no Billing
Meters, so a subscription's metered items (``recurring.usage_type=metered`` prices, no quantity) live here:
a Checkout Session's or a subscription create/update's metered items are taken out of what goes to
localstripe, checked as Stripe checks them (no quantity; one item per price; a deleted or updated item must
exist), and added to the subscription object on every answer (``attach``) with the subscription's period.
Metered prices are not mirrored to localstripe plans: no localstripe subscription could carry them, and a
plan's amount is a whole number of cents. What the stand-in does not do is invoice metered usage: Stripe
bills the meter's events through these items at the end of each period; the tests check that the items
are there and that the events reached the meter.
"""

from __future__ import annotations

import time
from typing import Any

from tests.stripe_standin import objects
from tests.stripe_standin.state import StandinError, State


def is_metered(price: dict[str, Any] | None) -> bool:
    return bool(price and (price.get("recurring") or {}).get("usage_type") == "metered")


def check_line_items(state: State, items: list[dict[str, Any]], param: str) -> None:
    """Stripe's rules for items naming prices: metered ones take no quantity, a price appears once."""
    seen: set[str] = set()
    for index, item in enumerate(items):
        price_id = item.get("price")
        if not isinstance(price_id, str):
            continue
        if is_metered(state.prices.get(price_id)) and item.get("quantity") not in (None, ""):
            raise StandinError(
                400,
                f"Quantity should not be specified where usage_type is `metered`. Remove quantity from "
                f"`{param}[{index}]`.",
                f"{param}[{index}][quantity]",
            )
        if price_id in seen:
            raise StandinError(400, "Cannot add multiple subscription items with the same price", param)
        seen.add(price_id)


def split(state: State, subscription_id: str | None, items: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """``items`` of a subscription create/update as (those for localstripe, the metered changes kept
    here); refuses what Stripe would refuse, before anything changes."""
    check_line_items(state, items, "items")
    kept = state.sub_items.get(subscription_id or "", [])
    kept_ids = {item["id"] for item in kept}
    kept_prices = {item["price"]["id"] for item in kept}
    local: list[dict[str, Any]] = []
    metered: list[dict[str, Any]] = []
    for item in items:
        if item.get("id") in kept_ids:
            if not objects.as_bool(item.get("deleted", False)) and item.get("price") not in (None, *kept_prices):
                raise StandinError(400, "the stand-in can only delete a metered item, not change its price", "items")
            metered.append(item)
        elif item.get("id") is None and is_metered(state.prices.get(item.get("price") or "")):
            if item["price"] in kept_prices:
                raise StandinError(400, "Cannot add multiple subscription items with the same price", "items")
            if not state.prices[item["price"]]["active"]:
                raise StandinError(400, f"The price specified is inactive: {item['price']}", "items")
            metered.append(item)
        else:
            local.append(item)
    return local, metered


def _plan_view(price: dict[str, Any]) -> dict[str, Any]:
    recurring = price["recurring"] or {}
    return {
        "id": price["id"],
        "object": "plan",
        "active": price["active"],
        "amount": price["unit_amount"],
        "amount_decimal": price["unit_amount_decimal"],
        "billing_scheme": "per_unit",
        "created": price["created"],
        "currency": price["currency"],
        "interval": recurring.get("interval"),
        "interval_count": recurring.get("interval_count", 1),
        "livemode": False,
        "metadata": price["metadata"],
        "meter": recurring.get("meter"),
        "nickname": price["nickname"],
        "product": price["product"],
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": None,
        "usage_type": recurring.get("usage_type", "licensed"),
    }


def apply(state: State, subscription_id: str, changes: list[dict[str, Any]]) -> None:
    """Carry out ``split``'s metered changes on the subscription (after localstripe accepted the rest)."""
    kept = state.sub_items.setdefault(subscription_id, [])
    for change in changes:
        if change.get("id") is not None:
            if objects.as_bool(change.get("deleted", False)):
                kept[:] = [item for item in kept if item["id"] != change["id"]]
            continue
        price = state.prices[change["price"]]
        item = objects.fixture("subscription_item")
        item.pop("quantity", None)  # metered items have none
        item.update(
            id=objects.new_id("subscription_item"),
            created=int(time.time()),
            discounts=[],
            metadata=change.get("metadata") or {},
            price=objects.public(price),
            plan=_plan_view(price),
            subscription=subscription_id,
            tax_rates=[],
        )
        kept.append(item)


def attach(state: State, sub: dict[str, Any]) -> dict[str, Any]:
    """The subscription with its metered items (in its period) after the one localstripe holds."""
    items = sub.get("items")
    if not isinstance(items, dict):
        return sub
    data = items.setdefault("data", [])
    present = {item.get("id") for item in data}
    for item in state.sub_items.get(sub.get("id", ""), []):
        if item["id"] not in present:
            period = {key: sub.get(key) for key in ("current_period_start", "current_period_end")}
            data.append(item | period)
    items["total_count"] = len(data)
    return sub
