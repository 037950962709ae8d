"""The billing state machine (``controlplane.billing.lifecycle.decide``): every row of the README's table.

Pure function, so every case states the subscription status, the dunning state we held, the tenant as
the registry has it and ``now``; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from controlplane.billing.lifecycle import Decision, decide
from controlplane.billing.models import BillingRecord
from controlplane.registry.models import Tenant, TenantStatus, Tier

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(days=7)


def record(
    status: str | None, *, sub: str | None = "sub_1", grace: datetime | None = None, flag: bool = False
) -> BillingRecord:
    return BillingRecord(
        tenant_id=uuid.UUID(int=1),
        provider="stripe",
        customer_id="cus_1",
        subscription_id=sub,
        subscription_status=status,
        price_id="price_pro",
        current_period_end=None,
        grace_deadline=grace,
        suspended_for_nonpayment=flag,
        state_at=T0,
        updated_at=T0,
    )


def tenant(status: TenantStatus = TenantStatus.ACTIVE, tier: Tier = Tier.STARTER) -> Tenant:
    return Tenant(
        id=uuid.UUID(int=1),
        slug="acme",
        name="Acme",
        status=status,
        subscription_tier=tier,
        max_users=1,
        server_id=uuid.UUID(int=2),
        server_name="default",
        database_name="t_x",
        role_name="t_x",
        schema_revision=None,
        migration_error=None,
        created_at=T0,
        updated_at=T0,
        suspended_at=None,
        delete_after=None,
    )


def run(
    rec: BillingRecord,
    who: Tenant,
    *,
    previous: str | None = "active",
    previous_sub: str | None = "sub_1",
    price_tier: Tier | None = Tier.PROFESSIONAL,
    now: datetime = T0,
    on_cancel: str = "starter",
) -> Decision:
    return decide(
        rec,
        previous_status=previous,
        previous_subscription_id=previous_sub,
        price_tier=price_tier,
        tenant=who,
        now=now,
        grace=GRACE,
        on_cancel=on_cancel,
    )


@pytest.mark.parametrize("status", ["active", "trialing"])
def test_paying_gets_the_tier_of_the_price_and_clears_the_grace(status: str) -> None:
    got = run(record(status, grace=T0 + GRACE), tenant(tier=Tier.STARTER), previous=None, previous_sub=None)
    assert got == Decision(tier=Tier.PROFESSIONAL, reason="paid")
    assert got.grace_deadline is None and not got.suspended_for_nonpayment


def test_paying_on_the_tier_it_has_changes_nothing() -> None:
    assert run(record("active"), tenant(tier=Tier.PROFESSIONAL)) == Decision(reason="paid")


def test_a_price_no_tier_has_keeps_the_tier() -> None:
    assert run(record("active"), tenant(tier=Tier.ENTERPRISE), price_tier=None).tier is None


def test_past_due_keeps_the_tier_and_starts_the_grace_period_once() -> None:
    first = run(record("past_due"), tenant(tier=Tier.PROFESSIONAL))
    assert first == Decision(grace_deadline=T0 + GRACE, reason="past_due")
    # seen again a day later: the deadline stays where it was set
    again = run(record("past_due", grace=T0 + GRACE), tenant(tier=Tier.PROFESSIONAL), now=T0 + timedelta(days=1))
    assert again.grace_deadline == T0 + GRACE and not again.suspend


@pytest.mark.parametrize("status", ["past_due", "unpaid", "paused"])
def test_grace_passed_and_unpaid_suspends_for_nonpayment(status: str) -> None:
    got = run(record(status, grace=T0 + GRACE), tenant(tier=Tier.PROFESSIONAL), now=T0 + GRACE)
    assert got.suspend and got.suspended_for_nonpayment and got.tier is None and not got.resume
    assert got.grace_deadline == T0 + GRACE


def test_billing_does_not_suspend_twice_nor_flag_a_tenant_an_admin_suspended() -> None:
    late = T0 + GRACE + timedelta(days=1)
    ours = run(record("past_due", grace=T0 + GRACE, flag=True), tenant(TenantStatus.SUSPENDED), now=late)
    assert not ours.suspend and ours.suspended_for_nonpayment
    theirs = run(record("past_due", grace=T0 + GRACE), tenant(TenantStatus.SUSPENDED), now=late)
    assert not theirs.suspend and not theirs.suspended_for_nonpayment


def test_paid_again_resumes_only_what_billing_suspended() -> None:
    ours = run(record("active", grace=T0 + GRACE, flag=True), tenant(TenantStatus.SUSPENDED, Tier.PROFESSIONAL))
    assert ours == Decision(resume=True, reason="paid")
    theirs = run(record("active", grace=T0 + GRACE), tenant(TenantStatus.SUSPENDED, Tier.PROFESSIONAL))
    assert not theirs.resume and theirs.grace_deadline is None


def test_canceled_goes_back_to_starter_and_resumes_what_billing_suspended() -> None:
    got = run(record("canceled", flag=True), tenant(TenantStatus.SUSPENDED, Tier.PROFESSIONAL), previous="past_due")
    assert got == Decision(tier=Tier.STARTER, resume=True, reason="canceled")


def test_canceled_with_on_cancel_suspend_suspends() -> None:
    got = run(record("canceled"), tenant(tier=Tier.PROFESSIONAL), on_cancel="suspend")
    assert got == Decision(suspend=True, suspended_for_nonpayment=True, reason="canceled")


def test_a_subscription_gone_from_the_provider_counts_as_ended() -> None:
    got = run(record(None, sub="sub_1"), tenant(tier=Tier.ENTERPRISE))
    assert got.tier is Tier.STARTER


def test_an_ended_subscription_acts_once() -> None:
    # a super-admin set enterprise by hand after the cancellation: a later event does not undo it
    got = run(record("canceled"), tenant(tier=Tier.ENTERPRISE), previous="canceled")
    assert got == Decision(reason="ended")


@pytest.mark.parametrize(("status", "sub"), [("incomplete", "sub_1"), (None, None)])
def test_incomplete_or_never_subscribed_changes_nothing(status: str | None, sub: str | None) -> None:
    got = run(record(status, sub=sub), tenant(tier=Tier.PROFESSIONAL), previous=None, previous_sub=None)
    assert got == Decision(reason="pending")
