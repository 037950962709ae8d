"""The provider catalogue (``cardvault billing sync``) against the local Stripe stand-ins.

The stand-in is shared by the session, so the catalogue at "Stripe" may already exist when a test starts;
each test has its own control database, and a test that changes a price restores the standard catalogue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import stripe

from controlplane.billing import catalog
from controlplane.billing import catalog_repository as repo
from controlplane.billing.stripe_provider import StripeProvider, lookup_key
from controlplane.platform import Platform
from controlplane.registry.models import OVERAGE_UNIT_PRICES, TIER_PRICES, Overage, Tier, TierPrice
from tests.integration.cli_support import cli_env, ok, run_cli
from tests.stripe_harness import StripeStandin, stripe_billing, stripe_env

CREATING = {("POST", "/v1/prices"), ("POST", "/v1/products"), ("POST", "/v1/billing/meters")}


def sdk(standin: StripeStandin) -> stripe.StripeClient:
    return stripe.StripeClient(standin.api_key, base_addresses={"api": standin.url}, http_client=stripe.HTTPXClient())


@pytest.fixture
async def restore_catalogue(stripe_standin: StripeStandin, platform: Platform) -> AsyncIterator[None]:
    """After the test, the stand-in's catalogue has the standard amounts again."""
    yield
    async with platform.control.connection() as conn:
        await catalog.sync(conn, StripeProvider(stripe_billing(stripe_standin)))


async def test_sync_twice_creates_nothing_the_second_time(stripe_standin: StripeStandin, platform: Platform) -> None:
    provider = StripeProvider(stripe_billing(stripe_standin))
    async with platform.control.connection() as conn:
        first = await catalog.sync(conn, provider)
        assert all(p.new for p in first.prices) and all(m.new for m in first.meters)  # new to this database
        seen_before = len(await stripe_standin.requests_seen())
        second = await catalog.sync(conn, provider)
        calls = (await stripe_standin.requests_seen())[seen_before:]
        recorded = await repo.prices(conn)

    assert not any(p.new for p in second.prices) and not any(m.new for m in second.meters)
    assert [p.price for p in second.prices] == [p.price for p in first.prices]
    assert calls and not CREATING & set(calls), calls  # it only looked
    assert {(r["lookup_key"], r["unit_amount"]) for r in recorded} == {
        (lookup_key(tier, interval), TIER_PRICES[tier].monthly if interval == "month" else TIER_PRICES[tier].yearly)
        for tier in Tier
        for interval in ("month", "year")
    }
    assert {m.meter.event_name for m in second.meters} == {f"cardvault_{o.value}" for o in Overage}
    assert not any(p.new for p in second.overage_prices)
    assert [p.price for p in second.overage_prices] == [p.price for p in first.overage_prices]
    async with platform.control.connection() as conn:
        overage = await repo.overage_prices(conn)
        assert await catalog.overage_price_ids(conn) == [p.price.price_id for p in second.overage_prices]
    assert [(r["lookup_key"], r["meter"], r["unit_amount_decimal"], r["billing_interval"]) for r in overage] == sorted(
        (f"cardvault_overage_{m.value}", m.value, OVERAGE_UNIT_PRICES[m], "month") for m in Overage
    )

    # At "Stripe": each meter's metered monthly price, on the meter, on the meter's own product.
    meter_ids = {m.meter.meter: m.meter.meter_id for m in second.meters}
    for synced in second.overage_prices:
        price = await sdk(stripe_standin).v1.prices.retrieve_async(synced.price.price_id)
        meter = synced.price.meter
        assert (price.lookup_key, price.product, price.active) == (
            f"cardvault_overage_{meter.value}",
            f"cardvault_overage_{meter.value}",
            True,
        )
        assert (price.recurring.usage_type, price.recurring.interval, price.recurring.meter) == (
            "metered",
            "month",
            meter_ids[meter],
        )
        assert price.unit_amount is None and price.unit_amount_decimal == Decimal(OVERAGE_UNIT_PRICES[meter])

    # At "Stripe": exactly one price per lookup key, on the tier's product, with the tier's amount.
    keys = [lookup_key(Tier.PROFESSIONAL, "month"), lookup_key(Tier.ENTERPRISE, "year")]
    listed = (await sdk(stripe_standin).v1.prices.list_async({"lookup_keys": keys})).data
    assert sorted((p.lookup_key, p.unit_amount, p.product, p.recurring.interval) for p in listed) == [
        ("cardvault_enterprise_yearly", 299_000, "cardvault_enterprise", "year"),
        ("cardvault_professional_monthly", 2_900, "cardvault_professional", "month"),
    ]


