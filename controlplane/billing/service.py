"""``BillingService``: a tenant's plan at the provider, and the provider's state applied to the tenant.

- ``overview``: plan, subscription as last heard, usage against the plan (works with provider ``none``).
- ``checkout`` / ``portal``: the provider's hosted pages for the first paid plan and for everything
  after (payment methods, invoices, cancellation); the customer is made when first needed.
- ``change_plan``: another price on the running subscription, prorated; refused (``over_quota``) when
  the target tier is below what the tenant uses, unless forced (super-admins).
- ``sync``: fetch the tenant's subscription as the provider holds it *now*, store it and apply it
  (``lifecycle``). Webhook events and the grace job only ever call this, so the order in which events
  arrive does not matter. The tenant's ``tenant_billing`` row is locked from the fetch until the
  state is stored, so two workers never store states out of order. When the grace period starts and
  when it runs out, the billing contact's mail is queued in the same transaction (``dunning``).

Provider calls that fail raise ``ProviderUnavailable`` (503) before anything of ours has changed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from controlplane.billing import catalog
from controlplane.billing import repository as repo
from controlplane.billing.dunning import Dunning
from controlplane.billing.errors import AlreadySubscribed, BillingDisabled, NoSubscription, OverQuota, PriceNotSynced
from controlplane.billing.lifecycle import BillingEffects, Decision, decide
from controlplane.billing.metering import overage_summary
from controlplane.billing.models import (
    DOWNGRADE_QUOTAS,
    ENDED,
    BillingOverview,
    BillingRecord,
    InboxEvent,
    QuotaExcess,
)
from controlplane.billing.provider import BillingProvider, SubscriptionState
from controlplane.db import AsyncConn
from controlplane.errors import InvalidTier, TenantNotFound, ValidationFailed
from controlplane.mail.models import MailKind
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry import repository as registry
from controlplane.registry.models import TIER_QUOTAS, QuotaType, Tenant, TenantStatus, Tier
from controlplane.usage.quotas import quota_status

log = logging.getLogger(__name__)

INTERVALS = ("month", "year")
#: Tenants whose grace ended that one run of the grace job looks at.
GRACE_BATCH = 100


def utcnow() -> datetime:
    return datetime.now(UTC)


def over_quota(tier: Tier, usage: Mapping[QuotaType, int]) -> list[QuotaExcess]:
    """What ``usage`` exceeds of ``tier``'s quotas (users, cards, storage)."""
    out = []
    for quota in DOWNGRADE_QUOTAS:
        limit = TIER_QUOTAS[tier][quota]
        used = usage.get(quota, 0)
        if limit is not None and used > limit:
            out.append(QuotaExcess(quota=quota, usage=used, limit=limit))
    return out


def check_usage(tier: Tier, usage: Mapping[QuotaType, int]) -> None:
    exceeds = over_quota(tier, usage)
    if exceeds:
        names = ", ".join(f"{e.quota.value} {e.usage} > {e.limit}" for e in exceeds)
        raise OverQuota(
            f"the tenant uses more than the {tier.value} tier allows ({names}); reduce usage first",
            exceeds=[{"quota": e.quota.value, "usage": e.usage, "limit": e.limit} for e in exceeds],
            tier=tier.value,
        )


def _interval(value: str) -> str:
    if value not in INTERVALS:
        raise ValidationFailed(f"interval must be month or year, not {value!r}", interval=value)
    return value


