"""``cardvault migrate registry | tenants | status``: schema migrations of the control database and of
every tenant database (imports inside the commands, as everywhere in the CLI).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from controlplane.cli.common import emit_json, json_option, load_settings, run, table


@click.group()
def migrate() -> None:
    """Schema migrations: the control database and every tenant database."""


@migrate.command("registry")
def migrate_registry_cmd() -> None:
    """Upgrade the control database to head."""
    from controlplane.schemas.control import migrate_registry

    settings = load_settings()
    click.echo(f"registry at {run(lambda: migrate_registry(settings))}")


@migrate.command("tenants")
@click.option("--concurrency", type=click.IntRange(1, 64), help="Databases at once (CARDVAULT_MIGRATION_CONCURRENCY).")
@click.option("--only-failed", is_flag=True, help="Only tenants whose last migration failed.")
@click.option("--dry-run", is_flag=True, help="Show what would be applied; change nothing.")
@click.option(
    "--canary",
    type=click.IntRange(0),
    default=0,
    help="Migrate this many tenants first; the rest only if all of them succeed.",
)
@click.option("--queue", "queued", is_flag=True, help="Hand each tenant's upgrade to the task queue's workers.")
@click.option("--no-wait", is_flag=True, help="With --queue: return once queued (a canary is still waited for).")
@json_option
def migrate_tenants(
    concurrency: int | None,
    only_failed: bool,
    dry_run: bool,
    canary: int,
    queued: bool,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Upgrade the template(s), then every tenant database to head. Exit 1 if any tenant failed.

    With --queue the upgrades are done by the workers of every `cardvault serve` and `cardvault worker`
    (which must run this release), one task per tenant; the command waits and reports as without it. A dry
    run reads only, and runs here either way.
    """
    from controlplane.migrations.fleet_runner import Progress
    from controlplane.migrations.service import MigrationReport, TenantMigrations
    from controlplane.platform import Platform
    from controlplane.tasks.migration_runs import QueuedMigrations
    from controlplane.tasks.queue import TaskQueue

    if no_wait and not queued:
        raise click.UsageError("--no-wait needs --queue")
    if queued and concurrency is not None:
        raise click.UsageError(
            "--concurrency is the in-process run's; queued upgrades run CARDVAULT_WORKER_CONCURRENCY"
        )
    settings = load_settings()

    async def go() -> MigrationReport:
        async with Platform.open(settings) as platform:
            if not queued or dry_run:
                return await TenantMigrations(platform).run(
                    concurrency=concurrency,
                    only_failed=only_failed,
                    dry_run=dry_run,
                    canary=canary,
                    progress=Progress(sys.stderr),
                )
            queue = TaskQueue(settings)
            await queue.open()
            try:
                runs = QueuedMigrations(platform, queue)
                if not await runs.workers():
                    click.echo("no task-queue worker is running: the upgrades wait until one starts", err=True)
                return await runs.run(
                    only_failed=only_failed, canary=canary, wait=not no_wait, progress=Progress(sys.stderr)
                )
            finally:
                await queue.close()

    report = run(go)
    if as_json:
        emit_json(report.to_json())
    else:
        for outcome in report.outcomes if dry_run else []:
            click.echo(f"{outcome.target.slug}: {outcome.revision if outcome.ok else outcome.error}")
        for failure in report.failures:
            click.echo(f"FAILED {failure.target.slug}: {failure.error}", err=True)
        if report.skipped:
            click.echo(f"canary failed: {report.skipped} tenants not attempted", err=True)
        line = f"head {report.head}: {len(report.outcomes) - len(report.failures)} ok, {len(report.failures)} failed"
        click.echo(line + (f", {report.queued} queued" if report.queued else ""))
    if report.failures:
        sys.exit(1)


@migrate.command("status")
@json_option
def migrate_status(as_json: bool) -> None:
    """Tenants per schema revision, and the tenants whose last migration failed."""
    from controlplane.migrations.service import TenantMigrations
    from controlplane.platform import Platform

    settings = load_settings()

    async def go() -> dict[str, Any]:
        async with Platform.open(settings) as platform:
            return await TenantMigrations(platform).status()

    status = run(go)
    if as_json:
        emit_json(status)
        return
    click.echo(f"head: {status['head']}")
    table(status["revisions"], ("revision", "tenants", "failed"))
    if status["failures"]:
        click.echo("\nfailures:")
        table(status["failures"], ("slug", "revision", "error"))
