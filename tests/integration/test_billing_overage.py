"""Soft quotas for tenants paying for a plan, and the overage they run up, with Stripe on (local stand-ins).

Proven here: a tenant with an active paid subscription creates cards past its plan's limit up to
``CARDVAULT_OVERAGE_CEILING`` (2.0) times it, then gets 403 ``quota_exceeded``; the cards over the plan
then appear in the overage ledger (measured by the real usage collector), held against the plan's limit;
a tenant without a subscription is refused at its plan's limit the same moment (its neighbour's
subscription changes nothing for it); ``past_due`` keeps the allowance during the grace period, a
cancelled subscription (back to starter) makes the limits hard again; users stay hard and storage is
soft; API calls over the plan's hourly limit are admitted up to the ceiling, and a refused call (429) is
not counted as usage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from controlplane.billing import metering
from controlplane.registry.models import QuotaType
from controlplane.settings import BillingSettings, Settings
from controlplane.usage import quota_repository
from controlplane.usage.service import UsageService
from tests.integration.auth_support import TenantAdmin, create_tenant
from tests.integration.billing_support import Billed, open_billed
from tests.stripe_harness import StripeStandin

PLAN_CARDS = 3
CEILING = 2.0  # the default of CARDVAULT_OVERAGE_CEILING


@pytest.fixture
async def billed(stripe_settings: Settings, stripe_standin: StripeStandin) -> AsyncIterator[Billed]:
    assert stripe_settings.billing.overage_ceiling == CEILING
    async with open_billed(stripe_settings, stripe_standin) as opened:
        yield opened


async def set_limits(billed: Billed, slug: str, limits: dict[str, int | None]) -> None:
    """A super-admin's override of the tenant's plan limits (what overage is billed over)."""
    answer = await billed.client.put(f"/admin/tenants/{slug}/quotas", json={"limits": limits})
    assert answer.status_code == 200, answer.text


async def create_cards(billed: Billed, tenant: TenantAdmin, count: int) -> list[int]:
    statuses = []
    for n in range(count):
        answer = await billed.client.post(tenant.api("/cards"), json={"cardnumber": f"C-{n}"}, headers=tenant.auth)
        statuses.append(answer.status_code)
    return statuses


async def refused(billed: Billed, tenant: TenantAdmin) -> dict[str, Any]:
    answer = await billed.client.post(tenant.api("/cards"), json={"cardnumber": "one-more"}, headers=tenant.auth)
    assert answer.status_code == 403, answer.text
    body: dict[str, Any] = answer.json()
    assert body["error"] == "quota_exceeded"
    return body


async def test_a_paying_tenant_goes_past_its_plan_up_to_the_ceiling_and_the_overage_is_recorded(
    billed: Billed,
) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    await billed.subscribe(acme, "professional")
    beta = await create_tenant(billed.client, "beta", tier="professional")  # same tier, no subscription
    for slug in ("acme", "beta"):
        await set_limits(billed, slug, {"cards": PLAN_CARDS})

    assert await create_cards(billed, acme, int(PLAN_CARDS * CEILING)) == [201] * 6
    assert (await refused(billed, acme))["limit"] == PLAN_CARDS * CEILING
    assert await create_cards(billed, beta, PLAN_CARDS) == [201] * PLAN_CARDS
    assert (await refused(billed, beta))["limit"] == PLAN_CARDS  # acme's subscription does not soften beta's

    # The usage collector measures the cards; the day's overage is held against the plan's limit.
    await UsageService(billed.platform).collect(full=True)
    (point,) = await billed.rows(
        "SELECT max(recorded_at) AS at FROM tenant_usage_metrics WHERE tenant_id = %s AND metric_name = 'cards'",
        (acme.id,),
    )
    after_the_day = metering.day_start(point["at"]) + metering.PERIOD + metering.SETTLE + timedelta(minutes=1)
    async with billed.platform.control.connection() as conn:
        await metering.record_overage(conn, now=after_the_day)
    rows = await billed.rows(
        "SELECT t.slug, r.meter, r.quantity, r.usage, r.quota_limit FROM billing_usage_reports r"
        " JOIN tenants t ON t.id = r.tenant_id WHERE r.meter = 'cards'"
    )
    assert rows == [{"slug": "acme", "meter": "cards", "quantity": 3, "usage": 6, "quota_limit": PLAN_CARDS}]


async def test_past_due_keeps_the_allowance_and_a_cancelled_plan_makes_limits_hard(billed: Billed) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    subscription = await billed.subscribe(acme, "professional")
    await set_limits(billed, "acme", {"cards": PLAN_CARDS})
    failed = await billed.standin.renew(subscription["id"], fail=True, deliver=False)
    answer, _ = await billed.post_event("invoice.payment_failed", failed["invoice"])
    assert answer.status_code == 200
    assert (await billed.tenant_state(acme.id))["subscription_status"] == "past_due"
    assert await create_cards(billed, acme, PLAN_CARDS + 1) == [201] * (PLAN_CARDS + 1)  # still soft in grace

    await billed.provider.client.v1.subscriptions.cancel_async(subscription["id"])
    assert await billed.billing.sync(acme.id) == "canceled"
    state = await billed.tenant_state(acme.id)
    assert (state["tier"], state["subscription_status"]) == ("starter", "canceled")
    await set_limits(billed, "acme", {"cards": PLAN_CARDS + 1})  # starter reset them; this is its plan now
    assert (await refused(billed, acme))["limit"] == PLAN_CARDS + 1


async def test_users_stay_hard_storage_is_soft_and_ceiling_one_means_hard(billed: Billed) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    await billed.subscribe(acme, "professional")
    await set_limits(billed, "acme", {"users": 4, "storage_bytes": 1000, "cards": 10})
    async with billed.platform.control.connection() as conn:

        async def enforced(quota: QuotaType, ceiling: float = CEILING) -> int | None:
            return await quota_repository.enforced_limit(conn, acme.id, quota, ceiling=ceiling)

        assert await enforced(QuotaType.USERS) == 4
        assert await enforced(QuotaType.STORAGE_BYTES) == 2000
        assert await enforced(QuotaType.CARDS, 1.5) == 15
        assert await enforced(QuotaType.CARDS, 1.0) == 10  # CARDVAULT_OVERAGE_CEILING=1.0 (or billing off)
        assert await quota_repository.effective_limit(conn, acme.id, QuotaType.CARDS) == 10  # the billed limit
    assert BillingSettings(overage_ceiling=3.0).quota_ceiling == 1.0  # CARDVAULT_BILLING=none: hard limits


async def test_api_calls_past_the_plan_are_admitted_up_to_the_ceiling_and_refused_ones_not_counted(
    billed: Billed,
) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    await billed.subscribe(acme, "professional")
    await set_limits(billed, "acme", {"api_calls_per_hour": 2})  # forgets the cached limit of this instance
    api_calls = billed.client.app.state["api_calls"]

    def counted() -> int:
        return sum(calls for (tenant, _), calls in api_calls.pending().items() if tenant == acme.id)

    before = counted()
    answers = [await billed.client.get(acme.api("/teams"), headers=acme.auth) for _ in range(6)]
    admitted = [a.status_code for a in answers].count(200)
    assert [a.status_code for a in answers] == [200] * admitted + [429] * (6 - admitted)
    assert answers[0].headers["RateLimit-Limit"] == "4" and answers[-1].json()["limit"] == 4  # 2 x the plan
    assert admitted > 2  # past the plan's 2 (the checkout call earlier this hour counts against the window)
    assert counted() == before + admitted  # the refused calls are neither usage nor overage
