"""The catalogue at Stripe, made from the tiers and the overage meters (``cardvault billing sync``).

- one Product per tier (``cardvault_<tier>``) with a monthly and a yearly licensed Price
  (lookup keys ``cardvault_<tier>_monthly`` / ``_yearly``, amounts from ``TIER_PRICES``);
- one Billing Meter per overage (event name ``cardvault_<meter>``, summing the reported values);
- one Product per overage (``cardvault_overage_<meter>``: the name invoices show) with a metered monthly
  Price on that meter (lookup key ``cardvault_overage_<meter>``, ``unit_amount_decimal`` from
  ``OVERAGE_UNIT_PRICES``): Stripe charges meter events only through such a price on a subscription.

Idempotent: prices are found by lookup key, meters by event name, products by id. Prices are immutable,
so a changed amount (or a meter that was replaced) makes a new price that takes the lookup key over
(``transfer_lookup_key``); the old one is deactivated and stays with its subscribers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import stripe
from stripe.params import PriceCreateParams

from controlplane.billing.provider import CatalogMeter, CatalogOveragePrice, CatalogPrice, ProviderCatalog
from controlplane.errors import ProviderUnavailable
from controlplane.registry.models import PRICE_CURRENCY, Overage, Tier, TierPrice

INTERVALS = ("month", "year")


def lookup_key(tier: Tier, interval: str) -> str:
    """``cardvault_<tier>_monthly`` / ``cardvault_<tier>_yearly``."""
    return f"cardvault_{tier.value}_{interval}ly"


def product_id(tier: Tier) -> str:
    return f"cardvault_{tier.value}"


def meter_event_name(meter: Overage) -> str:
    return f"cardvault_{meter.value}"


def overage_lookup_key(meter: Overage) -> str:
    """``cardvault_overage_<meter>``: the metered price of a meter."""
    return f"cardvault_overage_{meter.value}"


def overage_product_id(meter: Overage) -> str:
    return f"cardvault_overage_{meter.value}"


@contextlib.contextmanager
def reaching(what: str) -> Iterator[None]:
    """Any Stripe error inside becomes ``ProviderUnavailable`` (503) saying what failed."""
    try:
        yield
    except stripe.StripeError as exc:
        raise ProviderUnavailable(f"stripe: {what} failed: {exc.user_message or exc}") from exc


def _same_decimal(a: Any, b: str) -> bool:
    try:
        return a is not None and Decimal(str(a)) == Decimal(b)
    except InvalidOperation:
        return False


class StripeCatalog:
    """One sync of the catalogue through ``client``."""

    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        tier_prices: Mapping[Tier, TierPrice],
        overage_prices: Mapping[Overage, str],
    ) -> None:
        self._client = client
        self._tier_prices = tier_prices
        self._overage_prices = overage_prices

    async def sync(self) -> ProviderCatalog:
        keys = [lookup_key(tier, interval) for tier in Tier for interval in INTERVALS]
        keys += [overage_lookup_key(meter) for meter in Overage]
        with reaching("listing prices"):  # 9 keys: Stripe takes up to 10 per list
            listed = await self._client.v1.prices.list_async({"lookup_keys": keys, "limit": 100})
        existing = {price["lookup_key"]: price for price in (p.to_dict() for p in listed.data)}
        prices = []
        for tier in Tier:
            product = await self._ensure_product(
                product_id(tier), f"CardVault {tier.value.title()}", {"tier": tier.value}
            )
            for interval in INTERVALS:
                prices.append(
                    await self._ensure_price(tier, interval, product, existing.get(lookup_key(tier, interval)))
                )
        meters = await self._ensure_meters()
        overage = []
        for meter in meters:
            product = await self._ensure_product(
                overage_product_id(meter.meter),
                f"CardVault {meter.meter.value.replace('_', ' ')} overage",
                {"overage": meter.meter.value},
            )
            found = existing.get(overage_lookup_key(meter.meter))
            overage.append(await self._ensure_overage_price(meter, product, found))
        return ProviderCatalog(prices=prices, meters=meters, overage_prices=overage)

    async def _ensure_product(self, wanted: str, name: str, metadata: dict[str, str]) -> str:
        with reaching(f"syncing product {wanted}"):
            try:
                product = await self._client.v1.products.retrieve_async(wanted)
            except stripe.InvalidRequestError as exc:
                if exc.http_status != 404:
                    raise
                created = await self._client.v1.products.create_async(
                    {"id": wanted, "name": name, "metadata": metadata}
                )
                return created.id
            if product.name != name or not product.active:
                await self._client.v1.products.update_async(wanted, {"name": name, "active": True})
        return wanted

    async def _replace(self, found: dict[str, Any] | None, params: PriceCreateParams) -> str:
        """A new price taking its lookup key over; the one it replaces (if active) is deactivated."""
        with reaching(f"creating price {params.get('lookup_key')}"):
            created = await self._client.v1.prices.create_async(params)
            if found is not None and found.get("active"):
                await self._client.v1.prices.update_async(found["id"], {"active": False})
        return created.id

    async def _ensure_price(
        self, tier: Tier, interval: str, product: str, found: dict[str, Any] | None
    ) -> CatalogPrice:
        key = lookup_key(tier, interval)
        amount = self._tier_prices[tier].monthly if interval == "month" else self._tier_prices[tier].yearly
        current = (
            found is not None
            and found.get("active")
            and found.get("unit_amount") == amount
            and found.get("currency") == PRICE_CURRENCY
            and found.get("product") == product
            and (found.get("recurring") or {}).get("interval") == interval
        )
        price_id = found["id"] if found is not None and current else None
        if price_id is None:
            price_id = await self._replace(
                found,
                {
                    "product": product,
                    "currency": PRICE_CURRENCY,
                    "unit_amount": amount,
                    "recurring": {"interval": "month" if interval == "month" else "year"},
                    "lookup_key": key,
                    "transfer_lookup_key": True,
                    "metadata": {"tier": tier.value, "interval": interval},
                },
            )
        return CatalogPrice(
            lookup_key=key,
            tier=tier,
            interval=interval,
            product_id=product,
            price_id=price_id,
            unit_amount=amount,
            currency=PRICE_CURRENCY,
        )

    async def _ensure_overage_price(
        self, meter: CatalogMeter, product: str, found: dict[str, Any] | None
    ) -> CatalogOveragePrice:
        key = overage_lookup_key(meter.meter)
        amount = self._overage_prices[meter.meter]
        recurring = (found or {}).get("recurring") or {}
        current = (
            found is not None
            and found.get("active")
            and _same_decimal(found.get("unit_amount_decimal"), amount)
            and found.get("currency") == PRICE_CURRENCY
            and found.get("product") == product
            and recurring.get("interval") == "month"
            and recurring.get("usage_type") == "metered"
            and recurring.get("meter") == meter.meter_id
        )
        price_id = found["id"] if found is not None and current else None
        if price_id is None:
            price_id = await self._replace(
                found,
                {
                    "product": product,
                    "currency": PRICE_CURRENCY,
                    "unit_amount_decimal": Decimal(amount),
                    "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.meter_id},
                    "lookup_key": key,
                    "transfer_lookup_key": True,
                    "metadata": {"overage": meter.meter.value},
                },
            )
        return CatalogOveragePrice(
            lookup_key=key,
            meter=meter.meter,
            meter_id=meter.meter_id,
            product_id=product,
            price_id=price_id,
            unit_amount_decimal=amount,
            currency=PRICE_CURRENCY,
        )

    async def _ensure_meters(self) -> list[CatalogMeter]:
        with reaching("listing meters"):
            listed = await self._client.v1.billing.meters.list_async({"status": "active", "limit": 100})
        by_event = {meter.event_name: meter.id for meter in listed.data}
        meters = []
        for overage in Overage:
            event_name = meter_event_name(overage)
            if event_name not in by_event:
                with reaching(f"creating meter {event_name}"):
                    created = await self._client.v1.billing.meters.create_async(
                        {
                            "display_name": f"CardVault {overage.value.replace('_', ' ')} overage",
                            "event_name": event_name,
                            "default_aggregation": {"formula": "sum"},
                            "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
                            "value_settings": {"event_payload_key": "value"},
                        }
                    )
                by_event[event_name] = created.id
            meters.append(CatalogMeter(meter=overage, meter_id=by_event[event_name], event_name=event_name))
        return meters
