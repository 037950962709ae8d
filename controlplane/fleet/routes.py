"""Admin API for the fleet: ``/admin/servers``."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, KwargDefinition

from controlplane.fleet.models import SERVER_NAME_PATTERN, Server, ServerStatus
from controlplane.fleet.repository import list_servers
from controlplane.platform import Platform


class AddServer(msgspec.Struct, forbid_unknown_fields=True):
    # Documented in the OpenAPI schema; the fleet service checks the name (validation_failed).
    name: Annotated[str, KwargDefinition(pattern=SERVER_NAME_PATTERN.pattern)]
    dsn: Annotated[str, KwargDefinition(description="libpq DSN of a user with CREATEDB and CREATEROLE")]


class ServersController(Controller):
    path = "/admin/servers"
    tags = ["fleet"]

    @get("/", summary="Registered database servers with their tenant counts")
    async def list_all(self, platform: NamedDependency[Platform]) -> list[Server]:
        async with platform.control.connection() as conn:
            return await list_servers(conn)

    @post("/", summary="Register a database server (its DSN must be able to create databases and roles)")
    async def add(self, data: JSONBody[AddServer], platform: NamedDependency[Platform]) -> Server:
        async with platform.control.connection() as conn:
            return await platform.fleet.register(conn, data.name, data.dsn)

    @post("/{name:str}/drain", status_code=200, summary="Stop placing new tenants on the server")
    async def drain(self, name: FromPath[str], platform: NamedDependency[Platform]) -> Server:
        async with platform.control.connection() as conn:
            return await platform.fleet.set_status(conn, name, ServerStatus.DRAINING)

    @post("/{name:str}/activate", status_code=200, summary="Place new tenants on the server again")
    async def activate(self, name: FromPath[str], platform: NamedDependency[Platform]) -> Server:
        async with platform.control.connection() as conn:
            return await platform.fleet.set_status(conn, name, ServerStatus.ACTIVE)
