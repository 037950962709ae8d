"""Reporting the overage ledger to Stripe (the real SDK against the local stand-in), issue 12 item 6.

Proven here, each through the stand-in's list of received meter events: a report is sent once with
its ledger identifier, meter event name, customer, quantity and the period's last second, and a later
run sends nothing; a failed report is retried after its backoff and then lands once; a row that runs
out of attempts is ``failed`` and no longer tried; a crash after Stripe accepted an event but before
``reported_at`` was written re-sends the same identifier, which Stripe (the stand-in) drops, so the
event is still counted once; two leaders reporting at once send every row exactly once; rows wait
while their tenant has no customer or the meter was never synced; tenant A's overage only ever goes
to A's customer. Times come from the wall clock at run time (Stripe refuses meter events from the
future), passed in as ``now``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from controlplane.app import create_app
from controlplane.billing import metering
from controlplane.billing.metering import BACKOFF_BASE, MAX_ATTEMPTS, Metering, day_start
from controlplane.billing.provider import BillingProvider, CatalogMeter
from controlplane.billing.providers import provider_for
from controlplane.failpoints import FailpointError
from controlplane.platform import Platform
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN, quiet_settings
from tests.integration.admin_support import create
from tests.integration.billing_usage_support import add_calls, add_points, ledger, metered_provider, set_customer
from tests.stripe_harness import StripeStandin, stripe_billing

Client = AsyncTestClient[Any]
H = timedelta(hours=1)
EVENTS = "/v1/billing/meter_events"
RUNS = "cardvault_job_runs_total"


@pytest.fixture
def settings(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> Settings:
    return quiet_settings(control_dsn, tenant_template_name, tmp_path)


@pytest.fixture(scope="module")
async def synced_meters(stripe_standin: StripeStandin) -> list[CatalogMeter]:
    """The overage meters at the stand-in (``billing sync`` once for the module: it is idempotent)."""
    found = provider_for(stripe_billing(stripe_standin))
    assert found is not None
    return (await found.sync_catalog()).meters


@pytest.fixture
async def provider(
    stripe_settings: Settings, platform: Platform, stripe_standin: StripeStandin, synced_meters: list[CatalogMeter]
) -> BillingProvider:
    """The Stripe provider on the stand-in, its meters recorded in ``billing_meters`` as sync does."""
    return await metered_provider(stripe_settings, platform, stripe_standin, synced_meters)


@pytest.fixture
def yesterday() -> datetime:
    """Yesterday (UTC): closed, and its meter events lie in Stripe's accepted past."""
    return day_start(datetime.now(UTC)) - timedelta(days=1)


@pytest.fixture
def run_at(yesterday: datetime) -> datetime:
    """When the runs happen: yesterday is settled by then."""
    return yesterday + timedelta(days=1, hours=1)


async def customer_tenant(client: Client, control: Any, provider: BillingProvider, slug: str) -> tuple[uuid.UUID, str]:
    """A starter tenant with a real customer at the stand-in."""
    tenant_id = uuid.UUID((await create(client, slug, "starter"))["id"])
    customer = await provider.ensure_customer(tenant_id=str(tenant_id), slug=slug, name=slug.title(), email=None)
    await set_customer(control, tenant_id, customer)
    return tenant_id, customer


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return sorted(
        (e["identifier"], e["event_name"], e["payload"]["stripe_customer_id"], e["payload"]["value"]) for e in events
    )


