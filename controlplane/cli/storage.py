"""``cardvault storage check [SLUG] [--fix]``: tenants' stored files against their ``files`` rows (storage
hygiene, the same run as the leader's job; imports inside the command, as everywhere in the CLI)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from controlplane.cli.common import emit_json, json_option, table, to_builtins, with_platform

if TYPE_CHECKING:
    from controlplane.hygiene.models import HygieneReport, TenantScan
    from controlplane.platform import Platform

_COLUMNS = (
    "tenant",
    "objects",
    "rows",
    "orphans",
    "young",
    "quarantined",
    "restored",
    "deleted",
    "reclaimed",
    "missing",
    "removed",
    "note",
)


@click.group()
def storage() -> None:
    """Tenants' stored files (card images)."""


@storage.command()
@click.argument("slug", required=False)
@click.option("--fix", is_flag=True, help="Quarantine, restore, delete and remove what is found (else only report).")
@json_option
def check(slug: str | None, fix: bool, as_json: bool) -> None:
    """Compare every tenant's stored files (or SLUG's) with its files rows. Exit 1 if unclean without --fix,
    or if a tenant could not be checked."""
    from controlplane.hygiene.service import StorageHygiene

    async def work(platform: Platform) -> HygieneReport:
        return await StorageHygiene(platform).run(fix=fix, slug=slug)

    report = with_platform(work)
    if as_json:
        emit_json({**to_builtins(report), "clean": report.clean})
    else:
        table([_row(t) for t in report.tenants], _COLUMNS)
        click.echo(
            f"quarantine: {report.quarantine_files} file(s), {report.quarantine_bytes} bytes; "
            f"rows with no object: {report.missing_files}" + ("" if fix else " (report only: --fix acts)")
        )
    if report.failed or (not fix and not report.clean):
        sys.exit(1)


def _row(scan: TenantScan) -> dict[str, Any]:
    note = scan.error or scan.skipped or ("leftover of a tenant that is gone" if scan.kind == "leftover" else "")
    return {
        "tenant": scan.slug or str(scan.tenant_id),
        "objects": scan.objects,
        "rows": scan.rows,
        "orphans": scan.orphans,
        "young": scan.young_orphans,
        "quarantined": scan.quarantined,
        "restored": len(scan.restored),
        "deleted": scan.deleted,
        "reclaimed": scan.reclaimed_bytes,
        "missing": scan.missing,
        "removed": len(scan.missing_removed),
        "note": note,
    }
