"""``cardvault serve | local | migrate | servers | reconcile``."""

from __future__ import annotations

import sys
from typing import Any

import click

from controlplane.cli.common import emit_json, json_option, load_settings, run, table, to_builtins, with_platform
from controlplane.fleet import repository as fleet_repository
from controlplane.fleet.models import ServerStatus
from controlplane.migrations.fleet_runner import Progress
from controlplane.migrations.service import TenantMigrations
from controlplane.platform import Platform, migrate_registry
from controlplane.provisioning.reconciler import Reconciler
from controlplane.provisioning.service import TenantService
from controlplane.registry import repository as registry
from controlplane.registry.models import TenantStatus
from controlplane.usage.operations import MaintenanceResult, maintain


@click.command()
@click.option("--host", help="Listen address (default CARDVAULT_HOST or 127.0.0.1).")
@click.option("--port", type=int, help="Listen port (default CARDVAULT_PORT or 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Run the HTTP service against CARDVAULT_DATABASE_URL (migrating the registry first)."""
    import uvicorn

    from controlplane.app import create_app

    settings = load_settings(create_secrets=True)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host or settings.http.host,
        port=port or settings.http.port,
        log_level=settings.log_level.lower(),
    )


@click.group()
def local() -> None:
    """The private PostgreSQL cluster under CARDVAULT_DATA_DIR (used when no database URL is set)."""


@local.command("start")
def local_start() -> None:
    """Start (or reuse) the local cluster; prints the control database DSN."""
    from controlplane.localpg import start_local

    settings = load_settings()
    click.echo(start_local(settings.data_dir))


@local.command("stop")
def local_stop() -> None:
    """Stop the local cluster."""
    from controlplane.localpg import LocalCluster

    LocalCluster(load_settings().data_dir / "postgres").stop()


@click.group()
def migrate() -> None:
    """Schema migrations: the control database and every tenant database."""


@migrate.command("registry")
def migrate_registry_cmd() -> None:
    """Upgrade the control database to head."""
    settings = load_settings()
    click.echo(f"registry at {run(lambda: migrate_registry(settings))}")


@migrate.command("tenants")
@click.option("--concurrency", type=click.IntRange(1, 64), help="Databases at once (CARDVAULT_MIGRATION_CONCURRENCY).")
@click.option("--only-failed", is_flag=True, help="Only tenants whose last migration failed.")
@click.option("--dry-run", is_flag=True, help="Show what would be applied; change nothing.")
@json_option
def migrate_tenants(concurrency: int | None, only_failed: bool, dry_run: bool, as_json: bool) -> None:
    """Upgrade the template(s), then every tenant database to head. Exit 1 if any tenant failed."""
    settings = load_settings()

    async def go() -> Any:
        async with Platform.open(settings) as platform:
            return await TenantMigrations(platform).run(
                concurrency=concurrency, only_failed=only_failed, dry_run=dry_run, progress=Progress(sys.stderr)
            )

    report = run(go)
    if as_json:
        emit_json(report.to_json())
    else:
        for outcome in report.outcomes if dry_run else []:
            click.echo(f"{outcome.target.slug}: {outcome.revision if outcome.ok else outcome.error}")
        for failure in report.failures:
            click.echo(f"FAILED {failure.target.slug}: {failure.error}", err=True)
        click.echo(
            f"head {report.head}: {len(report.outcomes) - len(report.failures)} ok, {len(report.failures)} failed"
        )
    if report.failures:
        sys.exit(1)


@migrate.command("status")
@json_option
def migrate_status(as_json: bool) -> None:
    """Tenants per schema revision, and the tenants whose last migration failed."""
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


@click.group()
def servers() -> None:
    """The PostgreSQL servers that host tenant databases."""


@servers.command("add")
@click.argument("name")
@click.argument("dsn")
@json_option
def servers_add(name: str, dsn: str, as_json: bool) -> None:
    """Register a server; DSN's user needs CREATEDB and CREATEROLE (or SUPERUSER)."""
    settings = load_settings()

    async def go() -> Any:
        async with Platform.open(settings) as platform, platform.control.connection() as conn:
            return await platform.fleet.register(conn, name, dsn)

    _servers([run(go)], as_json)


@servers.command("list")
@json_option
def servers_list(as_json: bool) -> None:
    """Servers with their status, template revision and tenant count."""
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


@click.command()
@click.option("--fix", is_flag=True, help="Repair what is found (otherwise only report).")
@json_option
def reconcile(fix: bool, as_json: bool) -> None:
    """Finish or undo interrupted operations; find orphans in both directions. Exit 1 if unclean."""
    settings = load_settings()

    async def go() -> Any:
        async with Platform.open(settings) as platform:
            return await Reconciler(platform, TenantService(platform)).run(fix=fix)

    report = run(go)
    if as_json:
        emit_json(report)
    elif report.clean:
        click.echo("clean: registry and servers agree")
    else:
        table([to_builtins(f) for f in report.findings], ("kind", "server", "subject", "action", "detail"))
    if not report.clean and not fix:
        sys.exit(1)


@click.command()
@click.option("--tenant", "slug", help="Only this tenant (default: every active tenant).")
@click.option("--vacuum", "action", flag_value="vacuum", help="VACUUM (ANALYZE).")
@click.option("--analyze", "action", flag_value="analyze", default=True, help="ANALYZE only (the default).")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True, help="Databases at once.")
@json_option
def maintenance(slug: str | None, action: str, concurrency: int, as_json: bool) -> None:
    """ANALYZE (or VACUUM) tenant databases now. Exit 1 if any failed."""

    async def work(platform: Platform) -> list[MaintenanceResult]:
        async with platform.control.connection() as conn:
            if slug is not None:
                chosen = [await TenantService(platform).require(conn, slug)]
            else:
                chosen = await registry.list_tenants(conn, status=TenantStatus.ACTIVE)
        return await maintain(platform, chosen, "vacuum" if action == "vacuum" else "analyze", concurrency=concurrency)

    results = with_platform(work)
    if as_json:
        emit_json(results)
    else:
        table([to_builtins(r) for r in results], ("tenant", "action", "ok", "seconds", "error"))
    if not all(r.ok for r in results):
        sys.exit(1)
