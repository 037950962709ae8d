"""``cardvault servers add | set-dsn | list | drain | activate``: the PostgreSQL servers of the fleet
(imports inside the commands, as everywhere in the CLI).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from controlplane.cli.common import cli_actor, emit_json, json_option, load_settings, run, table, to_builtins
from controlplane.fleet.models import ServerStatus


@click.group()
def servers() -> None:
    """The PostgreSQL servers that host tenant databases."""


@servers.command("add")
@click.argument("name")
@click.argument("dsn")
@json_option
def servers_add(name: str, dsn: str, as_json: bool) -> None:
    """Register a server. DSN names host, port, user and dbname; its user needs CREATEDB and CREATEROLE
    (or SUPERUSER). Every database of the server but the tenants' own is closed to PUBLIC."""
    from controlplane.platform import Platform

    settings = load_settings()

    async def go() -> Any:
        async with Platform.open(settings) as platform, platform.control.connection() as conn:
            return await platform.fleet.register(conn, name, dsn)

    _servers([run(go)], as_json)


@servers.command("set-dsn")
@click.argument("name")
@click.argument("dsn", required=False)
@json_option
def servers_set_dsn(name: str, dsn: str | None, as_json: bool) -> None:
    """Replace NAME's DSN (a rotated password, a new address); it must reach the same server.

    Without DSN it is read from stdin (first line) or prompted for, hidden: the password stays out of the
    process list. Every replica drops the old DSN when notified (CARDVAULT_SERVER_DSN_TTL at the latest).
    """
    from controlplane.audit.service import platform_action
    from controlplane.context import AuditContext
    from controlplane.platform import Platform

    if dsn is not None:
        new_dsn = dsn
    elif sys.stdin.isatty():
        new_dsn = click.prompt("New DSN", hide_input=True)
    else:
        new_dsn = sys.stdin.readline().rstrip("\r\n")
    settings = load_settings()

    async def go() -> Any:
        async with Platform.open(settings) as platform:
            context = AuditContext(actor=cli_actor(), actor_label="command line")
            async with platform_action(
                platform.control, context, "server.set_dsn", entity="server", entity_id=name
            ) as audit:
                async with platform.control.connection() as conn:
                    server = await platform.fleet.update_dsn(conn, name, new_dsn)
                audit.details["dsn"] = server.dsn_display
                return server

    _servers([run(go)], as_json)


@servers.command("list")
@json_option
def servers_list(as_json: bool) -> None:
    """Servers with their status, template revision and tenant count."""
    from controlplane.fleet import repository as fleet_repository
    from controlplane.platform import Platform

    settings = load_settings()

    async def go() -> Any:
        async with Platform.open(settings) as platform, platform.control.connection() as conn:
            return await fleet_repository.list_servers(conn)

    _servers(run(go), as_json)


@servers.command("drain")
@click.argument("name")
@json_option
def servers_drain(name: str, as_json: bool) -> None:
    """Place no new tenants on NAME (its tenants stay)."""
    _set_server_status(name, ServerStatus.DRAINING, as_json)


@servers.command("activate")
@click.argument("name")
@json_option
def servers_activate(name: str, as_json: bool) -> None:
    """Place new tenants on NAME again."""
    _set_server_status(name, ServerStatus.ACTIVE, as_json)


def _set_server_status(name: str, status: ServerStatus, as_json: bool) -> None:
    from controlplane.platform import Platform

    settings = load_settings()

    async def go() -> Any:
        async with Platform.open(settings) as platform, platform.control.connection() as conn:
            return await platform.fleet.set_status(conn, name, status)

    _servers([run(go)], as_json)


def _servers(found: list[Any], as_json: bool) -> None:
    if as_json:
        emit_json(found[0] if len(found) == 1 else found)
    else:
        table([to_builtins(s) for s in found], ("name", "status", "tenants", "template_revision", "dsn_display"))
