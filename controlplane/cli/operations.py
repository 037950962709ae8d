"""``cardvault serve | local | migrate | servers | reconcile``.

Domain modules are imported inside the commands that use them: ``cardvault --help`` (and every other
command) starts without loading alembic, litestar and the rest.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from controlplane.cli.common import (
    cli_actor,
    emit_json,
    json_option,
    load_settings,
    run,
    table,
    to_builtins,
    with_platform,
)
from controlplane.fleet.models import ServerStatus
from controlplane.registry.models import TenantStatus

if TYPE_CHECKING:
    from controlplane.platform import Platform
    from controlplane.usage.operations import MaintenanceResult


@click.command()
@click.option("--host", help="Listen address (default CARDVAULT_HOST or 127.0.0.1).")
@click.option("--port", type=int, help="Listen port (default CARDVAULT_PORT or 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Run the HTTP service against CARDVAULT_DATABASE_URL (migrating the registry first)."""
    import uvicorn

    from controlplane.app import create_app

    settings = load_settings(create_secrets=True)
    app = create_app(settings)
    proxies = settings.http.trusted_proxies
    uvicorn.run(
        app,
        host=host or settings.http.host,
        port=port or settings.http.port,
        log_level=settings.log_level.lower(),
        # X-Forwarded-For only from CARDVAULT_TRUSTED_PROXIES: never uvicorn's default (FORWARDED_ALLOW_IPS,
        # else 127.0.0.1), which would let any local process choose the address the throttle sees.
        proxy_headers=bool(proxies),
        forwarded_allow_ips=list(proxies),
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
    from controlplane.platform import migrate_registry

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
@json_option
def migrate_tenants(concurrency: int | None, only_failed: bool, dry_run: bool, canary: int, as_json: bool) -> None:
    """Upgrade the template(s), then every tenant database to head. Exit 1 if any tenant failed."""
    from controlplane.migrations.fleet_runner import Progress
    from controlplane.migrations.service import TenantMigrations
    from controlplane.platform import Platform

    settings = load_settings()

    async def go() -> Any:
        async with Platform.open(settings) as platform:
            return await TenantMigrations(platform).run(
                concurrency=concurrency,
                only_failed=only_failed,
                dry_run=dry_run,
                canary=canary,
                progress=Progress(sys.stderr),
            )

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
        click.echo(
            f"head {report.head}: {len(report.outcomes) - len(report.failures)} ok, {len(report.failures)} failed"
        )
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
    from controlplane.audit.models import AuditContext
    from controlplane.audit.service import audited
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
            async with audited(platform.control, context, "server.set_dsn", entity="server", entity_id=name) as audit:
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


@click.command()
@click.option("--fix", is_flag=True, help="Repair what is found (otherwise only report).")
@json_option
def reconcile(fix: bool, as_json: bool) -> None:
    """Finish or undo interrupted operations; find orphans in both directions. Exit 1 if unclean."""
    from controlplane.platform import Platform
    from controlplane.provisioning.reconciler import Reconciler
    from controlplane.provisioning.service import TenantService

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
    from controlplane.provisioning.service import TenantService
    from controlplane.registry import repository as registry
    from controlplane.usage.operations import maintain

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
