"""All SQL on ``billing_prices`` and ``billing_meters`` (the provider catalogue). Callers own the transaction.

``billing_prices`` holds both kinds of price: a tier's (``tier``, ``unit_amount``) and an overage meter's
metered one (``meter``, ``meter_id``, ``unit_amount_decimal``); the readers below say which they read."""

from __future__ import annotations

from typing import Any

from controlplane.billing.provider import CatalogMeter, CatalogOveragePrice, CatalogPrice
from controlplane.db import AsyncConn

Row = dict[str, Any]


async def record_price(conn: AsyncConn, provider: str, price: CatalogPrice) -> None:
    """Make ``price`` the current one for its lookup key; a price it replaces is kept as retired."""
    await conn.execute(
        "UPDATE billing_prices SET retired_at = now() WHERE lookup_key = %s AND retired_at IS NULL AND price_id <> %s",
        (price.lookup_key, price.price_id),
    )
    await conn.execute(
        """
        INSERT INTO billing_prices (price_id, lookup_key, provider, tier, billing_interval, product_id,
                                    unit_amount, currency)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (price_id) DO UPDATE
           SET lookup_key = EXCLUDED.lookup_key, provider = EXCLUDED.provider, tier = EXCLUDED.tier,
               billing_interval = EXCLUDED.billing_interval, product_id = EXCLUDED.product_id,
               unit_amount = EXCLUDED.unit_amount, currency = EXCLUDED.currency, synced_at = now(),
               retired_at = NULL
        """,
        (price.price_id, price.lookup_key, provider, price.tier.value, price.interval, price.product_id,
         price.unit_amount, price.currency),
    )  # fmt: skip


async def record_overage_price(conn: AsyncConn, provider: str, price: CatalogOveragePrice) -> None:
    """Make ``price`` the current metered price of its meter; a price it replaces is kept as retired."""
    await conn.execute(
        "UPDATE billing_prices SET retired_at = now() WHERE lookup_key = %s AND retired_at IS NULL AND price_id <> %s",
        (price.lookup_key, price.price_id),
    )
    await conn.execute(
        """
        INSERT INTO billing_prices (price_id, lookup_key, provider, meter, meter_id, billing_interval, product_id,
                                    unit_amount_decimal, currency)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (price_id) DO UPDATE
           SET lookup_key = EXCLUDED.lookup_key, provider = EXCLUDED.provider, meter = EXCLUDED.meter,
               meter_id = EXCLUDED.meter_id, billing_interval = EXCLUDED.billing_interval,
               product_id = EXCLUDED.product_id, unit_amount_decimal = EXCLUDED.unit_amount_decimal,
               currency = EXCLUDED.currency, synced_at = now(), retired_at = NULL
        """,
        (price.price_id, price.lookup_key, provider, price.meter.value, price.meter_id, price.interval,
         price.product_id, price.unit_amount_decimal, price.currency),
    )  # fmt: skip


async def record_meter(conn: AsyncConn, provider: str, meter: CatalogMeter) -> None:
    await conn.execute(
        """
        INSERT INTO billing_meters (meter, provider, meter_id, event_name) VALUES (%s, %s, %s, %s)
        ON CONFLICT (meter) DO UPDATE
           SET provider = EXCLUDED.provider, meter_id = EXCLUDED.meter_id, event_name = EXCLUDED.event_name,
               synced_at = now()
        """,
        (meter.meter.value, provider, meter.meter_id, meter.event_name),
    )


async def price_ids(conn: AsyncConn) -> set[str]:
    cur = await conn.execute("SELECT price_id FROM billing_prices")
    return {row["price_id"] for row in await cur.fetchall()}


async def meter_ids(conn: AsyncConn) -> set[str]:
    cur = await conn.execute("SELECT meter_id FROM billing_meters")
    return {row["meter_id"] for row in await cur.fetchall()}


async def prices(conn: AsyncConn, *, include_retired: bool = False) -> list[Row]:
    """The tiers' prices."""
    cur = await conn.execute(
        """
        SELECT price_id, lookup_key, provider, tier, billing_interval, product_id, unit_amount, currency,
               synced_at, retired_at
          FROM billing_prices
         WHERE tier IS NOT NULL AND (%s OR retired_at IS NULL)
         ORDER BY array_position(ARRAY['starter', 'professional', 'enterprise'], tier), billing_interval,
                  retired_at DESC NULLS FIRST
        """,
        (include_retired,),
    )
    return list(await cur.fetchall())


async def overage_prices(conn: AsyncConn, *, include_retired: bool = False) -> list[Row]:
    """The overage meters' metered prices (``unit_amount_decimal`` as text, exactly as synced)."""
    cur = await conn.execute(
        """
        SELECT price_id, lookup_key, provider, meter, meter_id, billing_interval, product_id,
               unit_amount_decimal::text AS unit_amount_decimal, currency, synced_at, retired_at
          FROM billing_prices
         WHERE meter IS NOT NULL AND (%s OR retired_at IS NULL)
         ORDER BY meter, retired_at DESC NULLS FIRST
        """,
        (include_retired,),
    )
    return list(await cur.fetchall())


async def current_overage_prices(conn: AsyncConn) -> dict[str, str]:
    """The current metered price id of each overage meter that has one."""
    cur = await conn.execute(
        "SELECT meter, price_id FROM billing_prices WHERE meter IS NOT NULL AND retired_at IS NULL"
    )
    return {row["meter"]: row["price_id"] for row in await cur.fetchall()}


async def meters(conn: AsyncConn) -> list[Row]:
    cur = await conn.execute(
        "SELECT meter, provider, meter_id, event_name, synced_at FROM billing_meters ORDER BY meter"
    )
    return list(await cur.fetchall())


async def price(conn: AsyncConn, price_id: str) -> Row | None:
    """Any tier price ever synced (current or retired); None for other ids (an overage price included)."""
    cur = await conn.execute(
        "SELECT tier, billing_interval FROM billing_prices WHERE price_id = %s AND tier IS NOT NULL", (price_id,)
    )
    return await cur.fetchone()


async def current_price_id(conn: AsyncConn, tier: str, interval: str) -> str | None:
    cur = await conn.execute(
        "SELECT price_id FROM billing_prices WHERE tier = %s AND billing_interval = %s AND retired_at IS NULL",
        (tier, interval),
    )
    row = await cur.fetchone()
    return str(row["price_id"]) if row else None
