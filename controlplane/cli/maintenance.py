"""``cardvault reconcile | maintenance``: repair what the registry and the servers disagree on, and
ANALYZE / VACUUM tenant databases (imports inside the commands, as everywhere in the CLI).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from controlplane.cli.common import emit_json, json_option, load_settings, run, table, to_builtins, with_platform
from controlplane.registry.models import TenantStatus

if TYPE_CHECKING:
    from controlplane.maintenance.models import MaintenanceResult
    from controlplane.platform import Platform


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
    from controlplane.maintenance.service import maintain
    from controlplane.provisioning.service import TenantService
    from controlplane.registry import repository as registry

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