async def test_a_report_is_sent_once_with_its_identifier(
    client: Client,
    platform: Platform,
    control: Any,
    provider: BillingProvider,
    stripe_standin: StripeStandin,
    yesterday: datetime,
    run_at: datetime,
) -> None:
    acme, customer = await customer_tenant(client, control, provider, "acme")
    await add_points(control, acme, "cards", (yesterday + H, 1200))
    duplicates = await stripe_standin.duplicate_meter_events()

    recorded, stats = await Metering(platform, provider).run(run_at)
    assert (recorded, stats.sent, stats.failed) == (1, 1, 0)
    (row,) = await ledger(control, acme)
    assert row["reported_at"] == run_at and row["attempts"] == 1
    events = await stripe_standin.meter_events(customer=customer)
    assert summary(events) == [(row["identifier"], "cardvault_cards", customer, "200")]
    assert events[0]["timestamp"] == int((yesterday + timedelta(days=1, seconds=-1)).timestamp())

    # Later runs record and send nothing more: the ledger row is reported, Stripe is not asked again.
    assert await Metering(platform, provider).run(run_at + 3 * H) == (0, metering.ReportStats())
    assert len(await stripe_standin.meter_events(customer=customer)) == 1
    assert await stripe_standin.duplicate_meter_events() == duplicates


async def test_a_failed_report_is_retried_and_then_lands_once(
    client: Client,
    platform: Platform,
    control: Any,
    provider: BillingProvider,
    stripe_standin: StripeStandin,
    yesterday: datetime,
    run_at: datetime,
) -> None:
    acme, customer = await customer_tenant(client, control, provider, "acme")
    await add_calls(control, acme, (yesterday + H, 1750))
    await stripe_standin.fail_next(EVENTS, 2)  # the SDK retries once: both attempts of one call fail

    _, stats = await Metering(platform, provider).run(run_at)
    assert (stats.sent, stats.failed, stats.gave_up) == (0, 1, 0)
    (row,) = await ledger(control, acme)
    assert row["reported_at"] is None and row["attempts"] == 1 and row["failed_at"] is None
    assert "ProviderUnavailable" in row["last_error"] and row["next_attempt_at"] == run_at + BACKOFF_BASE
    assert await stripe_standin.meter_events(customer=customer) == []

    _, stats = await Metering(platform, provider).run(run_at + BACKOFF_BASE - timedelta(seconds=1))
    assert stats == metering.ReportStats()  # backing off: not due yet
    _, stats = await Metering(platform, provider).run(run_at + BACKOFF_BASE)
    assert (stats.sent, stats.failed) == (1, 0)
    (row,) = await ledger(control, acme)
    assert row["reported_at"] == run_at + BACKOFF_BASE and row["attempts"] == 2
    assert summary(await stripe_standin.meter_events(customer=customer)) == [
        (row["identifier"], "cardvault_api_calls", customer, "750")
    ]


async def test_a_row_out_of_attempts_is_failed_and_left_alone(
    client: Client,
    platform: Platform,
    control: Any,
    provider: BillingProvider,
    stripe_standin: StripeStandin,
    yesterday: datetime,
    run_at: datetime,
) -> None:
    acme, customer = await customer_tenant(client, control, provider, "acme")
    await add_points(control, acme, "storage_bytes", (yesterday + H, 2 * 1024**3))
    async with platform.control.connection() as conn:
        await metering.record_overage(conn, now=run_at)
    await control.execute(
        "UPDATE billing_usage_reports SET attempts = %s WHERE tenant_id = %s", (MAX_ATTEMPTS - 1, acme)
    )
    await stripe_standin.fail_next(EVENTS, 2)

    _, stats = await Metering(platform, provider).run(run_at)
    assert (stats.failed, stats.gave_up) == (1, 1)
    (row,) = await ledger(control, acme)
    assert row["failed_at"] == run_at and row["attempts"] == MAX_ATTEMPTS
    async with platform.control.connection() as conn:
        page = await metering.list_reports(conn, state=metering.ReportState.FAILED)
    assert [r.identifier for r in page.items] == [row["identifier"]]
    _, stats = await Metering(platform, provider).run(run_at + timedelta(days=1))
    assert stats == metering.ReportStats()
    assert await stripe_standin.meter_events(customer=customer) == []


