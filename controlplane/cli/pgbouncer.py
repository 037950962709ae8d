"""``cardvault servers pgbouncer NAME [HOST:PORT --dir DIR | --remove | --sync]``: the PgBouncer in front of
a server (imports inside the command, as everywhere in the CLI)."""

from __future__ import annotations

from typing import Any

import click

from controlplane.cli.common import cli_actor, emit_json, json_option, load_settings, run, table, to_builtins

_COLUMNS = ("server", "address", "config_dir", "tenants", "written", "reloaded", "error")


@click.command("pgbouncer")
@click.argument("name")
@click.argument("address", required=False, metavar="[HOST:PORT]")
@click.option("--dir", "config_dir", help="Existing directory, shared with PgBouncer, its files are written to.")
@click.option("--remove", is_flag=True, help="Tenant connections go to the server directly again.")
@click.option("--sync", is_flag=True, help="Re-write the files from the registry and reload PgBouncer now.")
@json_option
def servers_pgbouncer(
    name: str, address: str | None, config_dir: str | None, remove: bool, sync: bool, as_json: bool
) -> None:
    """Put PgBouncer (at HOST:PORT, its files in --dir) in front of server NAME: tenant connections go
    through it, in transaction mode. Its pgbouncer.ini and userlist.txt are written now and after every
    tenant change, and it is reloaded. Without HOST:PORT: show NAME's PgBouncer."""
    from controlplane.audit.service import platform_action
    from controlplane.context import AuditContext
    from controlplane.errors import NotFound
    from controlplane.platform import Platform
    from controlplane.provisioning.pgbouncer_routes import pgbouncers

    if (address is None) != (config_dir is None):
        raise click.UsageError("HOST:PORT and --dir go together")
    if sum((address is not None, remove, sync)) > 1:
        raise click.UsageError("one of HOST:PORT --dir, --remove and --sync")
    settings = load_settings()

    async def go() -> Any:
        async with Platform.open(settings) as platform:
            bouncers = pgbouncers(platform)
            if not (remove or address):
                async with platform.control.connection() as conn:
                    server = await platform.fleet.get(conn, name)
                    stored = await bouncers.describe(conn, server)
                synced = await bouncers.sync(server.id) if sync and stored is not None else []
                if stored is None or (sync and not synced):
                    raise NotFound(f"server {name!r} has no PgBouncer", name=name)
                if synced:
                    return synced[0]
                return {"server": name, "address": str(stored.address), "config_dir": stored.config_dir}
            context = AuditContext(actor=cli_actor(), actor_label="command line")
            action = "server.remove_pgbouncer" if remove else "server.set_pgbouncer"
            details = {} if remove else {"address": address, "config_dir": config_dir}
            async with (
                platform_action(platform.control, context, action, entity="server", entity_id=name, details=details),
                platform.control.connection() as conn,
            ):
                server = await platform.fleet.get(conn, name)
                if remove:
                    if not await bouncers.remove(conn, server):
                        raise NotFound(f"server {name!r} has no PgBouncer", name=name)
                    return {"server": name, "address": None}
                assert address is not None and config_dir is not None
                return await bouncers.configure(conn, server, address, config_dir)

    done = to_builtins(run(go))
    if as_json:
        emit_json(done)
    else:
        table([done], [c for c in _COLUMNS if c in done])
