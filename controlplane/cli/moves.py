"""``cardvault tenants move | moves | move-upkeep``: tenant moves between servers, as the admin API does them
(added to the ``tenants`` group).

``move SLUG --to SERVER`` copies the tenant's database to SERVER while it serves, then switches it over
after a short write freeze (without ``--yes`` it asks for the slug typed back); a refusal (the target is
the tenant's own server, draining, full; the tenant not active) changes nothing and exits non-zero.
``moves SLUG`` lists its moves. ``move-upkeep`` settles moves a dead process left half-done, as the
service's leader job does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from controlplane.cli.common import (
    cli_actor,
    confirm_destructive,
    emit_json,
    json_option,
    table,
    to_builtins,
    with_platform,
)

if TYPE_CHECKING:
    from controlplane.moves.models import Move
    from controlplane.moves.service import MoveService
    from controlplane.platform import Platform

T = TypeVar("T")
_COLUMNS = ("id", "from_server", "to_server", "state", "freeze_ms", "rows_verified", "error")


def _with_moves(work: Callable[[MoveService, Platform], Awaitable[T]]) -> T:
    from controlplane.moves.service import MoveService
    from controlplane.provisioning.service import TenantService

    return with_platform(lambda platform: work(MoveService(platform, TenantService(platform)), platform))


def _show(moves: list[Move], as_json: bool, *, one: bool = False) -> None:
    if as_json:
        emit_json(moves[0] if one else moves)
    else:
        table([to_builtins(m) for m in moves], _COLUMNS)


@click.command("move")
@click.argument("slug")
@click.option("--to", "to", required=True, help="Name of the server the tenant goes to.")
@click.option("--yes", is_flag=True, help="Do not ask for the slug typed back.")
@json_option
def move(slug: str, to: str, yes: bool, as_json: bool) -> None:
    """Move SLUG's database to server TO online (a short write freeze at the switch)."""
    from controlplane.audit.service import platform_action
    from controlplane.context import AuditContext

    async def work(moves: MoveService, platform: Platform) -> Move:
        context = AuditContext(actor=cli_actor(), actor_label="command line")
        async with platform_action(platform.control, context, "tenant.move", slug=slug, details={"to": to}) as audit:
            done = await moves.move(slug, to, requested_by=cli_actor())
            audit.details |= {"move": done.id, "freeze_ms": done.freeze_ms}
            return done

    with confirm_destructive(slug, f"move to server {to!r}", yes):
        _show([_with_moves(work)], as_json, one=True)


@click.command("moves")
@click.argument("slug")
@json_option
def moves(slug: str, as_json: bool) -> None:
    """List SLUG's moves, newest first."""
    _show(_with_moves(lambda service, _: service.moves(slug)), as_json)


@click.command("move-upkeep")
def move_upkeep() -> None:
    """Settle moves a dead process left half-done: finished if the registry switched, else undone."""
    click.echo(_with_moves(lambda service, _: service.upkeep()))


#: Added to the ``cardvault tenants`` group.
MOVE_COMMANDS = (move, moves, move_upkeep)
