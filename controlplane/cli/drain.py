"""``cardvault servers drain | rebalance``: emptying a server and evening out the fleet, by moves queued on the
task queue (the workers of every ``cardvault serve`` and ``cardvault worker`` run them; see
``controlplane.moves.fleet_moves``). Added to the ``servers`` group.

``drain NAME`` marks NAME draining (no new tenants) and queues a move of each of its movable tenants to the
best server with room; it prints what was queued and what stays. ``--wait`` waits for the moves and prints
each tenant's outcome (exit status 1 if any tenant is left on NAME). ``--keep-tenants``: only mark it.

``rebalance`` prints every server's fill (bytes now, growth, projected bytes, connections, full or not)
and the moves that even it out; ``--apply`` queues them (``--wait`` as for a drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from controlplane.cli.common import cli_actor, emit_json, json_option, table, to_builtins, with_platform

if TYPE_CHECKING:
    from controlplane.moves.fleet_models import MoveOutcome, MoveQueue, QueuedMove
    from controlplane.moves.fleet_moves import FleetMoves
    from controlplane.platform import Platform

#: Seconds between two looks at the queue while waiting.
POLL_SECONDS = 0.5

wait_option = click.option("--wait", is_flag=True, help="Wait for the queued moves and print how each ended.")
timeout_option = click.option(
    "--timeout", type=click.FloatRange(min=1), default=3600.0, show_default=True, help="Seconds --wait waits at most."
)


async def _wait(
    moves: FleetMoves, queue: MoveQueue, queued: Sequence[QueuedMove], since: datetime, seconds: float
) -> list[MoveOutcome]:
    """Poll the queue until none of the moves waits or runs (or ``seconds`` passed), then their outcomes
    (one still pending after ``seconds`` is reported ``pending``)."""
    ids = [q.tenant_id for q in queued]

    async def settled() -> None:
        while ids and await queue.pending_moves(ids):  # noqa: ASYNC110 (the queue is polled: no event)
            await asyncio.sleep(POLL_SECONDS)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(settled(), seconds)
    return await moves.outcomes(queued, queue, since=since)


def _with_queue(work: Any) -> Any:
    """Run ``work(platform, moves, queue)`` with this process's task queue open (it only enqueues)."""
    from controlplane.moves.fleet_moves import FleetMoves
    from controlplane.provisioning.service import TenantService
    from controlplane.tasks.moves import MoveTasks
    from controlplane.tasks.queue import TaskQueue

    async def go(platform: Platform) -> Any:
        queue = TaskQueue(platform.settings)
        await queue.open()
        try:
            return await work(platform, FleetMoves(platform, TenantService(platform)), MoveTasks(queue.app))
        finally:
            await queue.close()

    return with_platform(go)


def _print_outcomes(outcomes: Sequence[dict[str, Any]]) -> None:
    table(outcomes, ("slug", "outcome", "server", "freeze_ms", "error"))


@click.command("drain")
@click.argument("name")
@click.option("--keep-tenants", is_flag=True, help="Only mark NAME draining: place no new tenants, move none.")
@wait_option
@timeout_option
@json_option
def servers_drain(name: str, keep_tenants: bool, wait: bool, timeout: float, as_json: bool) -> None:
    """Place no new tenants on NAME and move every tenant off it (moves queued on the task queue)."""
    from controlplane.audit.service import platform_action
    from controlplane.context import AuditContext
    from controlplane.fleet.models import ServerStatus

    async def work(platform: Platform, moves: FleetMoves, queue: MoveQueue) -> dict[str, Any]:
        context = AuditContext(actor=cli_actor(), actor_label="command line")
        async with platform_action(platform.control, context, "server.drain", entity="server", entity_id=name) as audit:
            if keep_tenants:
                async with platform.control.connection() as conn:
                    server = await platform.fleet.set_status(conn, name, ServerStatus.DRAINING)
                return {**to_builtins(server), "drain": None}
            report = await moves.drain(name, queue, requested_by=cli_actor())
            audit.details |= {"queued": len(report.queued), "not_moved": len(report.not_moved)}
        outcomes = await _wait(moves, queue, report.queued, report.started_at, timeout) if wait else None
        async with platform.control.connection() as conn:
            server = await platform.fleet.get(conn, name)
        found = {**to_builtins(server), "drain": to_builtins(report)}
        if outcomes is not None:
            found["outcomes"] = to_builtins(outcomes)
        return found

    found = _with_queue(work)
    if as_json:
        emit_json(found)
    else:
        click.echo(f"server {name}: {found['status']}, {found['tenants']} tenant(s) on it")
        report = found["drain"]
        if report is not None:
            if report["queued"]:
                click.echo("moves queued:")
                table(report["queued"], ("slug", "from_server", "to_server", "queued"))
            if report["not_moved"]:
                click.echo("staying:")
                table(report["not_moved"], ("slug", "reason"))
        if "outcomes" in found:
            _print_outcomes(found["outcomes"])
    if found.get("outcomes") is not None and found["tenants"]:
        sys.exit(1)  # tenants are left on the server: failed, not movable, or still pending


@click.command("rebalance")
@click.option("--apply", "apply_", is_flag=True, help="Queue the proposed moves (without it nothing changes).")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True, help="Most moves proposed.")
@wait_option
@timeout_option
@json_option
def servers_rebalance(apply_: bool, limit: int, wait: bool, timeout: float, as_json: bool) -> None:
    """Servers' projected fill (bytes, growth, connections) and the moves that even it out."""
    from controlplane.audit.service import platform_action
    from controlplane.context import AuditContext

    if wait and not apply_:
        raise click.UsageError("--wait needs --apply")

    async def work(platform: Platform, moves: FleetMoves, queue: MoveQueue) -> dict[str, Any]:
        if not apply_:
            return {"plan": to_builtins(await moves.rebalance(limit=limit))}
        context = AuditContext(actor=cli_actor(), actor_label="command line")
        async with platform_action(platform.control, context, "fleet.rebalance", details={"limit": limit}) as audit:
            plan = await moves.rebalance(limit=limit, queue=queue, requested_by=cli_actor())
            audit.details["moves"] = [f"{q.slug}: {q.from_server} -> {q.to_server}" for q in plan.queued]
        found: dict[str, Any] = {"plan": to_builtins(plan)}
        if wait:
            found["outcomes"] = to_builtins(await _wait(moves, queue, plan.queued, plan.generated_at, timeout))
        return found

    found = _with_queue(work)
    plan = found["plan"]
    if as_json:
        emit_json({**plan, **({"outcomes": found["outcomes"]} if "outcomes" in found else {})})
        return
    columns = ("name", "status", "tenants", "database_bytes", "growth_bytes_per_day", "projected_bytes",
               "connections", "max_connections", "full")  # fmt: skip
    table(plan["servers"], columns)
    for server in plan["servers"]:
        if server["recommendation"]:
            click.echo(f"recommendation: {server['recommendation']}")
    if not plan["proposals"]:
        click.echo("no move proposed: the fleet is balanced within its limits")
        return
    click.echo("moves queued:" if apply_ else "moves proposed (--apply queues them):")
    table(plan["proposals"], ("slug", "from_server", "to_server", "database_bytes", "projected_bytes", "connections"))
    if "outcomes" in found:
        _print_outcomes(found["outcomes"])
