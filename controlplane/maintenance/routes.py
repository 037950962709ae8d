"""Admin HTTP face of maintenance: ``/admin/tenants/{slug}/health``, ``/slow-queries``, ``/maintenance``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter

from controlplane.audit.routes import audited
from controlplane.http.state import TENANT_CACHE_STATE_KEY
from controlplane.maintenance import service
from controlplane.maintenance.models import Health, MaintenanceResult, SlowQuery
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService


@get("/admin/tenants/{slug:str}/health", tags=["maintenance"], summary="Connect as the tenant and run SELECT 1, timed")
async def tenant_health(
    request: Request[Any, Any, Any],
    slug: FromPath[str],
    tenants: NamedDependency[TenantService],
    platform: NamedDependency[Platform],
) -> Health:
    tenant = await tenants.get(slug)
    return await service.check_health(platform, request.app.state[TENANT_CACHE_STATE_KEY], tenant)


@get(
    "/admin/tenants/{slug:str}/slow-queries",
    tags=["maintenance"],
    summary="The tenant's top statements by total time (pg_stat_statements; 409 when the server lacks it)",
)
async def tenant_slow_queries(
    slug: FromPath[str],
    tenants: NamedDependency[TenantService],
    platform: NamedDependency[Platform],
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 10,
) -> list[SlowQuery]:
    return await service.slow_queries(platform, await tenants.get(slug), limit)


@post(
    "/admin/tenants/{slug:str}/maintenance",
    status_code=200,
    tags=["maintenance"],
    summary="VACUUM (ANALYZE) or ANALYZE the tenant's database now",
)
async def tenant_maintenance(
    request: Request[Any, Any, Any],
    slug: FromPath[str],
    tenants: NamedDependency[TenantService],
    platform: NamedDependency[Platform],
    action: FromQuery[Literal["analyze", "vacuum"]] = "analyze",
) -> MaintenanceResult:
    async with audited(request, f"tenant.{action}", slug=slug):
        tenant = await tenants.get(slug)
        (result,) = await service.maintain(platform, [tenant], action, concurrency=1)
        return result


MAINTENANCE_HANDLERS = [tenant_health, tenant_slow_queries, tenant_maintenance]
