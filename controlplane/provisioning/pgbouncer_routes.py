"""Admin API for a server's PgBouncer: ``/admin/servers/{name}/pgbouncer`` (show, set, remove).

A sub-resource of the server rather than fields of its PATCH: setting it writes files and RELOADs
PgBouncer, and the answer is what that did (``PgBouncerSync``), not the server.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, KwargDefinition

from controlplane.audit.routes import audited
from controlplane.errors import NotFound
from controlplane.fleet.pgbouncer import PgBouncers
from controlplane.fleet.pgbouncer_models import PgBouncerSync
from controlplane.platform import Platform
from controlplane.pools.models import STATEMENT_TIMEOUT


class PgBouncerSetting(msgspec.Struct, forbid_unknown_fields=True):
    address: Annotated[str, KwargDefinition(description="HOST:PORT PgBouncer listens on (tenant connections go there)")]
    config_dir: Annotated[
        str,
        KwargDefinition(
            description="existing directory, shared with PgBouncer, where pgbouncer.ini and userlist.txt are written"
        ),
    ]


class PgBouncerView(msgspec.Struct):
    server: str
    address: str
    config_dir: str


def pgbouncers(platform: Platform) -> PgBouncers:
    """A ``PgBouncers`` for one admin operation (the serving one hears of the change through NOTIFY)."""
    settings = platform.settings
    return PgBouncers(
        platform.control, platform.box, settings.pools, settings.database, statement_timeout=STATEMENT_TIMEOUT
    )


class PgBouncerController(Controller):
    path = "/admin/servers/{name:str}/pgbouncer"
    tags = ["fleet"]

    @get("/", summary="The server's PgBouncer (404 when tenant connections go to the server directly)")
    async def show(self, name: FromPath[str], platform: NamedDependency[Platform]) -> PgBouncerView:
        async with platform.control.connection() as conn:
            server = await platform.fleet.get(conn, name)
            stored = await pgbouncers(platform).describe(conn, server)
        if stored is None:
            raise NotFound(f"server {name!r} has no PgBouncer", name=name)
        return PgBouncerView(server=server.name, address=str(stored.address), config_dir=stored.config_dir)

    @put("/", status_code=200, summary="Put PgBouncer in front of the server: writes its files and reloads it")
    async def set(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        data: JSONBody[PgBouncerSetting],
        platform: NamedDependency[Platform],
    ) -> PgBouncerSync:
        details = {"address": data.address, "config_dir": data.config_dir}
        async with (
            audited(request, "server.set_pgbouncer", entity="server", entity_id=name, details=details),
            platform.control.connection() as conn,
        ):
            server = await platform.fleet.get(conn, name)
            return await pgbouncers(platform).configure(conn, server, data.address, data.config_dir)

    @delete("/", status_code=204, summary="Tenant connections go to the server directly again")
    async def remove(
        self, request: Request[Any, Any, Any], name: FromPath[str], platform: NamedDependency[Platform]
    ) -> Response[None]:
        async with (
            audited(request, "server.remove_pgbouncer", entity="server", entity_id=name),
            platform.control.connection() as conn,
        ):
            server = await platform.fleet.get(conn, name)
            if not await pgbouncers(platform).remove(conn, server):
                raise NotFound(f"server {name!r} has no PgBouncer", name=name)
        return Response(None, status_code=204)


ADMIN_PGBOUNCER_HANDLERS = [PgBouncerController]
