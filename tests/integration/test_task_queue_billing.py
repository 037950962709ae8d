"""Overage reports fanned out through the task queue.

The leader's billing round records the ledger and queues one ``billing.report_tenant`` per tenant with rows
due; the task sends only its tenant's rows; run twice, a row is reported once; a worker killed after Stripe
accepted a row and before marking it re-sends the same identifier from another worker, which Stripe drops,
so the event counts once.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controlplane.backups.schedule import BackupScheduler
from controlplane.backups.service import BackupService
from controlplane.billing import metering
from controlplane.billing.metering import day_start
from controlplane.billing.provider import BillingProvider
from controlplane.billing.providers import provider_for
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.settings import Settings
from controlplane.tasks.definitions import BILLING_TASK
from controlplane.tasks.fanout import Fanout
from controlplane.tasks.queue import TaskQueue
from controlplane.usage.service import UsageService
from tests.conftest import eventually
from tests.integration.billing_usage_support import add_points, ledger, metered_provider, set_customer
from tests.integration.task_queue_support import FAST, jobs, services, worker_killed_at
from tests.stripe_harness import StripeStandin, stripe_env

H = timedelta(hours=1)


@pytest.fixture
async def provider(stripe_settings: Settings, platform: Platform, stripe_standin: StripeStandin) -> BillingProvider:
    """The Stripe provider on the stand-in, its meters synced and recorded in ``billing_meters``."""
    syncing = provider_for(stripe_settings.billing)
    assert syncing is not None
    try:
        meters = (await syncing.sync_catalog()).meters
    finally:
        await syncing.aclose()
    return await metered_provider(stripe_settings, platform, stripe_standin, meters)


@pytest.fixture
def yesterday() -> datetime:
    return day_start(datetime.now(UTC)) - timedelta(days=1)


async def customer_tenant(
    service: TenantService, control: Any, provider: BillingProvider, slug: str
) -> tuple[uuid.UUID, str]:
    tenant = await service.create(name=slug.title(), slug=slug, tier="starter")
    customer = await provider.ensure_customer(tenant_id=str(tenant.id), slug=slug, name=slug.title(), email=None)
    await set_customer(control, tenant.id, customer)
    return tenant.id, customer


async def test_billing_reports_are_queued_per_tenant_and_sent_once(
    platform: Platform,
    service: TenantService,
    control: Any,
    provider: BillingProvider,
    stripe_standin: StripeStandin,
    yesterday: datetime,
) -> None:
    run_at = yesterday + timedelta(days=1, hours=1)
    acme, acme_customer = await customer_tenant(service, control, provider, "acme")
    beta, beta_customer = await customer_tenant(service, control, provider, "beta")
    await add_points(control, acme, "cards", (yesterday + H, 1200))
    await add_points(control, beta, "cards", (yesterday + H, 1050))
    duplicates = await stripe_standin.duplicate_meter_events()
    queue = TaskQueue(platform.settings.replace(tasks=FAST))
    backups = BackupService(platform)
    rounds = Fanout(platform, queue, UsageService(platform), BackupScheduler(backups))
    await queue.open()
    try:
        # Only acme's task runs first: it sends acme's row and leaves beta's alone.
        async with platform.control.connection() as conn:
            assert await metering.record_overage(conn, now=run_at) == 2
        assert await queue.enqueue_billing(acme, run_at)
        await queue.run_worker(services(platform, billing=provider), wait=False)
        reported = {r["tenant_id"]: r["reported_at"] for r in await ledger(control)}
        assert reported == {acme: run_at, beta: None}
        assert [e["payload"]["value"] for e in await stripe_standin.meter_events(customer=acme_customer)] == ["200"]
        assert await stripe_standin.meter_events(customer=beta_customer) == []

        # The leader's round queues beta only (acme has nothing due); acme's task again sends nothing.
        line = await rounds.billing_round(run_at)
        assert line == "0 overage period(s) recorded, reports of 1 tenant(s) queued"
        assert [j["lock"] for j in await jobs(platform, BILLING_TASK)] == [f"billing:{beta}"]
        assert await queue.enqueue_billing(acme, run_at)
        await queue.run_worker(services(platform, billing=provider), wait=False)
        assert await jobs(platform, BILLING_TASK) == []
        assert all(r["reported_at"] == run_at and r["attempts"] == 1 for r in await ledger(control))
        assert len(await stripe_standin.meter_events(customer=acme_customer)) == 1
        assert [e["payload"]["value"] for e in await stripe_standin.meter_events(customer=beta_customer)] == ["50"]
        assert await stripe_standin.duplicate_meter_events() == duplicates  # nothing was even sent twice
        assert await rounds.billing_round(run_at) == "0 overage period(s) recorded, reports of 0 tenant(s) queued"
    finally:
        await queue.close()
        await backups.stop()
        await provider.aclose()


@pytest.mark.slow
async def test_a_worker_killed_after_stripe_accepted_is_retried_and_counted_once(
    platform: Platform,
    service: TenantService,
    control: Any,
    provider: BillingProvider,
    stripe_standin: StripeStandin,
    control_dsn: str,
    tenant_template_name: str,
    yesterday: datetime,
    tmp_path: Path,
) -> None:
    run_at = yesterday + timedelta(days=1, hours=1)
    acme, customer = await customer_tenant(service, control, provider, "acme")
    await add_points(control, acme, "cards", (yesterday + H, 1001))
    async with platform.control.connection() as conn:
        assert await metering.record_overage(conn, now=run_at) == 1
    duplicates = await stripe_standin.duplicate_meter_events()
    queue = TaskQueue(platform.settings.replace(tasks=FAST))
    await queue.open()
    try:
        assert await queue.enqueue_billing(acme, run_at)
        await worker_killed_at(
            metering.AFTER_SEND,
            control_dsn,
            tenant_template_name,
            platform.settings.data_dir,
            tmp_path / "worker.log",
            **stripe_env(stripe_standin),
        )
        [job] = await jobs(platform, BILLING_TASK)
        assert job["status"] == "doing"
        [row] = await ledger(control, acme)
        assert row["reported_at"] is None and row["attempts"] == 0  # the mark died with the worker ...
        assert len(await stripe_standin.meter_events(customer=customer)) == 1  # ... after Stripe took it

        queue.start_worker(services(platform, billing=provider))

        async def reported() -> bool:
            return (await ledger(control, acme))[0]["reported_at"] is not None

        await eventually(reported, "another worker retried the stalled report", within=30)
    finally:
        await queue.close()
        await provider.aclose()
    assert (await ledger(control, acme))[0]["attempts"] == 1
    assert await stripe_standin.duplicate_meter_events() == duplicates + 1  # sent again, dropped by Stripe
    [event] = await stripe_standin.meter_events(customer=customer)
    assert (event["identifier"], event["payload"]["value"]) == (row["identifier"], "1")
