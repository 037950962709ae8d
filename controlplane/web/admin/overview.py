"""(being built) The overview: tenants by status and tier, fleet fill, firing alerts, job health."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response

from controlplane.auth.models import Principal
from controlplane.web.pages import page


async def overview_page(request: Request[Any, Any, Any], principal: Principal) -> Response[Any]:
    return page(request, "admin/overview.html", principal=principal, title="Overview")


HANDLERS: list[Any] = []