async def test_a_crash_after_stripe_accepted_never_counts_twice(
    client: Client,
    platform: Platform,
    settings: Settings,
    control: Any,
    provider: BillingProvider,
    stripe_standin: StripeStandin,
    yesterday: datetime,
    run_at: datetime,
) -> None:
    acme, customer = await customer_tenant(client, control, provider, "acme")
    await add_points(control, acme, "cards", (yesterday + H, 1001))
    duplicates = await stripe_standin.duplicate_meter_events()

    crashing = dataclasses.replace(settings, failpoints=f"{metering.AFTER_SEND}=raise")
    async with Platform.open(crashing, migrate=False) as doomed:
        with pytest.raises(FailpointError):
            await Metering(doomed, provider).run(run_at)
    (row,) = await ledger(control, acme)
    assert row["reported_at"] is None and row["attempts"] == 0  # the mark never committed
    assert len(await stripe_standin.meter_events(customer=customer)) == 1  # but Stripe has it

    _, stats = await Metering(platform, provider).run(run_at + H)
    assert stats.sent == 1  # sent again, with the same identifier ...
    assert await stripe_standin.duplicate_meter_events() == duplicates + 1  # ... which Stripe dropped
    assert summary(await stripe_standin.meter_events(customer=customer)) == [
        (row["identifier"], "cardvault_cards", customer, "1")
    ]
    assert (await ledger(control, acme))[0]["reported_at"] == run_at + H


async def test_two_leaders_at_once_send_every_row_once(
    client: Client,
    platform: Platform,
    settings: Settings,
    control: Any,
    provider: BillingProvider,
    stripe_standin: StripeStandin,
    yesterday: datetime,
    run_at: datetime,
) -> None:
    customers = []
    for slug in ("acme", "bravo", "charlie"):
        tenant_id, customer = await customer_tenant(client, control, provider, slug)
        customers.append(customer)
        await add_points(control, tenant_id, "cards", (yesterday + H, 1100))
        await add_points(control, tenant_id, "storage_bytes", (yesterday + H, 2 * 1024**3))
        await add_calls(control, tenant_id, (yesterday, 1200))
    async with platform.control.connection() as conn:
        assert await metering.record_overage(conn, now=run_at) == 9
    duplicates = await stripe_standin.duplicate_meter_events()

    async with Platform.open(settings, migrate=False) as other:
        results = await asyncio.gather(Metering(platform, provider).run(run_at), Metering(other, provider).run(run_at))
    assert sum(stats.sent for _, stats in results) == 9
    assert await stripe_standin.duplicate_meter_events() == duplicates  # nothing was even sent twice
    events = [e for c in customers for e in await stripe_standin.meter_events(customer=c)]
    assert sorted(e["identifier"] for e in events) == sorted(r["identifier"] for r in await ledger(control))


async def test_rows_wait_for_a_customer_and_a_synced_meter(
    client: Client,
    platform: Platform,
    control: Any,
    provider: BillingProvider,
    stripe_standin: StripeStandin,
    yesterday: datetime,
    run_at: datetime,
) -> None:
    acme, customer = await customer_tenant(client, control, provider, "acme")
    await add_points(control, acme, "cards", (yesterday + H, 1100))
    await add_calls(control, acme, (yesterday, 1100))
    async with platform.control.connection() as conn:
        assert await metering.record_overage(conn, now=run_at) == 2
    await control.execute("DELETE FROM billing_meters WHERE meter = 'api_calls'")
    await set_customer(control, acme, None)

    _, stats = await Metering(platform, provider).run(run_at)
    assert (stats.sent, stats.failed, stats.unsendable) == (0, 0, 2)
    assert "2 waiting for a customer or a synced meter" in metering.describe(0, stats)
    await set_customer(control, acme, customer)
    _, stats = await Metering(platform, provider).run(run_at)
    assert (stats.sent, stats.unsendable) == (1, 1)
    assert [e["event_name"] for e in await stripe_standin.meter_events(customer=customer)] == ["cardvault_cards"]
    assert all(r["attempts"] == (1 if r["meter"] == "cards" else 0) for r in await ledger(control, acme))


