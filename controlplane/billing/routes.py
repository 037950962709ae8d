"""HTTP face of billing.

- Tenant API (``/t/{slug}/api/billing``, ``/api/billing``; ``billing:manage``, i.e. tenant_admin):
  ``GET`` the plan, ``POST /checkout`` (first paid plan: a Checkout Session URL), ``POST /portal`` (a
  Billing Portal URL), ``POST /plan`` (another plan on the running subscription, prorated; 409
  ``over_quota`` with what exceeds when the target tier is below the tenant's usage).
- Admin (``/admin/tenants/{slug}/billing``): ``GET`` the plan and the tenant's latest webhook events,
  ``POST /plan`` to set a plan (``force`` skips the usage check; on the subscription when one runs, else
  the tier alone), ``POST /sync`` to apply the provider's state now.
- ``POST /billing/stripe/webhook``: public, mounted only with ``CARDVAULT_BILLING=stripe``; verified,
  stored, acknowledged (200), then processed after the response.
- ``GET /billing/portal?token=``: public, mounted with a provider: the link of a dunning mail; a fresh
  Billing Portal session for the tenant the signed token names (303 to it), also while the tenant is
  suspended; 404 ``portal_link_invalid`` for a forged or expired token.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Redirect

from controlplane.audit import repository as audit
from controlplane.audit.routes import audited
from controlplane.auth.models import Permission
from controlplane.billing.inbox import Inbox
from controlplane.billing.models import AdminPlanRequest, BillingOverview, InboxEvent, PlanRequest, RedirectUrl
from controlplane.billing.service import BillingService
from controlplane.cards import repository as cards
from controlplane.context import TenantRequest
from controlplane.errors import TenantNotFound
from controlplane.http.state import BILLING_INBOX_STATE_KEY, BILLING_STATE_KEY, TENANT_POOLS_STATE_KEY
from controlplane.http.tenant_api import requires
from controlplane.pools.service import TenantPools
from controlplane.registry.models import SLUG_PATTERN, QuotaType, Tenant, TenantStatus

#: The tenant's usage counters (in its own database) by the quota they count against.
_COUNTED = {QuotaType.USERS: "users", QuotaType.CARDS: "cards", QuotaType.STORAGE_BYTES: "storage_bytes"}
#: Webhook events an admin sees with a tenant's billing.
_ADMIN_EVENTS = 20


def provide_billing(state: State) -> BillingService:
    billing: BillingService = state[BILLING_STATE_KEY]
    return billing


def provide_inbox(state: State) -> Inbox:
    inbox: Inbox = state[BILLING_INBOX_STATE_KEY]
    return inbox


_DEPENDENCIES = {"billing": Provide(provide_billing, sync_to_thread=False)}
Billing = NamedDependency[BillingService]
Ctx = NamedDependency[TenantRequest]


async def live_usage(conn: Any) -> dict[QuotaType, int]:
    """The tenant's counted usage (cards, users, stored bytes) from its own database, per quota."""
    counted = await cards.counters(conn)
    return {quota: counted.get(name, 0) for quota, name in _COUNTED.items()}


async def _tenant(billing: BillingService, ctx: TenantRequest) -> Tenant:
    return await billing.tenant(ctx.tenant.id)


class TenantBillingController(Controller):
    """The tenant's own billing (mounted in the tenant API)."""

    path = "/billing"
    tags = ["billing"]
    dependencies = _DEPENDENCIES

    @get("/", opt=requires(Permission.BILLING_MANAGE), summary="Plan, subscription status, usage against the plan")
    async def overview(self, tenant_request: Ctx, billing: Billing) -> BillingOverview:
        return await billing.overview(tenant_request.tenant.id)

    @post(
        "/checkout",
        opt=requires(Permission.BILLING_MANAGE),
        status_code=200,
        summary="Start the first paid plan: the provider's Checkout page (409 if a subscription runs)",
    )
    async def checkout(self, tenant_request: Ctx, billing: Billing, data: JSONBody[PlanRequest]) -> RedirectUrl:
        billing.require_provider()
        url = await billing.checkout(await _tenant(billing, tenant_request), data.tier, data.interval)
        details = {"tier": data.tier.value, "interval": data.interval}
        await audit.record_tenant(tenant_request.conn, tenant_request.audit, "billing.checkout", details=details)
        return RedirectUrl(url=url)

    @post(
        "/portal",
        opt=requires(Permission.BILLING_MANAGE),
        status_code=200,
        summary="The provider's Billing Portal: payment methods, invoices, cancellation",
    )
    async def portal(self, tenant_request: Ctx, billing: Billing) -> RedirectUrl:
        billing.require_provider()
        url = await billing.portal(await _tenant(billing, tenant_request))
        await audit.record_tenant(tenant_request.conn, tenant_request.audit, "billing.portal")
        return RedirectUrl(url=url)

    @post(
        "/plan",
        opt=requires(Permission.BILLING_MANAGE),
        status_code=200,
        summary="Change the plan of the running subscription (prorated); 409 over_quota below current usage",
    )
    async def change_plan(self, tenant_request: Ctx, billing: Billing, data: JSONBody[PlanRequest]) -> BillingOverview:
        billing.require_provider()
        tenant = await _tenant(billing, tenant_request)
        usage = await live_usage(tenant_request.conn)
        overview = await billing.change_plan(tenant, data.tier, data.interval, usage=usage)
        details = {"tier": data.tier.value, "interval": data.interval, "from": tenant.subscription_tier.value}
        await audit.record_tenant(tenant_request.conn, tenant_request.audit, "billing.plan", details=details)
        return overview


