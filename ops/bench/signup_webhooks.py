"""Part (3) of ``signup.py``: Stripe webhook processing, N events over M tenants, in events per second.

Stripe is the local stand-in the tests use (``tests/stripe_harness.running_standin``: ``localstripe`` plus
the stand-in for the endpoints it lacks, both as processes on 127.0.0.1), reached through the real
``stripe`` SDK. Set-up (untimed): the catalogue synced, M tenants created through ``TenantService`` (4 at
once), each subscribed to professional through a real Checkout Session completed at the stand-in, and N
events built as Stripe does (signed as each is sent), round-robin over the tenants and alternating
``customer.subscription.updated`` / ``invoice.paid``. Timed: the events are posted to the in-process app's
``POST /billing/stripe/webhook`` (8 at once): verified, stored in the inbox and acknowledged, then each
processed after its response (the tenant's subscription fetched from the provider and applied: the first
event of each tenant moves it to professional through the tenant lifecycle). Reported: acknowledged
events/s, and processed events/s from the first post until the inbox has processed all of them, against a
baseline in the same run: the provider call each event's processing makes (the customer's current
subscription through the SDK and the stand-in), alone at the same concurrency. In-process, a response's
background task (the processing) runs before the test client returns, so acknowledging and processing are
measured together; a real server acknowledges first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")
POSTERS = 8
CREATORS = 4


async def bounded(limit: int, jobs: list[Callable[[], Awaitable[T]]]) -> list[T]:
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    return list(await asyncio.gather(*(one(job) for job in jobs)))


async def webhooks(settings: Any, run_id: str, events: int, tenants: int) -> None:
    from litestar.testing import AsyncTestClient

    from controlplane.app import create_app
    from controlplane.billing import catalog
    from controlplane.billing.providers import provider_for
    from controlplane.billing.service import BillingService
    from controlplane.platform import Platform
    from controlplane.provisioning.service import TenantService
    from controlplane.registry.models import Tier
    from tests.stripe_harness import running_standin, stripe_billing

    with running_standin() as standin:
        settings = dataclasses.replace(settings, billing=stripe_billing(standin))
        provider = provider_for(settings.billing)
        assert provider is not None
        started = time.perf_counter()
        async with Platform.open(settings, migrate=False) as platform:
            async with platform.control.connection() as conn:
                await catalog.sync(conn, provider)
            service = TenantService(platform)
            billing = BillingService(platform, service, provider)
            made = await bounded(
                CREATORS,
                [
                    partial(service.create, name=f"Hook {i}", slug=f"wh-{run_id}-{i}", tier="starter")
                    for i in range(tenants)
                ],
            )

            async def subscribe(tenant: Any) -> tuple[str, dict[str, Any]]:
                url = await billing.checkout(tenant, Tier.PROFESSIONAL, email=f"billing@{tenant.slug}.test")
                paid = await standin.complete_checkout(url.rsplit("/", 1)[1], deliver=False)
                subscription: dict[str, Any] = paid["subscription"]
                return str(subscription["customer"]), subscription

            subscribed = await bounded(CREATORS, [partial(subscribe, t) for t in made])
            # The baseline: what each event's processing asks the provider (the subscription now), alone.
            fetches = min(events, 1000)
            t0 = time.perf_counter()
            await bounded(
                POSTERS, [partial(provider.current_subscription, subscribed[n % tenants][0]) for n in range(fetches)]
            )
            baseline = fetches / (time.perf_counter() - t0)
        built = []
        for n in range(events):
            customer, subscription = subscribed[n % tenants]
            if n % 2 == 0:
                event = standin.event("customer.subscription.updated", subscription)
            else:
                invoice = {"id": f"in_bench{n}", "object": "invoice", "customer": customer, "status": "paid"}
                event = standin.event("invoice.paid", invoice | {"subscription": subscription["id"]})
            built.append(event)
        print(f"  set-up: {tenants} tenants subscribed, {events} events built in {time.perf_counter() - started:.0f} s")

        app = create_app(settings)
        async with AsyncTestClient(app=app, timeout=120) as client, Platform.open(settings, migrate=False) as own:

            async def post(event: dict[str, Any]) -> None:
                body, headers = standin.signed(event)  # as it is sent (Stripe refuses signatures over 5 min old)
                answer = await client.post("/billing/stripe/webhook", content=body, headers=headers)
                if answer.status_code != 200:
                    raise RuntimeError(f"webhook answered {answer.status_code}: {answer.text}")

            t0 = time.perf_counter()
            await bounded(POSTERS, [partial(post, event) for event in built])
            acknowledged = time.perf_counter() - t0
            while True:
                async with own.control.connection() as conn:
                    cur = await conn.execute(
                        "SELECT outcome, count(*) AS n FROM billing_events WHERE processed_at IS NOT NULL GROUP BY 1"
                    )
                    outcomes = {r["outcome"]: r["n"] for r in await cur.fetchall()}
                if sum(outcomes.values()) >= events or time.perf_counter() - t0 > 1800:
                    break
                await asyncio.sleep(0.05)
            processed = time.perf_counter() - t0
    done = sum(outcomes.values())
    print(f"(3) webhook processing: {events} events over {tenants} tenants ({POSTERS} posting at once):")
    print(f"  acknowledged (verified, stored, 200): {acknowledged:6.1f} s  {events / acknowledged:8.1f} events/s")
    rate = done / processed
    print(f"  processed ({done} of {events}: {outcomes}): {processed:6.1f} s  {rate:8.1f} events/s")
    print(
        f"  baseline: the provider fetch alone (stand-in, {POSTERS} at once): {baseline:8.1f} fetches/s;"
        f" processed / baseline = {rate / baseline:.2f}x"
    )
