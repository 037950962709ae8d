"""HTTP face of the audit trails and of impersonation.

- ``audited(connection, action, ...)``: the one-liner admin handlers wrap a platform action in
  (actor, source address and request id from the request; see ``audit.service.audited``).
- ``GET /admin/audit``: the platform audit, filtered, newest first, keyset pages.
- ``GET /audit`` under the tenant API (``/t/{slug}/api/audit``, ``/api/audit``): the tenant's own
  ``audit_log`` (``audit:read``, i.e. tenant_admin).
- ``POST /admin/tenants/{slug}/impersonate``: a super-admin's short-lived token inside an active tenant.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, get, post
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from controlplane.audit import service
from controlplane.audit.models import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Outcome, PlatformAuditPage, TenantAuditPage
from controlplane.audit.service import PlatformAction
from controlplane.auth.models import Permission, Role
from controlplane.auth.service import Authenticator, TokenPair
from controlplane.http.auth import admin_audit_context, admin_principal
from controlplane.platform import Platform
from controlplane.pools.service import TenantPools
from controlplane.routing.cache import TenantCache
from controlplane.routing.dependencies import (
    AUTH_STATE_KEY,
    TENANT_CACHE_STATE_KEY,
    TENANT_POOLS_STATE_KEY,
    requires,
)
from controlplane.routing.models import TenantRequest
from controlplane.routing.resolver import resolve

_NO_NUL = r"^[^\x00]*$"
Text = Annotated[str | None, QueryParameter(min_length=1, max_length=200, pattern=_NO_NUL)]
Action = Annotated[
    str | None,
    QueryParameter(min_length=1, max_length=200, pattern=_NO_NUL, description="exact, or a prefix ending in '*'"),
]
Since = Annotated[datetime | None, QueryParameter(description="ISO 8601; rows at or after (no offset: UTC)")]
Until = Annotated[datetime | None, QueryParameter(description="ISO 8601; rows before (no offset: UTC)")]
Cursor = Annotated[str | None, QueryParameter(max_length=1024, description="next_cursor of the previous page")]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE, description="rows per page")]


def audited(
    connection: ASGIConnection[Any, Any, Any, Any],
    action: str,
    *,
    slug: str | None = None,
    existing: bool = True,
    entity: str | None = None,
    entity_id: object = None,
    details: dict[str, Any] | None = None,
) -> AbstractAsyncContextManager[PlatformAction]:
    """``async with audited(request, "tenant.suspend", slug=slug): ...`` records one ``platform_audit``
    row for the block, by the admin (or automation) the guard let in: ``succeeded``, or ``failed``
    with the error code, the error itself re-raised unchanged."""
    platform: Platform = connection.app.state.platform
    return service.audited(
        platform.control,
        admin_audit_context(connection),
        action,
        slug=slug,
        existing=existing,
        entity=entity,
        entity_id=entity_id,
        details=details,
    )


@get("/admin/audit", tags=["audit"], summary="Platform audit: every platform action, newest first (keyset pages)")
async def platform_audit(
    platform: NamedDependency[Platform],
    tenant: Text = None,
    actor: Text = None,
    action: Action = None,
    since: Since = None,
    until: Until = None,
    outcome: FromQuery[Outcome | None] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
) -> PlatformAuditPage:
    query = service.audit_query(
        service.PLATFORM_LISTING,
        tenant_slug=tenant,
        actor=actor,
        action=action,
        since=since,
        until=until,
        outcome=outcome,
        cursor=cursor,
        limit=limit,
    )
    async with platform.control.connection() as conn:
        return await service.platform_page(conn, query)


@get("/audit", opt=requires(Permission.AUDIT_READ), tags=["audit"], summary="The tenant's audit log, newest first")
async def tenant_audit(
    tenant_request: NamedDependency[TenantRequest],
    actor: Text = None,
    action: Action = None,
    entity: Text = None,
    entity_id: Text = None,
    since: Since = None,
    until: Until = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
) -> TenantAuditPage:
    query = service.audit_query(
        service.TENANT_LISTING,
        actor=actor,
        action=action,
        entity=entity,
        entity_id=entity_id,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    return await service.tenant_page(tenant_request.conn, query)


class ImpersonationRequest(msgspec.Struct, forbid_unknown_fields=True):
    #: Why: kept in the platform audit and in the tenant's own audit log.
    reason: Annotated[str, msgspec.Meta(min_length=3, max_length=500, pattern=_NO_NUL)]
    role: Literal["tenant_admin", "collection_manager", "user"] = "tenant_admin"


@post(
    "/admin/tenants/{slug:str}/impersonate",
    status_code=200,
    tags=["tenants"],
    summary="A super-admin's short-lived token inside an active tenant (audited in both trails)",
)
async def impersonate(
    request: Request[Any, Any, Any], slug: FromPath[str], data: JSONBody[ImpersonationRequest]
) -> TokenPair:
    state = request.app.state
    details = {"reason": data.reason.strip(), "role": data.role}
    async with audited(request, "tenant.impersonate", slug=slug, details=details):
        principal = admin_principal(request)
        service.check_impersonator(principal)  # before the tenant: automation gets 403 whatever the slug
        cache: TenantCache = state[TENANT_CACHE_STATE_KEY]
        tenant = await resolve(cache, slug)
        auth: Authenticator = state[AUTH_STATE_KEY]
        pools: TenantPools = state[TENANT_POOLS_STATE_KEY]
        return await service.impersonate(
            auth, pools, tenant, principal, admin_audit_context(request), role=Role(data.role), reason=data.reason
        )


#: Handlers of the tenant API (mounted with ``TENANT_API_HANDLERS``).
TENANT_AUDIT_HANDLERS = [tenant_audit]
#: Handlers of ``/admin`` (behind ``admin_guard``).
ADMIN_AUDIT_HANDLERS = [platform_audit, impersonate]
