"""Admin HTTP face of per-tenant performance: ``GET /admin/tenants/{slug}/performance?hours=48``.

Hourly requests, 5xx and 4xx rates and latency estimates (mean, p50, p95) of the tenant's API, from
``tenant_request_stats`` (see ``controlplane.usage.performance``).
"""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from controlplane.errors import TenantNotFound
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.registry.models import SLUG_PATTERN
from controlplane.usage.performance import MAX_HOURS, TenantPerformance, tenant_performance


@get(
    "/admin/tenants/{slug:str}/performance",
    tags=["usage"],
    summary="One tenant's API requests, error rates and latency per hour",
)
async def tenant_performance_view(
    slug: FromPath[str],
    platform: NamedDependency[Platform],
    hours: Annotated[
        int, QueryParameter(ge=1, le=MAX_HOURS, description="hours to cover, the current one included")
    ] = 48,
) -> TenantPerformance:
    async with platform.control.connection() as conn:
        tenant = await registry.get_by_slug(conn, slug) if SLUG_PATTERN.fullmatch(slug) else None
        if tenant is None:
            raise TenantNotFound(f"no tenant with slug {slug!r}", slug=slug)
        return await tenant_performance(conn, tenant.id, tenant.slug, hours)


#: Handlers of ``/admin`` (behind ``admin_guard``).
ADMIN_PERFORMANCE_HANDLERS = [tenant_performance_view]
