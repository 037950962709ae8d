"""The billing state machine: from the provider's subscription state to what happens to the tenant.

``decide`` is pure: given the billing record (the state just fetched from the provider), the status it
had before, the tier of its price and the tenant as the registry has it, it says which tier the tenant
must have, whether to suspend or resume it, and the new grace deadline and non-payment flag.
``BillingEffects`` carries a decision out through the tenant lifecycle (``TenantService``), each step
audited in ``platform_audit`` with actor ``billing``.

| subscription state | tenant effect |
|---|---|
| ``active`` / ``trialing`` | tier = the price's tier; grace cleared; resumed if billing suspended it |
| ``past_due`` / ``unpaid`` / ``paused`` | tier kept; grace deadline = first seen + grace; billing contact mailed |
| ... and the grace deadline passed | suspended for non-payment (flag set), data kept; billing contact mailed |
| ``canceled`` / ``incomplete_expired`` / gone | ``on_cancel=starter``: tier starter, resumed if billing suspended it |
| ... with ``on_cancel=suspend`` | suspended (flag set: a new subscription resumes it) |
| ``incomplete`` (first payment under way), none yet | nothing |

The two mails (``dunning``) are queued by ``BillingService`` with the dunning state, when a decision
starts the grace period (``past_due`` without a deadline before) or suspends (``grace_expired``).

Every decision is a function of the latest state, so replays and events out of order converge on
the same tenant. A cancellation acts once, when the state first becomes ended (a super-admin may set a
tier by hand afterwards). A tenant a super-admin suspended is never resumed by billing: only the
``suspended_for_nonpayment`` flag, set when billing suspends, allows billing to resume.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import msgspec

from controlplane.audit.service import platform_action
from controlplane.billing.models import DUNNING, ENDED, PAYING, BillingRecord
from controlplane.context import AuditContext
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import Tenant, TenantStatus, Tier

log = logging.getLogger(__name__)

#: Who billing's own lifecycle actions are recorded as.
BILLING_ACTOR = AuditContext(actor="billing", actor_label="billing provider")


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What the tenant must become, and the dunning state to store with it."""

    #: The tier to set (None: keep the tenant's).
    tier: Tier | None = None
    suspend: bool = False
    resume: bool = False
    grace_deadline: datetime | None = None
    suspended_for_nonpayment: bool = False
    #: Why, in a word (audit details and the outcome line).
    reason: str


def ended(status: str | None, subscription_id: str | None) -> bool:
    """The subscription is over (or gone from the provider after we knew it)."""
    return status in ENDED or (status is None and subscription_id is not None)


def decide(
    record: BillingRecord,
    *,
    previous_status: str | None,
    previous_subscription_id: str | None,
    price_tier: Tier | None,
    tenant: Tenant,
    now: datetime,
    grace: timedelta,
    on_cancel: str,
) -> Decision:
    status = record.subscription_status
    flagged = record.suspended_for_nonpayment
    active = tenant.status is TenantStatus.ACTIVE
    suspended = tenant.status is TenantStatus.SUSPENDED
    if status in PAYING:
        tier = price_tier if price_tier is not None and price_tier is not tenant.subscription_tier else None
        return Decision(tier=tier, resume=flagged and suspended, reason="paid")
    if status in DUNNING:
        deadline = record.grace_deadline or now + grace
        if deadline <= now and not flagged and active:
            return Decision(
                suspend=True, grace_deadline=deadline, suspended_for_nonpayment=True, reason="grace_expired"
            )
        return Decision(grace_deadline=deadline, suspended_for_nonpayment=flagged, reason="past_due")
    if ended(status, record.subscription_id):
        if ended(previous_status, previous_subscription_id):
            return Decision(suspended_for_nonpayment=flagged, reason="ended")  # acted on when it ended
        if on_cancel == "suspend":
            return Decision(suspend=active, suspended_for_nonpayment=flagged or active, reason="canceled")
        tier = Tier.STARTER if tenant.subscription_tier is not Tier.STARTER else None
        return Decision(tier=tier, resume=flagged and suspended, reason="canceled")
    # incomplete (a first payment under way) or never subscribed: nothing to do yet
    return Decision(grace_deadline=record.grace_deadline, suspended_for_nonpayment=flagged, reason="pending")


class BillingEffects:
    """Carries decisions out through ``TenantService``, audited as ``billing``."""

    def __init__(self, platform: Platform, tenants: TenantService) -> None:
        self._p = platform
        self._tenants = tenants

    async def apply(self, tenant: Tenant, decision: Decision, details: dict[str, Any]) -> None:
        """Tier first (a suspended tenant may change tier), then suspend or resume."""
        details = {**details, "reason": decision.reason}
        control = self._p.control
        slug = tenant.slug
        if decision.tier is not None:
            async with platform_action(control, BILLING_ACTOR, "billing.tier", slug=slug, details=details) as audit:
                audit.result(await self._tenants.update(slug, tier=decision.tier.value))
            log.info("billing: %s is now on %s (%s)", slug, decision.tier.value, decision.reason)
        if decision.suspend:
            async with platform_action(control, BILLING_ACTOR, "billing.suspend", slug=slug, details=details) as audit:
                audit.result(await self._tenants.suspend(slug))
            log.warning("billing: suspended %s for non-payment (%s)", slug, decision.reason)
        if decision.resume:
            async with platform_action(control, BILLING_ACTOR, "billing.resume", slug=slug, details=details) as audit:
                audit.result(await self._tenants.resume(slug))
            log.info("billing: resumed %s (%s)", slug, decision.reason)
