"""Non-payment, with time controlled: past_due -> grace -> suspended (423) -> paid -> reinstated; cancellation.

Stripe's side is real (localstripe through the stand-in: a declined renewal makes the subscription
``past_due``, a paid one ``active`` again); its events are posted signed to the app; the grace job runs as
the leader runs it, with ``now`` given instead of waiting a week. Proven here: a failed payment keeps the
tier and sets the grace deadline; the job suspends nothing before the deadline and suspends at it
(the tenant API answers 423, the data is kept); the paid invoice resumes the tenant; a tenant a
super-admin suspended is never resumed by a payment; a deleted subscription sends the tenant back to
starter, or suspends it with ``CARDVAULT_BILLING_ON_CANCEL=suspend``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from controlplane.settings import Settings
from tests.conftest import eventually
from tests.integration.auth_support import TenantAdmin, create_tenant
from tests.integration.billing_support import Billed, open_billed
from tests.stripe_harness import StripeStandin, stripe_billing

GRACE = timedelta(days=7)
SECOND = timedelta(seconds=1)


@pytest.fixture
async def billed(stripe_settings: Settings, stripe_standin: StripeStandin) -> AsyncIterator[Billed]:
    async with open_billed(stripe_settings, stripe_standin) as opened:
        yield opened


async def _api_status(billed: Billed, tenant: TenantAdmin) -> int:
    return (await billed.client.get(tenant.api("/cards"), headers=tenant.auth)).status_code


async def _fail_payment(billed: Billed, tenant: TenantAdmin, subscription_id: str) -> datetime:
    """A declined renewal and Stripe's event about it: the grace deadline it set."""
    before = datetime.now(UTC)
    failed = await billed.standin.renew(subscription_id, fail=True, deliver=False)
    answer, _ = await billed.post_event("invoice.payment_failed", failed["invoice"])
    assert answer.status_code == 200, answer.text
    state = await billed.tenant_state(tenant.id)
    assert (state["status"], state["tier"], state["subscription_status"]) == ("active", "professional", "past_due")
    deadline: datetime = state["grace_deadline"]
    assert before + GRACE <= deadline <= datetime.now(UTC) + GRACE
    return deadline


async def _pay(billed: Billed, subscription_id: str) -> None:
    paid = await billed.standin.renew(subscription_id, deliver=False)
    assert paid["invoice"]["status"] == "paid", paid["invoice"]
    answer, _ = await billed.post_event("invoice.paid", paid["invoice"])
    assert answer.status_code == 200, answer.text


async def test_payment_failure_grace_suspension_payment_reinstatement(billed: Billed) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    subscription = await billed.subscribe(acme, "professional")
    deadline = await _fail_payment(billed, acme, subscription["id"])
    assert await _api_status(billed, acme) == 200  # the grace period: everything works
    shown = (await billed.client.get(acme.api("/billing"), headers=acme.auth)).json()
    assert shown["subscription_status"] == "past_due" and shown["grace_deadline"] is not None

    assert await billed.billing.expire_grace(now=deadline - SECOND) == "grace: none due"
    assert (await billed.tenant_state(acme.id))["status"] == "active"
    assert await billed.billing.expire_grace(now=deadline) == "grace: 1 grace_expired"
    state = await billed.tenant_state(acme.id)
    assert (state["status"], state["suspended_for_nonpayment"], state["tier"]) == ("suspended", True, "professional")
    await eventually(lambda: _is(billed, acme, 423), "the suspended tenant's API answers 423")
    body = (await billed.client.get(acme.api("/cards"), headers=acme.auth)).json()
    assert body["error"] == "tenant_suspended"
    # the job does not act twice
    assert await billed.billing.expire_grace(now=deadline + GRACE) == "grace: none due"

    await _pay(billed, subscription["id"])
    state = await billed.tenant_state(acme.id)
    assert (state["status"], state["subscription_status"], state["tier"]) == ("active", "active", "professional")
    assert state["grace_deadline"] is None and state["suspended_for_nonpayment"] is False
    await eventually(lambda: _is(billed, acme, 200), "the reinstated tenant's API answers again")
    actions = [(a["action"], a["details"]["reason"]) for a in await billed.billing_audit("acme")]
    assert actions == [("billing.tier", "paid"), ("billing.suspend", "grace_expired"), ("billing.resume", "paid")]


async def _is(billed: Billed, tenant: TenantAdmin, status: int) -> bool:
    return await _api_status(billed, tenant) == status


async def test_a_payment_never_resumes_a_tenant_a_super_admin_suspended(billed: Billed) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    subscription = await billed.subscribe(acme, "professional")
    deadline = await _fail_payment(billed, acme, subscription["id"])
    suspended = await billed.client.post("/admin/tenants/acme/suspend")
    assert suspended.status_code == 200, suspended.text
    assert await billed.billing.expire_grace(now=deadline + SECOND) == "grace: none due"
    await _pay(billed, subscription["id"])
    state = await billed.tenant_state(acme.id)
    assert (state["status"], state["subscription_status"], state["suspended_for_nonpayment"]) == (
        "suspended",
        "active",
        False,
    )
    assert [a["action"] for a in await billed.billing_audit("acme")] == ["billing.tier"]


@pytest.mark.parametrize(
    ("on_cancel", "status", "tier"), [("starter", "active", "starter"), ("suspend", "suspended", "professional")]
)
async def test_a_deleted_subscription_goes_back_to_starter_or_suspends(
    settings: Settings, stripe_standin: StripeStandin, on_cancel: str, status: str, tier: str
) -> None:
    configured = dataclasses.replace(settings, billing=stripe_billing(stripe_standin, on_cancel=on_cancel))
    async with open_billed(configured, stripe_standin) as billed:
        acme = await create_tenant(billed.client, "acme", tier="starter")
        subscription = await billed.subscribe(acme, "professional")
        canceled = await billed.provider.client.v1.subscriptions.cancel_async(subscription["id"])
        assert canceled.status == "canceled"
        # Stripe's event carries the subscription as it ended (the SDK's object, as plain JSON).
        ended = json.loads(json.dumps(canceled.to_dict(), default=float))
        answer, _ = await billed.post_event("customer.subscription.deleted", ended)
        assert answer.status_code == 200, answer.text
        state = await billed.tenant_state(acme.id)
        assert (state["status"], state["tier"], state["subscription_status"]) == (status, tier, "canceled")
        assert state["suspended_for_nonpayment"] is (on_cancel == "suspend")
        # the same cancellation seen again (another event about it) acts no more
        again, _ = await billed.post_event("customer.subscription.updated", ended)
        assert again.status_code == 200
        assert [a["details"]["reason"] for a in await billed.billing_audit("acme")] == ["paid", "canceled"]
