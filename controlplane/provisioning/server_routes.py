"""Admin API for the fleet's servers: ``/admin/servers`` (register, change the DSN or TLS, activate; the drain,
which moves tenants, is ``controlplane.moves.routes``').

Here rather than in ``controlplane.fleet``: the platform layer and the tenant API's wiring stand on the
fleet, so the fleet itself has no HTTP face.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, KwargDefinition
from msgspec import UNSET, UnsetType

from controlplane.audit.routes import audited
from controlplane.fleet.models import SERVER_NAME_PATTERN, Server, ServerStatus
from controlplane.fleet.repository import list_servers
from controlplane.fleet.tls import SSLMODES, ServerTls
from controlplane.platform import Platform

_SSLMODE = (
    f"libpq sslmode of every connection to the server: {', '.join(SSLMODES)} (verify-ca and verify-full need "
    "root_cert, or sslrootcert=system in the DSN)"
)
_ROOT_CERT = "PEM of the certificate authority (or authorities) that signed the server's certificate"


class AddServer(msgspec.Struct, forbid_unknown_fields=True):
    # Documented in the OpenAPI schema; the fleet service checks the name (validation_failed).
    name: Annotated[str, KwargDefinition(pattern=SERVER_NAME_PATTERN.pattern)]
    dsn: Annotated[
        str,
        KwargDefinition(
            description="libpq DSN naming host, port, user and dbname, of a user with CREATEDB and CREATEROLE"
        ),
    ]
    sslmode: Annotated[str | None, KwargDefinition(description=_SSLMODE)] = None
    root_cert: Annotated[str | None, KwargDefinition(description=_ROOT_CERT)] = None


class ServerTlsChange(msgspec.Struct, forbid_unknown_fields=True):
    """A field left out is unchanged; ``null`` clears it."""

    sslmode: Annotated[str | UnsetType | None, KwargDefinition(description=_SSLMODE)] = UNSET
    root_cert: Annotated[str | UnsetType | None, KwargDefinition(description=_ROOT_CERT)] = UNSET


class ServerDsn(msgspec.Struct, forbid_unknown_fields=True):
    dsn: Annotated[
        str,
        KwargDefinition(
            description="the server's new libpq DSN (host, port, user, dbname); must reach the same server"
        ),
    ]


class ServersController(Controller):
    path = "/admin/servers"
    tags = ["fleet"]

    @get("/", summary="Registered database servers with their tenant counts")
    async def list_all(self, platform: NamedDependency[Platform]) -> list[Server]:
        async with platform.control.connection() as conn:
            return await list_servers(conn)

    @post("/", summary="Register a database server (its DSN must be able to create databases and roles)")
    async def add(
        self, request: Request[Any, Any, Any], data: JSONBody[AddServer], platform: NamedDependency[Platform]
    ) -> Server:
        async with audited(request, "server.add", entity="server", entity_id=data.name) as audit:
            async with platform.control.connection() as conn:
                tls = ServerTls(sslmode=data.sslmode, root_cert=data.root_cert)
                server = await platform.fleet.register(conn, data.name, data.dsn, tls_settings=tls)
            audit.details["dsn"] = server.dsn_display  # never the DSN as given: it may hold a password
            audit.details |= {"sslmode": server.sslmode, "root_cert_sha256": server.root_cert_sha256}
            return server

    @patch("/{name:str}", summary="Change the server's TLS settings (sslmode, root certificate); checked first")
    async def set_tls(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        data: JSONBody[ServerTlsChange],
        platform: NamedDependency[Platform],
    ) -> Server:
        async with audited(request, "server.set_tls", entity="server", entity_id=name) as audit:
            async with platform.control.connection() as conn:
                server = await platform.fleet.update_tls(conn, name, sslmode=data.sslmode, root_cert=data.root_cert)
            audit.details |= {"sslmode": server.sslmode, "root_cert_sha256": server.root_cert_sha256}
            return server

    @put(
        "/{name:str}/dsn",
        status_code=200,
        summary="Replace the server's DSN (rotated password, new address); it must reach the same server",
    )
    async def set_dsn(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        data: JSONBody[ServerDsn],
        platform: NamedDependency[Platform],
    ) -> Server:
        async with audited(request, "server.set_dsn", entity="server", entity_id=name) as audit:
            async with platform.control.connection() as conn:
                server = await platform.fleet.update_dsn(conn, name, data.dsn)
            audit.details["dsn"] = server.dsn_display  # never the DSN as given: it holds the password
            return server

    @post("/{name:str}/activate", status_code=200, summary="Place new tenants on the server again")
    async def activate(
        self, request: Request[Any, Any, Any], name: FromPath[str], platform: NamedDependency[Platform]
    ) -> Server:
        async with (
            audited(request, "server.activate", entity="server", entity_id=name),
            platform.control.connection() as conn,
        ):
            return await platform.fleet.set_status(conn, name, ServerStatus.ACTIVE)
