"""``cardvault servers add | set-dsn | update | list | drain | rebalance | activate``: the PostgreSQL servers
of the fleet (imports inside the commands, as everywhere in the CLI; ``drain`` and ``rebalance`` are in
``controlplane.cli.drain``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from controlplane.cli.common import cli_actor, emit_json, json_option, load_settings, run, table, to_builtins
from controlplane.cli.drain import servers_drain, servers_rebalance
from controlplane.fleet.models import ServerStatus

#: libpq's sslmode values (``controlplane.fleet.tls.SSLMODES``, not imported: the CLI starts fast).
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

sslmode_option = click.option(
    "--sslmode",
    type=click.Choice(_SSLMODES),
    help="TLS mode of every connection to the server (verify-ca and verify-full need --root-cert).",
)
root_cert_option = click.option(
    "--root-cert",
    "root_cert",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM file of the CA that signed the server's certificate (stored in the registry).",
)


def _read_cert(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--root-cert") from None


@click.group()
def servers() -> None:
    """The PostgreSQL servers that host tenant databases."""


@servers.command("add")
@click.argument("name")
@click.argument("dsn")
@sslmode_option
@root_cert_option
@json_option
def servers_add(name: str, dsn: str, sslmode: str | None, root_cert: str | None, as_json: bool) -> None:
    """Register a server. DSN names host, port, user and dbname; its user needs CREATEDB and CREATEROLE
    (or SUPERUSER). Every database of the server but the tenants' own is closed to PUBLIC."""
    from controlplane.fleet.tls import ServerTls
    from controlplane.platform import Platform

    tls = ServerTls(sslmode=sslmode, root_cert=_read_cert(root_cert))
    settings = load_settings()

    async def go() -> Any:
        async with Platform.open(settings) as platform, platform.control.connection() as conn:
            return await platform.fleet.register(conn, name, dsn, tls_settings=tls)

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


@servers.command("update")
@click.argument("name")
@sslmode_option
@root_cert_option
@click.option("--no-root-cert", is_flag=True, help="Remove the server's root certificate.")
@click.option(
    "--replica",
    "replicas",
    multiple=True,
    help="DSN of a streaming replica of NAME that may serve tenant reads (repeat for several; replaces the list).",
)
@click.option("--no-replicas", is_flag=True, help="Remove NAME's read replicas.")
@json_option
def servers_update(
    name: str,
    sslmode: str | None,
    root_cert: str | None,
    no_root_cert: bool,
    replicas: tuple[str, ...],
    no_replicas: bool,
    as_json: bool,
) -> None:
    """Change NAME's TLS settings or read replicas; checked by connecting first. Options left out are unchanged."""
    from msgspec import UNSET

    from controlplane.audit.service import platform_action
    from controlplane.context import AuditContext
    from controlplane.platform import Platform

    if root_cert is not None and no_root_cert:
        raise click.UsageError("--root-cert and --no-root-cert exclude each other")
    if replicas and no_replicas:
        raise click.UsageError("--replica and --no-replicas exclude each other")
    if replicas or no_replicas:
        if sslmode is not None or root_cert is not None or no_root_cert:
            raise click.UsageError("change the TLS settings and the replicas in two commands")
        _set_replicas(name, list(replicas), as_json)
        return
    pem = None if no_root_cert else (_read_cert(root_cert) if root_cert is not None else UNSET)
    mode = UNSET if sslmode is None else sslmode
    settings = load_settings()

    async def go() -> Any:
        async with Platform.open(settings) as platform:
            context = AuditContext(actor=cli_actor(), actor_label="command line")
            async with platform_action(
                platform.control, context, "server.set_tls", entity="server", entity_id=name
            ) as audit:
                async with platform.control.connection() as conn:
                    server = await platform.fleet.update_tls(conn, name, sslmode=mode, root_cert=pem)
                audit.details |= {"sslmode": server.sslmode, "root_cert_sha256": server.root_cert_sha256}
                return server

    _servers([run(go)], as_json)


def _set_replicas(name: str, dsns: list[str], as_json: bool) -> None:
    from controlplane.audit.service import platform_action
    from controlplane.context import AuditContext
    from controlplane.fleet.replicas import Replicas
    from controlplane.platform import Platform

    settings = load_settings()

    async def go() -> Any:
        async with Platform.open(settings) as platform:
            context = AuditContext(actor=cli_actor(), actor_label="command line")
            async with platform_action(
                platform.control, context, "server.set_replicas", entity="server", entity_id=name
            ) as audit:
                async with platform.control.connection() as conn:
                    registry = Replicas(platform.fleet, platform.box, settings.database)
                    stored = await registry.set(conn, name, dsns)
                audit.details["replicas"] = [r.dsn_display for r in stored]
                return stored

    found = run(go)
    if as_json:
        emit_json(found)
    else:
        table([to_builtins(r) for r in found], ("server_name", "position", "dsn_display"))


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


servers.add_command(servers_drain)
servers.add_command(servers_rebalance)


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