async def test_tenant_a_overage_never_lands_on_tenant_b_customer(
    client: Client,
    platform: Platform,
    control: Any,
    provider: BillingProvider,
    stripe_standin: StripeStandin,
    yesterday: datetime,
    run_at: datetime,
) -> None:
    a, customer_a = await customer_tenant(client, control, provider, "tenant-a")
    b, customer_b = await customer_tenant(client, control, provider, "tenant-b")
    await add_points(control, a, "cards", (yesterday + H, 1333))
    await add_points(control, b, "cards", (yesterday + H, 1077))
    await Metering(platform, provider).run(run_at)

    rows = {r["tenant_id"]: r for r in await ledger(control)}
    assert summary(await stripe_standin.meter_events(customer=customer_a)) == [
        (rows[a]["identifier"], "cardvault_cards", customer_a, "333")
    ]
    assert summary(await stripe_standin.meter_events(customer=customer_b)) == [
        (rows[b]["identifier"], "cardvault_cards", customer_b, "77")
    ]


@pytest.mark.parametrize(
    ("billing", "interval", "scheduled"), [("stripe", 3600.0, True), ("stripe", 0.0, False), ("none", 3600.0, False)]
)
async def test_the_job_runs_on_the_leader_only_with_a_provider_and_an_interval(
    settings: Settings, stripe_standin: StripeStandin, billing: str, interval: float, scheduled: bool
) -> None:
    chosen = stripe_billing(stripe_standin) if billing == "stripe" else settings.billing
    app = create_app(dataclasses.replace(settings, billing=dataclasses.replace(chosen, usage_interval=interval)))
    async with AsyncTestClient(app=app) as client:
        text = (await client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})).text
    jobs = {s.labels["job"] for f in text_string_to_metric_families(text) for s in f.samples if s.name == RUNS}
    assert "reload_signing_keys" in jobs  # the job table was read
    assert ("report_overage" in jobs) is scheduled, sorted(jobs)


async def test_the_job_says_what_it_did_in_one_line(
    client: Client,
    platform: Platform,
    control: Any,
    provider: BillingProvider,
    yesterday: datetime,
    run_at: datetime,
) -> None:
    acme, _ = await customer_tenant(client, control, provider, "acme")
    await add_points(control, acme, "cards", (yesterday + H, 1100))
    await add_calls(control, acme, (yesterday, 1100))
    assert metering.describe(*await Metering(platform, provider).run(run_at)) == (
        "2 overage period(s) recorded, 2 reported, 0 failed"
    )
    line = await Metering(platform, provider).job()  # as of the wall clock: nothing new, nothing due
    assert line == "0 overage period(s) recorded, 0 reported, 0 failed"


async def test_a_run_sends_a_bounded_batch_oldest_period_first(
    client: Client,
    platform: Platform,
    control: Any,
    provider: BillingProvider,
    stripe_standin: StripeStandin,
    yesterday: datetime,
    run_at: datetime,
) -> None:
    acme, customer = await customer_tenant(client, control, provider, "acme")
    days = [yesterday - timedelta(days=back) for back in (2, 1, 0)]
    await add_points(control, acme, "cards", *((day + H, 1010) for day in days))
    async with platform.control.connection() as conn:
        assert await metering.record_overage(conn, now=run_at) == 3
        assert (await metering.report_pending(conn, provider, now=run_at, batch=2)).sent == 2
        sent = {r["identifier"] for r in await ledger(control, acme) if r["reported_at"] is not None}
        assert sent == {metering.identifier(acme, "cards", day) for day in days[:2]}
        assert (await metering.report_pending(conn, provider, now=run_at, batch=2)).sent == 1
    assert len(await stripe_standin.meter_events(customer=customer)) == 3
