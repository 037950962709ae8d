"""Admin API for tenants: ``/admin/tenants`` and ``/admin/reconcile``."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, KwargDefinition, QueryParameter

from controlplane.audit.routes import audited
from controlplane.auth.passwords import normalize_email, validate_password
from controlplane.auth.service import Authenticator
from controlplane.errors import TenantNotFound, ValidationFailed
from controlplane.http.state import AUTH_STATE_KEY
from controlplane.platform import Platform
from controlplane.provisioning import repository as ledger
from controlplane.provisioning.models import Operation, ReconcileReport
from controlplane.provisioning.reconciler import Reconciler
from controlplane.provisioning.service import FirstAdmin, TenantService
from controlplane.registry import repository as registry
from controlplane.registry.models import SLUG_PATTERN, Quota, Tenant, TenantStatus, Tier

#: A display name: PostgreSQL text cannot hold NUL, so it is refused here (400) rather than by the driver.
Name = Annotated[str, msgspec.Meta(pattern=r"^[^\x00]*$")]
#: Slug and tier rules, documented in the OpenAPI schema only: the service checks them and answers with
#: its own codes (``invalid_slug``, ``invalid_tier``) instead of a generic ``validation_failed``.
_SLUG_DOC = KwargDefinition(pattern=SLUG_PATTERN.pattern, description="3-63 of a-z, 0-9 and '-'; not reserved")
_TIER_DOC = KwargDefinition(schema_extra={"enum": [t.value for t in Tier]})
_TIER_OR_NULL_DOC = KwargDefinition(schema_extra={"enum": [*(t.value for t in Tier), None]})


def _existing(slug: str) -> str:
    """``slug`` from a path; one that no tenant can have (the registry holds valid slugs only) is a 404."""
    if not SLUG_PATTERN.fullmatch(slug):
        raise TenantNotFound(f"no tenant with slug {slug!r}", slug=slug)
    return slug


class CreateTenant(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    slug: Annotated[str, _SLUG_DOC]
    tier: Annotated[str, _TIER_DOC] = Tier.STARTER.value
    #: The first tenant_admin (both or neither).
    admin_email: Annotated[str, msgspec.Meta(max_length=254, pattern=r"^[^\x00]*$")] | None = None
    admin_password: Annotated[str, msgspec.Meta(max_length=1024, pattern=r"^[^\x00]*$")] | None = None


async def first_admin(auth: Authenticator, data: CreateTenant) -> FirstAdmin | None:
    """The tenant_admin to provision with ``data``'s tenant (password hashed), if one was asked for."""
    if data.admin_email is None and data.admin_password is None:
        return None
    if data.admin_email is None or data.admin_password is None:
        raise ValidationFailed("admin_email and admin_password come together")
    email = normalize_email(data.admin_email)
    return FirstAdmin(email=email, password_hash=await auth.passwords.hash(validate_password(data.admin_password)))


class UpdateTenant(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | None = None
    slug: Annotated[str | None, _SLUG_DOC] = None
    tier: Annotated[str | None, _TIER_OR_NULL_DOC] = None


class TenantPage(msgspec.Struct):
    items: list[Tenant]
    next_cursor: str | None


class TenantDetail(msgspec.Struct):
    tenant: Tenant
    quotas: list[Quota]
    operations: list[Operation]


class TenantsController(Controller):
    path = "/admin/tenants"
    tags = ["tenants"]

    @post("/", summary="Create and provision a tenant, optionally with its first tenant_admin")
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[CreateTenant], tenants: NamedDependency[TenantService]
    ) -> Tenant:
        details = {"name": data.name, "tier": data.tier, "admin_email": data.admin_email}
        async with audited(request, "tenant.create", slug=data.slug, existing=False, details=details) as audit:
            admin = await first_admin(request.app.state[AUTH_STATE_KEY], data)
            return audit.result(await tenants.create(name=data.name, slug=data.slug, tier=data.tier, admin=admin))

    @get("/", summary="List tenants (filter by status and tier; keyset pages ordered by slug)")
    async def list_tenants(
        self,
        tenants: NamedDependency[TenantService],
        status: FromQuery[TenantStatus | None] = None,
        tier: FromQuery[Tier | None] = None,
        cursor: Annotated[str | None, QueryParameter(pattern=r"^[a-z0-9-]{1,63}$")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> TenantPage:
        items = await tenants.list(status=status, tier=tier, after=cursor, limit=limit + 1)
        more = len(items) > limit
        items = items[:limit]
        return TenantPage(items=items, next_cursor=items[-1].slug if more else None)

    @get("/{slug:str}", summary="One tenant with its quotas and recent operations")
    async def detail(
        self, slug: FromPath[str], tenants: NamedDependency[TenantService], platform: NamedDependency[Platform]
    ) -> TenantDetail:
        tenant = await tenants.get(_existing(slug))
        async with platform.control.connection() as conn:
            quotas = await registry.get_quotas(conn, tenant.id)
            operations = await ledger.for_tenant(conn, tenant.id, limit=20)
        return TenantDetail(tenant=tenant, quotas=quotas, operations=operations)

    @patch("/{slug:str}", summary="Rename (slug, name) or change tier")
    async def update(
        self,
        request: Request[Any, Any, Any],
        slug: FromPath[str],
        data: JSONBody[UpdateTenant],
        tenants: NamedDependency[TenantService],
    ) -> Tenant:
        # A tier change is a quota change: the row's "changes" show the old and new tier.
        asked = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
        async with audited(request, "tenant.update", slug=slug, details={"requested": asked}) as audit:
            tenant = await tenants.update(_existing(slug), name=data.name, new_slug=data.slug, tier=data.tier)
            return audit.result(tenant)

    @delete(
        "/{slug:str}",
        status_code=200,
        summary="Soft delete (purged after the grace period); now=true purges at once",
    )
    async def remove(
        self,
        request: Request[Any, Any, Any],
        slug: FromPath[str],
        tenants: NamedDependency[TenantService],
        now: FromQuery[bool] = False,
    ) -> Response[Tenant | None]:
        async with audited(request, "tenant.delete", slug=slug, details={"now": now}) as audit:
            tenant = audit.result(await tenants.delete(_existing(slug), now=now))
        return Response(tenant, status_code=200 if tenant else 204)

    @post("/{slug:str}/suspend", status_code=200, summary="Lock the tenant out of its database")
    async def suspend(
        self, request: Request[Any, Any, Any], slug: FromPath[str], tenants: NamedDependency[TenantService]
    ) -> Tenant:
        async with audited(request, "tenant.suspend", slug=slug) as audit:
            return audit.result(await tenants.suspend(_existing(slug)))

    @post("/{slug:str}/resume", status_code=200, summary="Re-open a suspended tenant or cancel a deletion")
    async def resume(
        self, request: Request[Any, Any, Any], slug: FromPath[str], tenants: NamedDependency[TenantService]
    ) -> Tenant:
        async with audited(request, "tenant.resume", slug=slug) as audit:
            return audit.result(await tenants.resume(_existing(slug)))


@post("/admin/reconcile", status_code=200, tags=["tenants"], summary="Run one reconciler cycle")
async def reconcile(
    request: Request[Any, Any, Any],
    tenants: NamedDependency[TenantService],
    platform: NamedDependency[Platform],
    fix: FromQuery[bool] = False,
) -> ReconcileReport:
    async with audited(request, "reconcile.run", details={"fix": fix}) as audit:
        report = await Reconciler(platform, tenants).run(fix=fix)
        audit.details["findings"] = len(report.findings)
        return report
