"""HTTP face of the audit trails.

- ``audited(connection, action, ...)``: the one-liner admin handlers wrap a platform action in
  (actor, source address and request id from the request; see ``audit.service.platform_action``).
- ``GET /admin/audit``: the platform audit, filtered, newest first, keyset pages.
- ``GET /audit`` under the tenant API (``/t/{slug}/api/audit``, ``/api/audit``): the tenant's own
  ``audit_log`` (``audit:read``, i.e. tenant_admin).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Annotated, Any

from litestar import get
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter

from controlplane.audit import service
from controlplane.audit.models import Outcome, PlatformAuditPage, TenantAuditPage
from controlplane.audit.service import PlatformAction
from controlplane.auth.models import Permission
from controlplane.context import TenantRequest
from controlplane.http.admin import admin_audit_context
from controlplane.http.params import AuditLimit, Cursor
from controlplane.http.state import PLATFORM_STATE_KEY
from controlplane.http.tenant_api import requires
from controlplane.paging import AUDIT_PAGES
from controlplane.platform import Platform

_NO_NUL = r"^[^\x00]*$"
Text = Annotated[str | None, QueryParameter(min_length=1, max_length=200, pattern=_NO_NUL)]
Action = Annotated[
    str | None,
    QueryParameter(min_length=1, max_length=200, pattern=_NO_NUL, description="exact, or a prefix ending in '*'"),
]
Since = Annotated[datetime | None, QueryParameter(description="ISO 8601; rows at or after (no offset: UTC)")]
Until = Annotated[datetime | None, QueryParameter(description="ISO 8601; rows before (no offset: UTC)")]


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
    platform: Platform = connection.app.state[PLATFORM_STATE_KEY]
    return service.platform_action(
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
    limit: AuditLimit = AUDIT_PAGES.default,
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
    limit: AuditLimit = AUDIT_PAGES.default,
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


#: Handlers of the tenant API (mounted with ``TENANT_API_HANDLERS``).
TENANT_AUDIT_HANDLERS = [tenant_audit]
#: Handlers of ``/admin`` (behind ``admin_guard``).
ADMIN_AUDIT_HANDLERS = [platform_audit]
