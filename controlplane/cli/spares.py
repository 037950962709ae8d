"""``cardvault spares list | refill``: the spare databases kept on each server for new tenants.

``refill`` does at once what the service's ``refill_spares`` job does every 30 s: top active servers up to
``CARDVAULT_SPARE_DATABASES``, recycle spares behind the schema head, drop those of draining servers (all of
them with ``CARDVAULT_SPARE_DATABASES=0``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from controlplane.cli.common import emit_json, json_option, table, to_builtins, with_platform

if TYPE_CHECKING:
    from controlplane.platform import Platform


@click.group()
def spares() -> None:
    """Spare databases: tenant databases made ahead of time, claimed by new tenants instead of a clone."""


@spares.command("list")
@json_option
def spares_list(as_json: bool) -> None:
    """Every spare with its server, state and schema revision (never its password)."""
    from controlplane.fleet import repository as fleet_repository
    from controlplane.provisioning import spares_repository

    async def work(platform: Platform) -> list[dict[str, Any]]:
        async with platform.control.connection() as conn:
            names = {s.id: s.name for s in await fleet_repository.list_servers(conn)}
            found = await spares_repository.all_spares(conn)
        return [
            {
                "database_name": s.database_name,
                "server": names.get(s.server_id, str(s.server_id)),
                "state": s.state.value,
                "schema_revision": s.schema_revision,
                "created_at": s.created_at,
            }
            for s in found
        ]

    rows = with_platform(work)
    if as_json:
        emit_json(rows)
    else:
        table([to_builtins(r) for r in rows], ("server", "state", "schema_revision", "database_name", "created_at"))


@spares.command("refill")
@json_option
def spares_refill(as_json: bool) -> None:
    """Top every server's pool up now (recycle, drop, create as the job would)."""
    from controlplane.provisioning.service import TenantService

    async def work(platform: Platform) -> list[Any]:
        return await TenantService(platform).spares.refill()

    outcomes = with_platform(work)
    if as_json:
        emit_json(outcomes)
    else:
        table(
            [to_builtins(o) for o in outcomes], ("server", "target", "ready", "created", "dropped", "cleared", "note")
        )
