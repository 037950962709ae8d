"""The overview (``GET /admin/ui/`` signed in): tenants by status and tier, fleet fill, what is firing,
and the scheduler's job health, each linking to its own page.

Three statements whatever the fleet's size (tenant counts from the status/tier index, open quota alerts,
tenants with many 5xx) plus, before the collectors' first cycle, the servers' sizes; the rest is in
memory (the collectors' snapshot, the health round, the backups' standing, the job stats).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response

from controlplane.auth.models import Principal
from controlplane.http.state import PLATFORM_STATE_KEY
from controlplane.platform import Platform
from controlplane.registry.models import TenantStatus, Tier
from controlplane.web.admin import alerts, fleet
from controlplane.web.admin.tenant_list_repository import status_tier_counts
from controlplane.web.charts import bar_chart
from controlplane.web.pages import page
from controlplane.web.templating import human_number

#: Firing alerts the overview lists (the alerts page has them all).
TOP_ALERTS = 5


async def overview_page(request: Request[Any, Any, Any], principal: Principal) -> Response[Any]:
    platform: Platform = request.app.state[PLATFORM_STATE_KEY]
    async with platform.control.connection() as conn:
        counts = await status_tier_counts(conn)
        servers = await fleet.server_fill(request.app.state, conn)
        firing = await alerts.firing(request.app.state, conn)
    by_status = {status.value: 0 for status in TenantStatus}
    table = {(status, tier): n for status, tier, n in counts}
    for status, _, n in counts:
        by_status[status] = by_status.get(status, 0) + n
    total_bytes = sum(server.database_bytes for server in servers)
    return page(
        request,
        "admin/overview.html",
        principal=principal,
        title="Overview",
        total=sum(by_status.values()),
        by_status=by_status,
        tiers=[tier.value for tier in Tier],
        table=table,
        chart=bar_chart("Tenants by status", list(by_status.items()), fmt=human_number, empty="No tenants yet"),
        servers=servers,
        total_bytes=total_bytes,
        firing=firing,
        top=firing.items[:TOP_ALERTS],
        jobs=alerts.job_rows(request.app.state),
    )


HANDLERS: list[Any] = []
