"""The Stripe billing provider: the ``BillingProvider`` interface on the official ``stripe`` SDK.

One ``stripe.StripeClient`` per event loop (no module globals; its httpx connections belong to the loop that
made them), pointed at ``CARDVAULT_STRIPE_API_BASE`` when set (the tests' local stand-ins). The SDK retries a
failed request ``retries`` times with an idempotency key; then any Stripe error becomes ``ProviderUnavailable``.
Webhooks are verified with ``stripe.Webhook.construct_event`` (the SDK's default tolerance, 300 s).

A paid subscription has one licensed item (the tier's price: the plan) and one metered item per overage
meter (``stripe_catalog``); the plan is read from the first item that is not metered.

API shapes handled: a subscription item's price is ``item.price.id``, falling back to ``item.plan.id`` (older API
versions and localstripe know only plans); its period end is ``item.current_period_end`` (API 2025-03-31 and
later), falling back to the subscription's ``current_period_end`` (earlier versions).
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import stripe
from stripe.params import SubscriptionUpdateParamsItem
from stripe.params.checkout import SessionCreateParamsLineItem

from controlplane.billing.provider import ProviderCatalog, ProviderEvent, SubscriptionState
from controlplane.billing.stripe_catalog import (
    StripeCatalog,
    lookup_key,
    meter_event_name,
    product_id,
)
from controlplane.billing.stripe_catalog import reaching as _reaching
from controlplane.errors import InvalidSignature, ProviderUnavailable
from controlplane.registry.models import OVERAGE_UNIT_PRICES, TIER_PRICES, Overage, Tier, TierPrice
from controlplane.settings import BillingSettings

__all__ = ["StripeProvider", "lookup_key", "meter_event_name", "pick_current", "product_id", "subscription_state"]

#: Statuses after which a subscription never comes back.
FINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})
#: Statuses of a subscription that holds the customer's plan now (``incomplete`` ones are still being paid).
LIVE_STATUSES = frozenset({"active", "trialing", "past_due", "unpaid", "paused"})


def _time(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if isinstance(value, int | float) and value else None


def _id(value: Any) -> str | None:
    """An object's id whether Stripe sent the object (expanded) or just its id."""
    if isinstance(value, dict):
        found = value.get("id")
        return found if isinstance(found, str) else None
    return value if isinstance(value, str) else None


def _metered(item: dict[str, Any]) -> bool:
    """The item bills reported usage (a metered price, or a metered plan on older API versions)."""
    price, plan = item.get("price"), item.get("plan")
    recurring = (price.get("recurring") if isinstance(price, dict) else None) or {}
    if recurring.get("usage_type") is not None:
        return bool(recurring["usage_type"] == "metered")
    return isinstance(plan, dict) and plan.get("usage_type") == "metered"


def _overage_price(item: dict[str, Any]) -> str | None:
    """The price id of one of our overage items (a metered price ``billing sync`` made), else None."""
    price = item.get("price")
    if not (isinstance(price, dict) and _metered(item)):
        return None
    metadata = price.get("metadata") or {}
    return _id(price) if metadata.get("overage") in {m.value for m in Overage} else None


def subscription_state(data: dict[str, Any]) -> SubscriptionState:
    """Our view of a Stripe subscription object (any API version, localstripe's included): the plan is
    its licensed item (the first one that is not metered), the overage items are its metered ones of ours."""
    items = data.get("items") or {}
    listed: list[dict[str, Any]] = (items.get("data") if isinstance(items, dict) else None) or []
    item: dict[str, Any] = next((i for i in listed if not _metered(i)), {})
    overage = {str(i["id"]): found for i in listed if (found := _overage_price(i)) is not None and i.get("id")}
    return SubscriptionState(
        id=str(data["id"]),
        customer_id=_id(data.get("customer")) or "",
        status=str(data.get("status")),
        price_id=_id(item.get("price")) or _id(item.get("plan")),
        item_id=_id(item.get("id")),
        current_period_end=_time(item.get("current_period_end") or data.get("current_period_end")),
        overage_items=overage,
    )


