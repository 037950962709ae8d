"""The one small interface every billing provider implements (``none``, ``stripe``; Paddle would be one more).

Provider-neutral types only: the rest of billing never sees an SDK object. Every call that reaches the
provider is async; a provider that cannot be reached raises ``ProviderUnavailable`` (503).
"""

from __future__ import annotations

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


class SubscriptionState(msgspec.Struct, frozen=True, kw_only=True):
    """A subscription's state as the provider holds it now (never as an event once described it)."""

    id: str
    customer_id: str
    status: str  # active | trialing | past_due | unpaid | canceled | incomplete | incomplete_expired | paused
    price_id: str | None
    item_id: str | None
    current_period_end: datetime | None


class ProviderEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A verified webhook event: its id, type, time and the object it is about (``data.object``)."""

    id: str
    type: str
    created: datetime
    object: dict[str, Any]
    payload: dict[str, Any]


class BillingProvider(Protocol):
    name: str

    async def sync_catalog(self) -> tuple[list[CatalogPrice], list[CatalogMeter]]:
        """Create or update one product per tier, its monthly and yearly prices and the overage meters;
        idempotent (found by lookup key / event name, never duplicated)."""
        ...

    async def ensure_customer(self, *, tenant_id: str, slug: str, name: str, email: str | None) -> str:
        """The customer id for a tenant that has none yet (idempotent per tenant id)."""
        ...

    async def checkout_url(
        self, *, customer_id: str, price_id: str, tenant_id: str, success_url: str, cancel_url: str
    ) -> str: ...

    async def portal_url(self, *, customer_id: str, return_url: str) -> str: ...

    async def change_price(self, subscription: SubscriptionState, price_id: str) -> SubscriptionState:
        """Move a subscription to another price, prorated."""
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