TENANT_BILLING_HANDLERS = [TenantBillingController]


# -- admin ------------------------------------------------------------------------------------------


class AdminBillingView(msgspec.Struct, kw_only=True):
    billing: BillingOverview
    #: The tenant's latest webhook events, newest first.
    events: list[InboxEvent]


def _existing(slug: str) -> str:
    if not SLUG_PATTERN.fullmatch(slug):
        raise TenantNotFound(f"no tenant with slug {slug!r}", slug=slug)
    return slug


async def _usage_of(request: Request[Any, Any, Any], billing: BillingService, tenant: Tenant) -> dict[QuotaType, int]:
    """Live counters from an active tenant's database; the collectors' last measurement otherwise."""
    if tenant.status is TenantStatus.ACTIVE:
        pools: TenantPools = request.app.state[TENANT_POOLS_STATE_KEY]
        async with pools.connection(tenant.id, autocommit=True) as conn:
            return await live_usage(conn)
    return await billing.measured_usage(tenant.id)


class AdminBillingController(Controller):
    """A super-admin's view of, and hand on, a tenant's billing (behind ``admin_guard``)."""

    path = "/admin/tenants/{slug:str}/billing"
    tags = ["billing"]
    dependencies = _DEPENDENCIES

    @get("/", summary="A tenant's plan, subscription, usage and latest webhook events")
    async def show(self, slug: FromPath[str], billing: Billing) -> AdminBillingView:
        tenant = await billing.tenant_by_slug(_existing(slug))
        return AdminBillingView(
            billing=await billing.overview(tenant.id), events=await billing.events(tenant.id, limit=_ADMIN_EVENTS)
        )

    @post(
        "/plan",
        status_code=200,
        summary="Set a tenant's plan: on its subscription when one runs, else the tier; force skips the usage check",
    )
    async def set_plan(
        self, request: Request[Any, Any, Any], slug: FromPath[str], billing: Billing, data: JSONBody[AdminPlanRequest]
    ) -> BillingOverview:
        details = {"tier": data.tier.value, "interval": data.interval, "force": data.force}
        async with audited(request, "billing.plan", slug=slug, details=details) as action:
            tenant = await billing.tenant_by_slug(_existing(slug))
            usage = await _usage_of(request, billing, tenant)
            if billing.provider is not None and await billing.has_subscription(tenant.id):
                overview = await billing.change_plan(tenant, data.tier, data.interval, usage=usage, force=data.force)
                action.result(await billing.tenant(tenant.id))
                return overview
            action.result(await billing.set_tier(tenant, data.tier, usage=usage, force=data.force))
            return await billing.overview(tenant.id)

    @post("/sync", status_code=200, summary="Fetch the tenant's subscription from the provider and apply it now")
    async def sync(self, request: Request[Any, Any, Any], slug: FromPath[str], billing: Billing) -> BillingOverview:
        async with audited(request, "billing.sync", slug=slug) as action:
            billing.require_provider()
            tenant = await billing.tenant_by_slug(_existing(slug))
            action.details["reason"] = await billing.sync(tenant.id, details={"source": "admin_sync"})
            action.result(await billing.tenant(tenant.id))
            return await billing.overview(tenant.id)


ADMIN_BILLING_HANDLERS = [AdminBillingController]


# -- the webhook -----------------------------------------------------------------------------------


class Acknowledged(msgspec.Struct, kw_only=True):
    received: bool = True
    #: The event was stored before (a replay): processed once all the same.
    duplicate: bool


@post(
    "/billing/stripe/webhook",
    status_code=200,
    tags=["billing"],
    summary="Stripe's webhook: signature verified, event stored by id, acknowledged, processed once",
    dependencies={"inbox": Provide(provide_inbox, sync_to_thread=False)},
    request_max_body_size=1024 * 1024,
)
async def stripe_webhook(request: Request[Any, Any, Any], inbox: NamedDependency[Inbox]) -> Response[Acknowledged]:
    event, stored = await inbox.receive(await request.body(), request.headers.get("stripe-signature"))
    # Processed after the response (a replay too: it may have failed before; a processed one is skipped).
    return Response(Acknowledged(duplicate=not stored), background=BackgroundTask(inbox.process, event.id))


@get(
    "/billing/portal",
    tags=["billing"],
    summary="A dunning mail's link: a fresh Billing Portal session for its tenant (303), also while suspended",
    dependencies=_DEPENDENCIES,
)
async def billing_portal_link(
    billing: Billing, token: Annotated[str, QueryParameter(min_length=1, max_length=200)]
) -> Redirect:
    return Redirect(await billing.portal_from_link(token), status_code=303)
