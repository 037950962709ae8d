"""Admin API of tenant moves (super-admins and the automation token only: ``/admin/*``).

- ``POST /admin/tenants/{slug}/move`` ``{"to": "server-name"}``: moves the tenant online and answers 200 with
  the finished move (``freeze_ms``: how long its writes were refused). Refused with 409 ``move_refused``
  (nothing changed) when the target is the tenant's own server, is draining or full, or the tenant is not
  active; 400 for a server that does not exist; 409 ``operation_in_progress`` while another operation on
  the tenant runs.
- ``GET /admin/tenants/{slug}/moves``: the tenant's moves, newest first.

Draining a server and rebalancing the fleet (moves queued on the task queue): ``fleet_routes``.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from controlplane.audit.routes import audited
from controlplane.fleet.models import SERVER_NAME_PATTERN
from controlplane.http.admin import admin_principal
from controlplane.moves.fleet_routes import ADMIN_FLEET_MOVE_HANDLERS
from controlplane.moves.models import Move
from controlplane.moves.service import MoveService
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService


class MoveRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Where the tenant goes: a registered server's name."""

    to: Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern=SERVER_NAME_PATTERN.pattern)]


@post("/admin/tenants/{slug:str}/move", status_code=200, tags=["moves"], summary="Move a tenant to another server")
async def move_tenant(
    request: Request[Any, Any, Any],
    slug: FromPath[str],
    data: JSONBody[MoveRequest],
    platform: NamedDependency[Platform],
    tenants: NamedDependency[TenantService],
) -> Move:
    async with audited(request, "tenant.move", slug=slug, details={"to": data.to}) as audit:
        move = await MoveService(platform, tenants).move(slug, data.to, requested_by=admin_principal(request).subject)
        audit.details |= {"move": move.id, "freeze_ms": move.freeze_ms}
        return move


@get("/admin/tenants/{slug:str}/moves", tags=["moves"], summary="A tenant's moves, newest first")
async def tenant_moves(
    slug: FromPath[str], platform: NamedDependency[Platform], tenants: NamedDependency[TenantService]
) -> list[Move]:
    return await MoveService(platform, tenants).moves(slug)


#: With the drain and rebalance handlers (``fleet_routes``).
ADMIN_MOVE_HANDLERS = [move_tenant, tenant_moves, *ADMIN_FLEET_MOVE_HANDLERS]
