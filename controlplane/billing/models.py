"""Billing types: our copy of a tenant's billing state, inbox rows, what the billing API takes and answers.

Subscription statuses are the provider's (Stripe's) words, grouped by what they mean for the tenant
(``PAYING``, ``DUNNING``, ``ENDED``; ``incomplete`` is none of them: a first payment still under way).
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Literal

import msgspec

from controlplane.billing.metering import OverageLine
from controlplane.registry.models import QuotaType, Tier
from controlplane.usage.quotas import QuotaStatus

#: Paid up: the tenant gets the subscribed tier.
PAYING = frozenset({"active", "trialing"})
#: A payment is missing: the tier is kept until the grace deadline, then the tenant is suspended.
DUNNING = frozenset({"past_due", "unpaid", "paused"})
#: Over: back to starter (or suspended, by ``CARDVAULT_BILLING_ON_CANCEL``).
ENDED = frozenset({"canceled", "incomplete_expired"})

#: Webhook event types the inbox acts on (others are stored and marked ``ignored``).
HANDLED_EVENTS = frozenset(
    {
        "checkout.session.completed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "invoice.paid",
        "invoice.payment_failed",
    }
)

#: The quotas a downgrade is checked against (measured amounts the tenant cannot shed by waiting).
DOWNGRADE_QUOTAS = (QuotaType.USERS, QuotaType.CARDS, QuotaType.STORAGE_BYTES)

Interval = Literal["month", "year"]


class BillingRecord(msgspec.Struct, kw_only=True):
    """One ``tenant_billing`` row: the provider's state of the tenant as we last stored it."""

    tenant_id: uuid.UUID
    provider: str
    customer_id: str | None
    subscription_id: str | None
    subscription_status: str | None
    price_id: str | None
    current_period_end: datetime | None
    grace_deadline: datetime | None
    suspended_for_nonpayment: bool
    #: When we asked the provider for the state we hold (a state fetched earlier never overwrites it).
    state_at: datetime | None
    updated_at: datetime


class Outcome(enum.StrEnum):
    """What processing a webhook event came to (``billing_events.outcome``)."""

    APPLIED = "applied"  # the tenant's state was fetched from the provider and applied
    IGNORED = "ignored"  # an event type billing does not act on
    UNKNOWN_CUSTOMER = "unknown_customer"  # no tenant has this customer: recorded, nothing done
    FAILED = "failed"  # gave up after ``MAX_ATTEMPTS``; ``last_error`` says why


class InboxEvent(msgspec.Struct, kw_only=True):
    """One ``billing_events`` row (without its payload)."""

    event_id: str
    event_type: str
    created: datetime
    received_at: datetime
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    tenant_id: uuid.UUID | None
    outcome: str | None
    processed_at: datetime | None


# -- the billing API ------------------------------------------------------------------------------


class PlanRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST .../billing/checkout`` and ``.../billing/plan``: the plan wanted."""

    tier: Tier
    interval: Interval = "month"


class AdminPlanRequest(PlanRequest, forbid_unknown_fields=True, kw_only=True):
    """``POST /admin/tenants/{slug}/billing/plan``: ``force`` skips the usage check."""

    force: bool = False


class RedirectUrl(msgspec.Struct, kw_only=True):
    """Where to send the user: a Checkout Session or a Billing Portal session at the provider."""

    url: str


class QuotaExcess(msgspec.Struct, kw_only=True):
    quota: QuotaType
    usage: int
    limit: int


class BillingOverview(msgspec.Struct, kw_only=True):
    """``GET .../billing``: the plan, the subscription as last heard from the provider, usage against the plan."""

    provider: str
    tier: Tier
    #: The subscription's interval when its price is known (``month`` | ``year``).
    interval: str | None = None
    subscription_status: str | None = None
    current_period_end: datetime | None = None
    #: Set while a payment is missing: the tenant is suspended when it passes.
    grace_deadline: datetime | None = None
    suspended_for_nonpayment: bool = False
    has_customer: bool = False
    usage: list[QuotaStatus] = msgspec.field(default_factory=list)
    #: Metered overage in the current billing period so far (``controlplane.billing.metering``).
    overage: list[OverageLine] = msgspec.field(default_factory=list)
