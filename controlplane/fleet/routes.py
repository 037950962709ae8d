"""Admin API for the fleet: ``/admin/servers``."""

from __future__ import annotations

import msgspec
from litestar import Controller, get, post

from controlplane.fleet.models import Server, ServerStatus
from controlplane.fleet.repository import list_servers
from controlplane.platform import Platform


class AddServer(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    dsn: str


class ServersController(Controller):
    path = "/admin/servers"
    tags = ["fleet"]

    @get("/", summary="Registered database servers with their tenant counts")
    async def list_all(self, platform: Platform) -> list[Server]:
        async with platform.control.connection() as conn:
            return await list_servers(conn)

    @post("/", summary="Register a database server (its DSN must be able to create databases and roles)")
    async def add(self, data: AddServer, platform: Platform) -> Server:
        async with platform.control.connection() as conn:
            return await platform.fleet.register(conn, data.name, data.dsn)

    @post("/{name:str}/drain", status_code=200, summary="Stop placing new tenants on the server")
    async def drain(self, name: str, platform: Platform) -> Server:
        async with platform.control.connection() as conn:
            return await platform.fleet.set_status(conn, name, ServerStatus.DRAINING)

    @post("/{name:str}/activate", status_code=200, summary="Place new tenants on the server again")
    async def activate(self, name: str, platform: Platform) -> Server:
        async with platform.control.connection() as conn:
            return await platform.fleet.set_status(conn, name, ServerStatus.ACTIVE)