def pick_current(subscriptions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The subscription that counts: the newest live one, else the newest incomplete one, else the newest."""

    def rank(sub: dict[str, Any]) -> tuple[int, int]:
        status = sub.get("status")
        return (2 if status in LIVE_STATUSES else 0 if status in FINAL_STATUSES else 1, int(sub.get("created") or 0))

    return max(subscriptions, key=rank, default=None)


class StripeProvider:
    """``BillingProvider`` for Stripe (see the module docstring)."""

    name = "stripe"

    def __init__(
        self,
        settings: BillingSettings,
        *,
        retries: int = 1,
        timeout: float = 20.0,
        tier_prices: Mapping[Tier, TierPrice] = TIER_PRICES,
        overage_prices: Mapping[Overage, str] = OVERAGE_UNIT_PRICES,
    ) -> None:
        self._settings = settings
        self._tier_prices = tier_prices
        self._overage_prices = overage_prices
        self._retries = retries
        self._timeout = timeout
        self._http: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, stripe.HTTPXClient] = (
            weakref.WeakKeyDictionary()
        )
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, stripe.StripeClient] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def client(self) -> stripe.StripeClient:
        """This event loop's SDK client (made on first use)."""
        loop = asyncio.get_running_loop()
        found = self._clients.get(loop)
        if found is None:
            base = self._settings.stripe_api_base
            self._http[loop] = http = stripe.HTTPXClient(timeout=self._timeout)
            found = stripe.StripeClient(
                self._settings.stripe_api_key,
                base_addresses={"api": base} if base else None,
                http_client=http,
                max_network_retries=self._retries,
            )
            self._clients[loop] = found
        return found

    async def aclose(self) -> None:
        """Close this event loop's connections (the app's shutdown; the provider reconnects if used again)."""
        loop = asyncio.get_running_loop()
        self._clients.pop(loop, None)
        http = self._http.pop(loop, None)
        if http is not None:
            await http.close_async()  # type: ignore[no-untyped-call]  # untyped in the SDK

    # -- catalogue ------------------------------------------------------------------------------------------

    async def sync_catalog(self) -> ProviderCatalog:
        catalog = StripeCatalog(self.client, tier_prices=self._tier_prices, overage_prices=self._overage_prices)
        return await catalog.sync()

    # -- customers and sessions -----------------------------------------------------------------------------

    async def ensure_customer(self, *, tenant_id: str, slug: str, name: str, email: str | None) -> str:
        with _reaching("creating the customer"):
            customer = await self.client.v1.customers.create_async(
                {
                    "name": name,
                    "metadata": {"tenant_id": tenant_id, "slug": slug},
                    **({"email": email} if email else {}),
                },
                {"idempotency_key": f"cardvault-customer-{tenant_id}"},
            )
        return customer.id

    async def customer_email(self, customer_id: str) -> str | None:
        with _reaching("reading the customer"):
            try:
                customer = await self.client.v1.customers.retrieve_async(customer_id)
            except stripe.InvalidRequestError as exc:
                if exc.http_status == 404:
                    return None
                raise
        email = customer.to_dict().get("email")
        return email if isinstance(email, str) and email else None

    async def checkout_url(
        self,
        *,
        customer_id: str,
        price_id: str,
        overage_price_ids: Sequence[str],
        tenant_id: str,
        success_url: str,
        cancel_url: str,
    ) -> str:
        line_items: list[SessionCreateParamsLineItem] = [{"price": price_id, "quantity": 1}]
        line_items += [{"price": p} for p in overage_price_ids]
        with _reaching("creating the checkout session"):
            session = await self.client.v1.checkout.sessions.create_async(
                {
                    "mode": "subscription",
                    "customer": customer_id,
                    # Metered prices take no quantity: their usage comes from the meter's events.
                    "line_items": line_items,
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                    "client_reference_id": tenant_id,
                    "metadata": {"tenant_id": tenant_id},
                    # Flexible billing mode (the default since API 2025-09-30, said here so it stays so)
                    # lets the monthly overage prices ride on a yearly plan.
                    "subscription_data": {"metadata": {"tenant_id": tenant_id}, "billing_mode": {"type": "flexible"}},
                }
            )
        if not session.url:
            raise ProviderUnavailable("stripe: the checkout session came back without a URL")
        return session.url

    async def portal_url(self, *, customer_id: str, return_url: str) -> str:
        with _reaching("creating the billing portal session"):
            session = await self.client.v1.billing_portal.sessions.create_async(
                {"customer": customer_id, "return_url": return_url}
            )
        return session.url

    # -- subscriptions --------------------------------------------------------------------------------------

    async def change_price(
        self, subscription: SubscriptionState, price_id: str, overage_price_ids: Sequence[str]
    ) -> SubscriptionState:
        if subscription.item_id is None:
            now = await self.subscription(subscription.id)
            subscription = now if now is not None else subscription
        if subscription.item_id is None:
            raise ProviderUnavailable(f"stripe: subscription {subscription.id} has no item to change")
        # Items not named stay as they are; ours of a retired price are replaced by the current one.
        wanted = set(overage_price_ids)
        items: list[SubscriptionUpdateParamsItem] = [{"id": subscription.item_id, "price": price_id}]
        items += [{"id": i, "deleted": True} for i, p in subscription.overage_items.items() if p not in wanted]
        items += [{"price": p} for p in overage_price_ids if p not in subscription.overage_items.values()]
        with _reaching("changing the subscription's price"):
            updated = await self.client.v1.subscriptions.update_async(
                subscription.id, {"items": items, "proration_behavior": "create_prorations"}
            )
        return subscription_state(updated.to_dict())

    async def subscription(self, subscription_id: str) -> SubscriptionState | None:
        with _reaching("reading the subscription"):
            try:
                found = await self.client.v1.subscriptions.retrieve_async(subscription_id)
            except stripe.InvalidRequestError as exc:
                if exc.http_status == 404:
                    return None
                raise
        return subscription_state(found.to_dict())

    async def current_subscription(self, customer_id: str) -> SubscriptionState | None:
        with _reaching("listing the customer's subscriptions"):
            listed = await self.client.v1.subscriptions.list_async(
                {"customer": customer_id, "status": "all", "limit": 100}
            )
        chosen = pick_current([sub.to_dict() for sub in listed.data])
        return None if chosen is None else subscription_state(chosen)

    # -- webhooks and usage ---------------------------------------------------------------------------------

    def verify_event(self, payload: bytes, signature: str | None) -> ProviderEvent:
        try:
            stripe.Webhook.construct_event(
                payload, signature, self._settings.stripe_webhook_secret, api_key=self._settings.stripe_api_key
            )
            data = json.loads(payload)
        except stripe.SignatureVerificationError as exc:
            raise InvalidSignature(f"webhook signature refused: {exc.user_message or exc}") from None
        except (ValueError, UnicodeDecodeError):
            raise InvalidSignature("the webhook body is not a JSON event") from None
        obj = (data.get("data") or {}).get("object") if isinstance(data, dict) else None
        created = _time(data.get("created")) if isinstance(data, dict) else None
        if not (isinstance(obj, dict) and isinstance(data.get("id"), str) and isinstance(data.get("type"), str)):
            raise InvalidSignature("the webhook body is not a Stripe event (id, type, data.object)")
        if created is None:
            raise InvalidSignature("the webhook event has no creation time")
        return ProviderEvent(id=data["id"], type=data["type"], created=created, object=obj, payload=data)

    async def report_usage(
        self, *, event_name: str, customer_id: str, quantity: int, identifier: str, timestamp: datetime
    ) -> None:
        with _reaching(f"reporting {event_name}"):
            await self.client.v1.billing.meter_events.create_async(
                {
                    "event_name": event_name,
                    "payload": {"stripe_customer_id": customer_id, "value": str(quantity)},
                    "identifier": identifier,
                    "timestamp": int(timestamp.timestamp()),
                }
            )