class BillingService:
    """Billing of tenants against one provider (None: ``CARDVAULT_BILLING=none``)."""

    def __init__(self, platform: Platform, tenants: TenantService, provider: BillingProvider | None) -> None:
        self._p = platform
        self._tenants = tenants
        self.provider = provider
        self._effects = BillingEffects(platform, tenants)
        self.dunning = Dunning(platform)

    @property
    def provider_name(self) -> str:
        return self.provider.name if self.provider is not None else "none"

    def require_provider(self) -> BillingProvider:
        if self.provider is None:
            raise BillingDisabled("billing is off (CARDVAULT_BILLING=none): a super-admin sets the tier")
        return self.provider

    # -- reads ----------------------------------------------------------------------------------

    async def tenant(self, tenant_id: uuid.UUID) -> Tenant:
        async with self._p.control.connection() as conn:
            tenant = await registry.get_by_id(conn, tenant_id)
        if tenant is None:
            raise TenantNotFound("no such tenant", tenant_id=str(tenant_id))
        return tenant

    async def tenant_by_slug(self, slug: str) -> Tenant:
        return await self._tenants.get(slug)

    async def events(self, tenant_id: uuid.UUID, *, limit: int) -> list[InboxEvent]:
        """The tenant's latest webhook events, newest first."""
        async with self._p.control.connection() as conn:
            return await repo.events_of(conn, tenant_id, limit=limit)

    async def overview(self, tenant_id: uuid.UUID) -> BillingOverview:
        async with self._p.control.connection() as conn:
            tenant = await registry.get_by_id(conn, tenant_id)
            if tenant is None:
                raise TenantNotFound("no such tenant", tenant_id=str(tenant_id))
            record = await repo.get(conn, tenant_id)
            usage = await quota_status(conn, tenant_id)
            priced = await catalog.price_tier(conn, record.price_id) if record and record.price_id else None
            overage = await overage_summary(conn, tenant_id)
        return BillingOverview(
            provider=self.provider_name,
            tier=tenant.subscription_tier,
            interval=priced[1] if priced else None,
            subscription_status=record.subscription_status if record else None,
            current_period_end=record.current_period_end if record else None,
            grace_deadline=record.grace_deadline if record else None,
            suspended_for_nonpayment=record.suspended_for_nonpayment if record else False,
            has_customer=bool(record and record.customer_id),
            usage=usage,
            overage=overage,
        )

    async def measured_usage(self, tenant_id: uuid.UUID) -> dict[QuotaType, int]:
        """Usage as the collectors last measured it (for a tenant whose database cannot be asked)."""
        async with self._p.control.connection() as conn:
            return {status.quota: status.usage for status in await quota_status(conn, tenant_id)}

    # -- the provider's pages -------------------------------------------------------------------

    async def checkout(self, tenant: Tenant, tier: Tier, interval: str = "month", *, email: str | None = None) -> str:
        """The Checkout Session URL for ``tenant``'s first paid plan (the webhook applies it once paid)."""
        provider = self.require_provider()
        if tier is Tier.STARTER:
            raise InvalidTier("starter is free: it needs no checkout", tier=tier.value)
        price_id = await self._price(tier, _interval(interval))
        overage = await self._overage_prices()
        customer = await self._customer(provider, tenant, email)
        current = await provider.current_subscription(customer)
        if current is not None and current.status not in ENDED:
            raise AlreadySubscribed(
                f"the tenant has a subscription ({current.status}); change its plan instead",
                subscription_status=current.status,
            )
        base = self._p.settings.http.base_url
        return await provider.checkout_url(
            customer_id=customer,
            price_id=price_id,
            overage_price_ids=overage,
            tenant_id=str(tenant.id),
            success_url=f"{base}/t/{tenant.slug}/billing?checkout=success",
            cancel_url=f"{base}/t/{tenant.slug}/billing?checkout=canceled",
        )

    async def portal(self, tenant: Tenant) -> str:
        """A Billing Portal session URL (payment methods, invoices, cancellation)."""
        provider = self.require_provider()
        customer = await self._customer(provider, tenant, None)
        return await provider.portal_url(
            customer_id=customer, return_url=f"{self._p.settings.http.base_url}/t/{tenant.slug}/billing"
        )

    async def _customer(self, provider: BillingProvider, tenant: Tenant, email: str | None) -> str:
        async with self._p.control.connection() as conn:
            record = await repo.get(conn, tenant.id)
        if record is not None and record.customer_id is not None:
            return record.customer_id
        # Idempotent per tenant at the provider: two racing requests get the same customer. Our record
        # is written only once the provider has answered (a failure leaves nothing behind).
        customer = await provider.ensure_customer(
            tenant_id=str(tenant.id), slug=tenant.slug, name=tenant.name, email=email
        )
        async with self._p.control.connection() as conn:
            return await repo.set_customer(conn, tenant.id, provider.name, customer)

    async def _price(self, tier: Tier, interval: str) -> str:
        async with self._p.control.connection() as conn:
            price_id = await catalog.price_for(conn, tier, interval)
        if price_id is None:
            raise PriceNotSynced(
                f"no {interval}ly price for {tier.value} at the provider; run `cardvault billing sync`",
                tier=tier.value,
                interval=interval,
            )
        return price_id

    async def _overage_prices(self) -> list[str]:
        """The metered overage prices every paid subscription carries (``PriceNotSynced`` before the
        sync that made them: a subscription without them would never be charged its overage)."""
        async with self._p.control.connection() as conn:
            found = await catalog.overage_price_ids(conn)
        if found is None:
            raise PriceNotSynced("no overage prices at the provider yet; run `cardvault billing sync`")
        return found

    # -- plan changes ---------------------------------------------------------------------------

    async def change_plan(
        self,
        tenant: Tenant,
        tier: Tier,
        interval: str = "month",
        *,
        usage: Mapping[QuotaType, int],
        force: bool = False,
        now: datetime | None = None,
    ) -> BillingOverview:
        """Move the running subscription to ``tier``'s price (prorated) and apply it at once (the
        webhook that follows finds nothing left to do)."""
        provider = self.require_provider()
        if not force:
            check_usage(tier, usage)
        price_id = await self._price(tier, _interval(interval))
        overage = await self._overage_prices()
        async with self._p.control.connection() as conn, conn.transaction():
            record = await repo.get(conn, tenant.id, lock=True)
            state = await provider.current_subscription(record.customer_id) if record and record.customer_id else None
            if record is None or state is None or state.status in ENDED or state.status == "incomplete":
                raise NoSubscription("the tenant has no running subscription; start one with a checkout")
            fetched_at = utcnow()
            # The overage prices go along (added to a subscription that predates them, a retired one replaced).
            if state.price_id != price_id or set(state.overage_items.values()) != set(overage):
                state = await provider.change_price(state, price_id, overage)
            details = {"source": "plan_change", "price_id": price_id, "forced": force}
            await self._store_and_apply(
                conn, record, state, fetched_at=fetched_at, now=now or utcnow(), details=details
            )
        return await self.overview(tenant.id)

    async def set_tier(self, tenant: Tenant, tier: Tier, *, usage: Mapping[QuotaType, int], force: bool) -> Tenant:
        """A super-admin's tier for a tenant billing does not drive (provider ``none``, or no subscription)."""
        if not force:
            check_usage(tier, usage)
        if tier is tenant.subscription_tier:
            return tenant
        return await self._tenants.update(tenant.slug, tier=tier.value)

    async def has_subscription(self, tenant_id: uuid.UUID) -> bool:
        """Whether billing drives the tenant's tier (a subscription that has not ended, as last stored)."""
        async with self._p.control.connection() as conn:
            record = await repo.get(conn, tenant_id)
        return bool(record and record.subscription_id and record.subscription_status not in (*ENDED, None))

    # -- applying the provider's state ----------------------------------------------------------

    async def sync(
        self,
        tenant_id: uuid.UUID,
        *,
        now: datetime | None = None,
        details: dict[str, Any] | None = None,
        conn: AsyncConn | None = None,
    ) -> str:
        """Fetch the tenant's subscription from the provider, store it and apply it; the decision's reason.

        ``conn``: a control connection inside a transaction to do it in (the inbox's); else one of its own.
        """
        if conn is None:
            async with self._p.control.connection() as own, own.transaction():
                return await self.sync(tenant_id, now=now, details=details, conn=own)
        provider = self.require_provider()
        record = await repo.get(conn, tenant_id, lock=True)
        if record is None or record.customer_id is None:
            return "no_customer"
        fetched_at = utcnow()
        state = await provider.current_subscription(record.customer_id)
        decision = await self._store_and_apply(
            conn, record, state, fetched_at=fetched_at, now=now or utcnow(), details=details or {}
        )
        return decision.reason

    async def _store_and_apply(
        self,
        conn: AsyncConn,
        record: BillingRecord,
        state: SubscriptionState | None,
        *,
        fetched_at: datetime,
        now: datetime,
        details: dict[str, Any],
    ) -> Decision:
        """Store ``state`` (fetched at ``fetched_at``) and carry out what it means for the tenant; the
        caller holds the record's lock and commits."""
        stored = await repo.store_state(conn, record.tenant_id, state, at=fetched_at)
        if stored is None:
            return Decision(reason="stale")  # a state fetched later is stored already
        tenant = await registry.get_by_id(conn, record.tenant_id)
        if tenant is None:
            return Decision(reason="tenant_gone")
        priced = await catalog.price_tier(conn, stored.price_id) if stored.price_id else None
        decision = decide(
            stored,
            previous_status=record.subscription_status,
            previous_subscription_id=record.subscription_id,
            price_tier=priced[0] if priced else None,
            tenant=tenant,
            now=now,
            grace=timedelta(seconds=self._p.settings.billing.grace),
            on_cancel=self._p.settings.billing.on_cancel,
        )
        if stored.price_id and priced is None:
            log.warning("billing: %s pays price %s, which no tier has (billing sync?)", tenant.slug, stored.price_id)
        if tenant.status in (TenantStatus.ACTIVE, TenantStatus.SUSPENDED):
            status = stored.subscription_status
            await self._effects.apply(tenant, decision, {**details, "subscription_status": status})
        await repo.set_dunning(
            conn,
            record.tenant_id,
            grace_deadline=decision.grace_deadline,
            suspended_for_nonpayment=decision.suspended_for_nonpayment,
        )
        await self._dunning_mail(conn, tenant, decision, grace_was_running=stored.grace_deadline is not None, now=now)
        return decision

    async def _dunning_mail(
        self, conn: AsyncConn, tenant: Tenant, decision: Decision, *, grace_was_running: bool, now: datetime
    ) -> None:
        """The billing contact's mail when the grace period starts or runs out (in the caller's transaction,
        with the dunning state it announces)."""
        if decision.reason == "past_due" and not grace_was_running:
            kind = MailKind.PAYMENT_PAST_DUE
        elif decision.reason == "grace_expired" and decision.suspend:
            kind = MailKind.PAYMENT_SUSPENDED
        else:
            return
        if decision.grace_deadline is None or tenant.status not in (TenantStatus.ACTIVE, TenantStatus.SUSPENDED):
            return
        provider = self.require_provider()
        await self.dunning.queue(conn, provider, tenant, kind, deadline=decision.grace_deadline, now=now)

    async def portal_from_link(self, token: str, *, now: datetime | None = None) -> str:
        """A fresh Billing Portal URL for the tenant a dunning mail's link names (it works while suspended)."""
        return await self.dunning.portal_url(self.require_provider(), token, now=now or utcnow())

    async def expire_grace(self, now: datetime | None = None) -> str:
        """The grace job: tenants whose grace deadline has passed are synced (the provider is asked
        again, so a payment whose webhook was lost counts) and suspended if still unpaid."""
        now = now or utcnow()
        async with self._p.control.connection() as conn:
            due = await repo.grace_expired(conn, now, limit=GRACE_BATCH)
        outcomes: dict[str, int] = {}
        for tenant_id in due:
            try:
                reason = await self.sync(tenant_id, now=now, details={"source": "grace_job"})
            except Exception as exc:  # one tenant's trouble does not stop the others; next run retries
                log.warning("billing: grace check of tenant %s failed: %s", tenant_id, exc)
                reason = "failed"
            outcomes[reason] = outcomes.get(reason, 0) + 1
        summary = ", ".join(f"{n} {reason}" for reason, n in sorted(outcomes.items())) or "none due"
        return f"grace: {summary}"
