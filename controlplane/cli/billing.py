"""``cardvault billing ...``: the provider catalogue (products, prices, meters) made from the tiers."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from controlplane.cli.common import emit_json, json_option, load_settings, run, table, to_builtins

if TYPE_CHECKING:  # imported where used, so that the command line starts fast
    from controlplane.billing.catalog import SyncResult
    from controlplane.settings import Settings

_PRICE_COLUMNS = ("lookup_key", "tier", "interval", "unit_amount", "currency", "price_id", "status")
_METER_COLUMNS = ("meter", "event_name", "meter_id", "status")
_OVERAGE_COLUMNS = ("lookup_key", "meter", "unit_amount_decimal", "currency", "price_id", "status")


@click.group()
def billing() -> None:
    """The billing provider's catalogue (CARDVAULT_BILLING=stripe)."""


def _enabled_settings() -> Settings:
    settings = load_settings()
    if not settings.billing.enabled:
        click.echo(
            "Billing is off (CARDVAULT_BILLING=none): there is no provider catalogue to sync. "
            "Set CARDVAULT_BILLING=stripe with CARDVAULT_STRIPE_API_KEY and CARDVAULT_STRIPE_WEBHOOK_SECRET.",
            err=True,
        )
        sys.exit(2)
    return settings


@billing.command("sync")
@json_option
def sync(as_json: bool) -> None:
    """Create or update one product per tier, its monthly and yearly prices, the overage meters and their
    metered prices at the provider (idempotent), and record them."""
    from controlplane.billing import catalog
    from controlplane.billing.providers import provider_for
    from controlplane.platform import Platform

    settings = _enabled_settings()
    provider = provider_for(settings.billing)
    assert provider is not None  # enabled

    async def go() -> SyncResult:
        try:
            async with Platform.open(settings) as platform, platform.control.connection() as conn:
                return await catalog.sync(conn, provider)
        finally:
            await provider.aclose()

    result = run(go)
    if as_json:
        emit_json(result)
        return
    table(
        [to_builtins(p.price) | {"status": "created" if p.new else "unchanged"} for p in result.prices],
        _PRICE_COLUMNS,
    )
    click.echo()
    table(
        [to_builtins(m.meter) | {"status": "created" if m.new else "unchanged"} for m in result.meters],
        _METER_COLUMNS,
    )
    click.echo()
    table(
        [to_builtins(p.price) | {"status": "created" if p.new else "unchanged"} for p in result.overage_prices],
        _OVERAGE_COLUMNS,
    )


@billing.command("prices")
@click.option("--all", "include_retired", is_flag=True, help="Also list retired prices (kept for their subscribers).")
@json_option
def prices(include_retired: bool, as_json: bool) -> None:
    """List the recorded catalogue: prices per tier and interval, the meters, then their metered prices."""
    from controlplane.billing import catalog_repository as repo
    from controlplane.platform import Platform

    settings = _enabled_settings()

    async def go() -> tuple[list[dict[str, object]], list[dict[str, object]], list[dict[str, object]]]:
        async with Platform.open(settings) as platform, platform.control.connection() as conn:
            return (
                await repo.prices(conn, include_retired=include_retired),
                await repo.meters(conn),
                await repo.overage_prices(conn, include_retired=include_retired),
            )

    found, meters, overage = run(go)
    if as_json:
        emit_json({"prices": found, "meters": meters, "overage_prices": overage})
        return
    rows = [
        row | {"interval": row["billing_interval"], "status": "retired" if row["retired_at"] else "current"}
        for row in found
    ]
    table(rows, _PRICE_COLUMNS)
    click.echo()
    table([row | {"status": "current"} for row in meters], _METER_COLUMNS)
    click.echo()
    table([row | {"status": "retired" if row["retired_at"] else "current"} for row in overage], _OVERAGE_COLUMNS)
