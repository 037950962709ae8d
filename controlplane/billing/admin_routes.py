"""Admin HTTP face of the overage ledger (behind ``admin_guard``: super-admins and automation).

- ``GET /admin/billing/usage``: every overage report, newest period first, keyset pages; filters
  ``tenant`` (slug), ``meter`` and ``state`` (pending, reported, failed).
- ``POST /admin/billing/usage/{id}/retry``: one more attempt for an unreported row (a ``failed`` one
  included) at the next reporting run (audited ``billing.usage.retry``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Request, post
from litestar import get as http_get
from litestar.di import NamedDependency
from litestar.params import FromQuery, PathParameter, QueryParameter

from controlplane.audit.routes import audited
from controlplane.billing import metering
from controlplane.billing.metering import USAGE_PAGES, ReportState, UsageReportPage
from controlplane.errors import TenantNotFound
from controlplane.http.params import Cursor
from controlplane.paging import MAX_ID
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.registry.models import SLUG_PATTERN, Overage

_NO_NUL = r"^[^\x00]*$"
Limit = Annotated[int, QueryParameter(ge=1, le=USAGE_PAGES.maximum, description="rows per page")]


@http_get(
    "/admin/billing/usage",
    tags=["billing"],
    summary="Overage reports to the billing provider, newest period first (keyset pages)",
)
async def list_usage_reports(
    platform: NamedDependency[Platform],
    tenant: Annotated[str | None, QueryParameter(min_length=1, max_length=63, pattern=_NO_NUL)] = None,
    meter: FromQuery[Overage | None] = None,
    # "state" is a reserved parameter name in Litestar (the app state): renamed, same query key.
    report_state: Annotated[ReportState | None, QueryParameter(name="state")] = None,
    cursor: Cursor = None,
    limit: Limit = USAGE_PAGES.default,
) -> UsageReportPage:
    async with platform.control.connection() as conn:
        tenant_id = None
        if tenant is not None:
            found = await registry.get_by_slug(conn, tenant) if SLUG_PATTERN.fullmatch(tenant) else None
            if found is None:
                raise TenantNotFound(f"no tenant with slug {tenant!r}", slug=tenant)
            tenant_id = found.id
        return await metering.list_reports(
            conn, tenant_id=tenant_id, meter=meter, state=report_state, cursor=cursor, limit=limit
        )


@post(
    "/admin/billing/usage/{report_id:int}/retry",
    status_code=204,
    tags=["billing"],
    summary="Report an unsent (or failed) overage row again at the next run",
)
async def retry_usage_report(
    request: Request[Any, Any, Any],
    report_id: Annotated[int, PathParameter(ge=1, le=MAX_ID)],
    platform: NamedDependency[Platform],
) -> None:
    async with (
        audited(request, "billing.usage.retry", existing=False, entity="usage_report", entity_id=report_id),
        platform.control.connection() as conn,
    ):
        await metering.retry_report(conn, report_id, now=datetime.now(UTC))


#: Handlers of ``/admin`` (behind ``admin_guard``).
ADMIN_BILLING_USAGE_HANDLERS = [list_usage_reports, retry_usage_report]
