"""How the Stripe provider reads subscriptions of any API version (today's Stripe, older ones, localstripe)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from controlplane.billing.stripe_provider import lookup_key, pick_current, subscription_state
from controlplane.registry.models import Tier

END = 1_800_000_000


def sub(status: str = "active", created: int = 1, **fields: Any) -> dict[str, Any]:
    return {"id": f"sub_{status}_{created}", "customer": "cus_1", "status": status, "created": created, **fields}


def test_price_and_period_come_from_the_item_as_stripe_sends_them_today() -> None:
    item = {"id": "si_1", "price": {"id": "price_new"}, "plan": {"id": "price_new"}, "current_period_end": END}
    state = subscription_state(sub(items={"object": "list", "data": [item]}))
    assert (state.price_id, state.item_id) == ("price_new", "si_1")
    assert state.current_period_end == datetime.fromtimestamp(END, UTC)


def test_localstripe_items_name_a_plan_and_the_period_sits_on_the_subscription() -> None:
    item = {"id": "si_2", "plan": {"id": "price_plan"}}
    state = subscription_state(
        sub("past_due", current_period_end=END, items={"data": [item]}, customer={"id": "cus_9"})
    )
    assert (state.price_id, state.status, state.customer_id) == ("price_plan", "past_due", "cus_9")
    assert state.current_period_end == datetime.fromtimestamp(END, UTC)


def test_a_subscription_without_items_has_no_price() -> None:
    state = subscription_state(sub("incomplete_expired"))
    assert (state.price_id, state.item_id, state.current_period_end) == (None, None, None)


def test_the_live_subscription_counts_over_newer_incomplete_or_ended_ones() -> None:
    live, incomplete, ended = sub("past_due", 1), sub("incomplete", 2), sub("canceled", 3)
    assert pick_current([ended, live, incomplete]) is live
    assert pick_current([ended, incomplete]) is incomplete
    assert pick_current([sub("canceled", 4), ended])["created"] == 4  # type: ignore[index]
    assert pick_current([]) is None
    assert pick_current([sub("active", 5), sub("trialing", 6)])["status"] == "trialing"  # type: ignore[index]


def test_lookup_keys() -> None:
    assert lookup_key(Tier.PROFESSIONAL, "month") == "cardvault_professional_monthly"
    assert lookup_key(Tier.STARTER, "year") == "cardvault_starter_yearly"


def _metered(item_id: str, price_id: str, *, ours: bool = True) -> dict[str, Any]:
    metadata = {"overage": "cards"} if ours else {}
    recurring = {"usage_type": "metered", "interval": "month"}
    return {"id": item_id, "price": {"id": price_id, "recurring": recurring, "metadata": metadata}}


def test_the_plan_is_the_licensed_item_and_our_metered_items_are_the_overage() -> None:
    licensed = {"id": "si_plan", "price": {"id": "price_pro", "recurring": {"usage_type": "licensed"}}}
    items = [_metered("si_cards", "price_cards"), licensed, _metered("si_theirs", "price_other", ours=False)]
    state = subscription_state(sub(items={"data": items}, current_period_end=END))
    assert (state.price_id, state.item_id) == ("price_pro", "si_plan")  # not the metered item listed first
    assert state.overage_items == {"si_cards": "price_cards"}  # a metered price not of ours is left alone


def test_a_metered_plan_of_an_older_api_version_is_not_the_plan() -> None:
    items = [
        {"id": "si_m", "plan": {"id": "plan_m", "usage_type": "metered"}},
        {"id": "si_l", "plan": {"id": "plan_l"}},
    ]
    state = subscription_state(sub(items={"data": items}))
    assert (state.price_id, state.item_id, state.overage_items) == ("plan_l", "si_l", {})
