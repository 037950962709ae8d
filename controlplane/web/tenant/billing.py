"""The workspace's plan and billing (``{base}/billing``), for its admins (``billing:manage``).

Shows the plan, the subscription as last heard from the provider and the plans on offer. With a
provider (``CARDVAULT_BILLING``), "Upgrade" starts a checkout, "Change plan" moves a running subscription
to another plan (prorated) and "Manage billing" (``/billing/manage``: on a tenant's subdomain
``/billing/portal`` is the dunning mail's public link) opens the provider's portal, through the same
``BillingService`` calls and with the same audit rows (``billing.checkout``, ``billing.plan``,
``billing.portal``) as ``/t/{slug}/api/billing``. Without one the page says billing is not enabled and
offers none of them (the routes answer 409 ``billing_disabled``, as the API's do).

The provider's pages are on another origin. A form's response may not redirect there (the pages'
``form-action 'self'`` policy applies to a form's redirects too), so the form answers with a page that
sends the browser on by a refresh and a plain link, neither of which that policy governs.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Template

from controlplane.audit import repository as audit
from controlplane.auth.models import Permission
from controlplane.billing.models import DUNNING, PAYING, PlanRequest
from controlplane.billing.routes import live_usage
from controlplane.billing.service import BillingService
from controlplane.context import TenantRequest
from controlplane.errors import CardVaultError
from controlplane.http.state import BILLING_STATE_KEY
from controlplane.http.tenant_api import requires
from controlplane.registry.models import PRICE_CURRENCY, TIER_PRICES, TIER_QUOTAS, QuotaType, Tier
from controlplane.web.pages import page, see_other
from controlplane.web.sessions import tenant_base
from controlplane.web.templating import human_bytes, human_number
from controlplane.web.tenant.users import REFUSALS, parse_form

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
Ctx = NamedDependency[TenantRequest]
#: ``?checkout=`` when the provider sends the browser back (``BillingService.checkout``'s URLs).
_RETURNS = {
    "success": "Thank you: the payment went through. The new plan applies as soon as the provider confirms it.",
    "canceled": "The checkout was cancelled; nothing changed.",
}
#: ``?done=plan`` after a plan change.
_PLAN_CHANGED = "The plan was changed; the difference is prorated on the next invoice."


_PLAN_QUOTAS = ((QuotaType.USERS, "users"), (QuotaType.CARDS, "cards"), (QuotaType.STORAGE_BYTES, "storage"))


@dataclasses.dataclass(frozen=True)
class Plan:
    tier: str
    monthly: str
    yearly: str
    limits: list[tuple[str, str]]
    current: bool


def _money(cents: int) -> str:
    return "free" if cents == 0 else f"{cents / 100:,.2f} {PRICE_CURRENCY.upper()}"


def _plans(current: Tier) -> list[Plan]:
    plans = []
    for tier in Tier:
        quotas = TIER_QUOTAS[tier]
        limits = []
        for quota, label in _PLAN_QUOTAS:
            limit = quotas.get(quota)
            fmt = human_bytes if quota is QuotaType.STORAGE_BYTES else human_number
            limits.append((label, "unlimited" if limit is None else fmt(limit)))
        price = TIER_PRICES[tier]
        plans.append(Plan(tier.value, _money(price.monthly), _money(price.yearly), limits, tier is current))
    return plans


def _billing(request: Request[Any, Any, Any]) -> BillingService:
    billing: BillingService = request.app.state[BILLING_STATE_KEY]
    return billing


async def billing_page(
    request: Request[Any, Any, Any], ctx: TenantRequest, *, flash_error: str | None = None, status_code: int = 200
) -> Template:
    """The billing page: a running subscription changes plan, any other tenant starts a checkout."""
    billing = _billing(request)
    overview = await billing.overview(ctx.tenant.id)
    status = overview.subscription_status
    return page(
        request,
        "tenant/billing.html",
        principal=ctx.principal,
        title="Billing",
        enabled=billing.provider is not None,
        overview=overview,
        subscribed=status in PAYING or status in DUNNING,
        plans=_plans(overview.tier),
        flash=_notice(request),
        flash_error=flash_error,
        status_code=status_code,
    )


def _notice(request: Request[Any, Any, Any]) -> str | None:
    if request.method != "GET":
        return None
    if request.query_params.get("done") == "plan":
        return _PLAN_CHANGED
    return _RETURNS.get(request.query_params.get("checkout", ""))


def _onward(request: Request[Any, Any, Any], ctx: TenantRequest, url: str, what: str) -> Template:
    """The page sending the browser on to the provider (see the module docstring)."""
    return page(request, "tenant/billing_redirect.html", principal=ctx.principal, title=what, url=url, what=what)


@get("/billing", name="tenant_ui_billing", opt=requires(Permission.BILLING_MANAGE))
async def show(request: Request[Any, Any, Any], tenant_request: Ctx) -> Template:
    return await billing_page(request, tenant_request)


@post("/billing/checkout", name="tenant_ui_billing_checkout", opt=requires(Permission.BILLING_MANAGE), status_code=200)
async def checkout(request: Request[Any, Any, Any], tenant_request: Ctx, data: Form) -> Response[Any]:
    billing = _billing(request)
    try:
        billing.require_provider()
        plan = parse_form(PlanRequest, {"tier": data.get("tier", ""), "interval": data.get("interval", "month")})
        url = await billing.checkout(await billing.tenant(tenant_request.tenant.id), plan.tier, plan.interval)
    except CardVaultError as exc:
        if exc.status not in REFUSALS:
            raise
        return await billing_page(request, tenant_request, flash_error=exc.detail, status_code=exc.status)
    details = {"tier": plan.tier.value, "interval": plan.interval}
    await audit.record_tenant(tenant_request.conn, tenant_request.audit, "billing.checkout", details=details)
    return _onward(request, tenant_request, url, "Checkout")


@post("/billing/plan", name="tenant_ui_billing_plan", opt=requires(Permission.BILLING_MANAGE), status_code=303)
async def change_plan(request: Request[Any, Any, Any], tenant_request: Ctx, data: Form) -> Response[Any]:
    billing = _billing(request)
    try:
        billing.require_provider()
        plan = parse_form(PlanRequest, {"tier": data.get("tier", ""), "interval": data.get("interval", "month")})
        tenant = await billing.tenant(tenant_request.tenant.id)
        usage = await live_usage(tenant_request.conn)
        await billing.change_plan(tenant, plan.tier, plan.interval, usage=usage)
    except CardVaultError as exc:
        if exc.status not in REFUSALS:
            raise
        await tenant_request.conn.rollback()
        return await billing_page(request, tenant_request, flash_error=exc.detail, status_code=exc.status)
    details = {"tier": plan.tier.value, "interval": plan.interval, "from": tenant.subscription_tier.value}
    await audit.record_tenant(tenant_request.conn, tenant_request.audit, "billing.plan", details=details)
    return see_other(request, f"{tenant_base(request.scope)}/billing?done=plan")


@post("/billing/manage", name="tenant_ui_billing_manage", opt=requires(Permission.BILLING_MANAGE), status_code=200)
async def portal(request: Request[Any, Any, Any], tenant_request: Ctx) -> Response[Any]:
    billing = _billing(request)
    try:
        billing.require_provider()
        url = await billing.portal(await billing.tenant(tenant_request.tenant.id))
    except CardVaultError as exc:
        if exc.status not in REFUSALS:
            raise
        return await billing_page(request, tenant_request, flash_error=exc.detail, status_code=exc.status)
    await audit.record_tenant(tenant_request.conn, tenant_request.audit, "billing.portal")
    return _onward(request, tenant_request, url, "Billing portal")


HANDLERS: list[Any] = [show, checkout, change_plan, portal]
