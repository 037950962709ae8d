"""The one small interface every billing provider implements (``none``, ``stripe``; Paddle would be one more).

Provider-neutral types only: the rest of billing never sees an SDK object. Every call that reaches the
provider is async; a provider that cannot be reached raises ``ProviderUnavailable`` (503).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import msgspec

from controlplane.registry.models import Overage, Tier


class CatalogPrice(msgspec.Struct, frozen=True, kw_only=True):
    """One price at the provider, as ``billing sync`` made or found it."""

    lookup_key: str  # cardvault_<tier>_<month|year>ly
    tier: Tier
    interval: str  # "month" | "year"
    product_id: str
    price_id: str
    unit_amount: int
    currency: str


class CatalogMeter(msgspec.Struct, frozen=True, kw_only=True):
    meter: Overage
    meter_id: str
    event_name: str


class CatalogOveragePrice(msgspec.Struct, frozen=True, kw_only=True):
    """The metered monthly price of one overage meter: what the provider bills for the meter's usage.

    It is a line item (no quantity) of every paid subscription; its usage is the sum of the meter
    events reported in the period."""

    lookup_key: str  # cardvault_overage_<meter>
    meter: Overage
    meter_id: str
    product_id: str
    price_id: str
    #: Per unit, in the smallest currency unit; fractions allowed (``OVERAGE_UNIT_PRICES``).
    unit_amount_decimal: str
    currency: str
    interval: str = "month"


class ProviderCatalog(msgspec.Struct, frozen=True, kw_only=True):
    """What ``sync_catalog`` made or found at the provider."""

    prices: list[CatalogPrice]
    meters: list[CatalogMeter]
    overage_prices: list[CatalogOveragePrice]


class SubscriptionState(msgspec.Struct, frozen=True, kw_only=True):
    """A subscription's state as the provider holds it now (never as an event once described it)."""

    id: str
    customer_id: str
    status: str  # active | trialing | past_due | unpaid | canceled | incomplete | incomplete_expired | paused
    #: The plan: the price and item of the subscription's licensed (non-metered) item.
    price_id: str | None
    item_id: str | None
    current_period_end: datetime | None
    #: The subscription's overage items (metered prices of ours): item id -> price id.
    overage_items: dict[str, str] = msgspec.field(default_factory=dict)


class ProviderEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A verified webhook event: its id, type, time and the object it is about (``data.object``)."""

    id: str
    type: str
    created: datetime
    object: dict[str, Any]
    payload: dict[str, Any]


class BillingProvider(Protocol):
    name: str

    async def sync_catalog(self) -> ProviderCatalog:
        """Create or update one product per tier with its monthly and yearly prices, the overage meters,
        and one product per meter with its metered monthly price; idempotent (found by lookup key /
        event name, never duplicated)."""
        ...

    async def aclose(self) -> None:
        """Release the provider's connections (the app's shutdown, the end of a CLI command)."""
        ...

    async def ensure_customer(self, *, tenant_id: str, slug: str, name: str, email: str | None) -> str:
        """The customer id for a tenant that has none yet (idempotent per tenant id)."""
        ...

    async def customer_email(self, customer_id: str) -> str | None:
        """The customer's email address at the provider (None: none, or no such customer)."""
        ...

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
        """A hosted checkout for a subscription to ``price_id`` (quantity 1) with the metered
        ``overage_price_ids`` as further items (no quantity)."""
        ...

    async def portal_url(self, *, customer_id: str, return_url: str) -> str:
        """A Billing Portal session: short-lived, make one when the user is about to go there."""
        ...

    async def change_price(
        self, subscription: SubscriptionState, price_id: str, overage_price_ids: Sequence[str]
    ) -> SubscriptionState:
        """Move a subscription to another price, prorated, with exactly ``overage_price_ids`` as its
        overage items (missing ones added, others of ours removed)."""
        ...

    async def subscription(self, subscription_id: str) -> SubscriptionState | None: ...

    async def current_subscription(self, customer_id: str) -> SubscriptionState | None:
        """The customer's subscription that counts now (latest non-final one, else the latest), or None."""
        ...

    def verify_event(self, payload: bytes, signature: str | None) -> ProviderEvent:
        """The event in ``payload`` if ``signature`` proves it came from the provider (and is fresh), else
        ``InvalidSignature``."""
        ...

    async def report_usage(
        self, *, event_name: str, customer_id: str, quantity: int, identifier: str, timestamp: datetime
    ) -> None:
        """One meter event; the provider drops a second one with the same ``identifier``."""
        ...