@pytest.mark.usefixtures("restore_catalogue")
async def test_a_changed_amount_moves_the_lookup_key_to_a_new_price(
    stripe_standin: StripeStandin, platform: Platform
) -> None:
    standard = StripeProvider(stripe_billing(stripe_standin))
    dearer = dict(TIER_PRICES) | {
        Tier.PROFESSIONAL: TierPrice(monthly=3_100, yearly=TIER_PRICES[Tier.PROFESSIONAL].yearly)
    }
    dearer_cards = dict(OVERAGE_UNIT_PRICES) | {Overage.CARDS: "0.015"}
    changed = StripeProvider(stripe_billing(stripe_standin), tier_prices=dearer, overage_prices=dearer_cards)
    monthly = "cardvault_professional_monthly"
    async with platform.control.connection() as conn:
        before = await catalog.sync(conn, standard)
        after = await catalog.sync(conn, changed)
        overage_retired = [
            r["price_id"] for r in await repo.overage_prices(conn, include_retired=True) if r["retired_at"]
        ]
        old = next(p.price for p in before.prices if p.price.lookup_key == monthly)
        new = next(p for p in after.prices if p.price.lookup_key == monthly)
        current_id = await catalog.price_for(conn, Tier.PROFESSIONAL, "month")
        old_tier = await catalog.price_tier(conn, old.price_id)
        retired = [r["price_id"] for r in await repo.prices(conn, include_retired=True) if r["retired_at"]]

    assert new.new and new.price.price_id != old.price_id and new.price.unit_amount == 3_100
    assert current_id == new.price.price_id and retired == [old.price_id]
    # The same for a metered price: only the cards overage price was replaced.
    old_cards = next(p.price for p in before.overage_prices if p.price.meter is Overage.CARDS)
    new_cards = next(p for p in after.overage_prices if p.price.meter is Overage.CARDS)
    assert new_cards.new and new_cards.price.unit_amount_decimal == "0.015" and overage_retired == [old_cards.price_id]
    assert [p.price for p in after.overage_prices if p is not new_cards] == [
        p.price for p in before.overage_prices if p.price != old_cards
    ]
    # Everything else was left alone.
    assert [p.price for p in after.prices if p is not new] == [p.price for p in before.prices if p.price != old]
    # The old price keeps mapping to its tier (its subscribers stay on it) but is no longer current.
    assert old_tier == (Tier.PROFESSIONAL, "month")

    client = sdk(stripe_standin)
    at_stripe = await client.v1.prices.retrieve_async(old.price_id)
    assert (at_stripe.active, at_stripe.lookup_key) == (False, None)
    current = (await client.v1.prices.list_async({"lookup_keys": [monthly]})).data
    assert [(p.id, p.unit_amount, p.active) for p in current] == [(new.price.price_id, 3_100, True)]


def test_cli_sync_end_to_end(
    stripe_standin: StripeStandin, control_dsn: str, tenant_template_name: str, tmp_path: Path
) -> None:
    env = cli_env(control_dsn, tenant_template_name, tmp_path / "data", **stripe_env(stripe_standin))
    first = ok(run_cli(env, "billing", "sync", "--json")).json()
    assert sorted(p["price"]["lookup_key"] for p in first["prices"]) == sorted(
        lookup_key(tier, interval) for tier in Tier for interval in ("month", "year")
    )
    assert len(first["meters"]) == len(Overage) and all(p["new"] for p in first["prices"])

    table = ok(run_cli(env, "billing", "sync")).stdout.splitlines()
    assert table[0].split() == ["LOOKUP_KEY", "TIER", "INTERVAL", "UNIT_AMOUNT", "CURRENCY", "PRICE_ID", "STATUS"]
    assert sum(line.endswith("unchanged") for line in table) == 6 + 2 * len(Overage)  # prices, meters, metered

    listed = ok(run_cli(env, "billing", "prices", "--json")).json()
    assert {p["price_id"] for p in listed["prices"]} == {p["price"]["price_id"] for p in first["prices"]}
    assert {m["event_name"] for m in listed["meters"]} == {f"cardvault_{o.value}" for o in Overage}
    assert {p["price_id"] for p in listed["overage_prices"]} == {
        p["price"]["price_id"] for p in first["overage_prices"]
    }


def test_cli_sync_with_billing_off_says_so(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> None:
    env = cli_env(control_dsn, tenant_template_name, tmp_path / "data", CARDVAULT_BILLING="none")
    result = run_cli(env, "billing", "sync")
    assert result.code == 2
    assert "CARDVAULT_BILLING=none" in result.stderr and result.stdout == ""
