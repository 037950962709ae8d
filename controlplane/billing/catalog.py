"""The provider catalogue: one product per tier with a monthly and a yearly price, one meter per overage
with its metered monthly price.

``TIER_PRICES`` (next to ``TIER_QUOTAS``) and ``OVERAGE_UNIT_PRICES`` stay the one source of what a tier and
its overage cost; ``sync`` makes the provider match them (idempotently: found by lookup key / event name, a
changed amount becomes a new price that takes the lookup key over) and records the result in
``billing_prices`` / ``billing_meters``, so a subscription's price id maps back to a tier without asking the
provider (retired prices included: their subscribers stay on them), and every paid subscription can be given
the current overage prices (``overage_price_ids``).
"""

from __future__ import annotations

import msgspec

from controlplane.billing import catalog_repository as repo
from controlplane.billing.provider import BillingProvider, CatalogMeter, CatalogOveragePrice, CatalogPrice
from controlplane.db import AsyncConn
from controlplane.registry.models import Overage, Tier


class SyncedPrice(msgspec.Struct, frozen=True, kw_only=True):
    price: CatalogPrice
    new: bool  # a price id we had not recorded before (created now, or by a sync we never recorded)


class SyncedMeter(msgspec.Struct, frozen=True, kw_only=True):
    meter: CatalogMeter
    new: bool


class SyncedOveragePrice(msgspec.Struct, frozen=True, kw_only=True):
    price: CatalogOveragePrice
    new: bool


class SyncResult(msgspec.Struct, frozen=True, kw_only=True):
    provider: str
    prices: list[SyncedPrice]
    meters: list[SyncedMeter]
    overage_prices: list[SyncedOveragePrice]


async def sync(conn: AsyncConn, provider: BillingProvider) -> SyncResult:
    """Bring the provider's catalogue in line with the tiers and record it (one transaction on ``conn``)."""
    found = await provider.sync_catalog()
    async with conn.transaction():
        known_prices, known_meters = await repo.price_ids(conn), await repo.meter_ids(conn)
        for price in found.prices:
            await repo.record_price(conn, provider.name, price)
        for meter in found.meters:
            await repo.record_meter(conn, provider.name, meter)
        for overage in found.overage_prices:
            await repo.record_overage_price(conn, provider.name, overage)
    return SyncResult(
        provider=provider.name,
        prices=[SyncedPrice(price=p, new=p.price_id not in known_prices) for p in found.prices],
        meters=[SyncedMeter(meter=m, new=m.meter_id not in known_meters) for m in found.meters],
        overage_prices=[SyncedOveragePrice(price=p, new=p.price_id not in known_prices) for p in found.overage_prices],
    )


async def price_tier(conn: AsyncConn, price_id: str) -> tuple[Tier, str] | None:
    """The tier and interval (``month`` / ``year``) a price id stands for, or None if never synced."""
    row = await repo.price(conn, price_id)
    return (Tier(row["tier"]), str(row["billing_interval"])) if row else None


async def price_for(conn: AsyncConn, tier: Tier, interval: str) -> str | None:
    """The current price id for ``tier`` billed every ``interval``, or None before the first sync."""
    return await repo.current_price_id(conn, tier.value, interval)


async def overage_price_ids(conn: AsyncConn) -> list[str] | None:
    """The current metered price of every overage meter (in ``Overage`` order), or None unless every meter
    has one (before the first sync that made them)."""
    current = await repo.current_overage_prices(conn)
    if any(meter.value not in current for meter in Overage):
        return None
    return [current[meter.value] for meter in Overage]
