"""``cardvault import-sqlite SLUG FILE [--uploads DIR] [--dry-run] [--json]``: a legacy installation
moved into a tenant (``controlplane.importer``), audited as ``cli:<os user>``.

Prints the report (what was imported, how ids were kept, everything it could not take); a failed import
prints the JSON error on stderr, exits 1 and has changed nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from controlplane.cli.common import cli_actor, emit_json, table, with_platform

if TYPE_CHECKING:  # the rest is imported where used, so that the command line starts fast
    from controlplane.importer.models import ImportReport
    from controlplane.platform import Platform

#: Issues printed per kind in the human report (``--json`` has the report's full list).
_SHOWN_PER_KIND = 20


@click.command("import-sqlite")
@click.argument("slug")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--uploads",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The installation's uploads/ folder (card images).",
)
@click.option("--dry-run", is_flag=True, help="Report what the import would do; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def import_sqlite(slug: str, file: Path, uploads: Path | None, dry_run: bool, as_json: bool) -> None:
    """Import a legacy single-tenant CardVault SQLite database (and its images) into tenant SLUG."""
    from controlplane.audit.service import platform_action
    from controlplane.context import AuditContext
    from controlplane.importer.service import LegacyImporter, summary
    from controlplane.provisioning.service import TenantService

    actor = AuditContext(actor=cli_actor(), actor_label="command line")

    async def work(platform: Platform) -> ImportReport:
        details: dict[str, Any] = {"file": file.name, "uploads": uploads is not None, "dry_run": dry_run}
        async with platform_action(platform.control, actor, "tenant.import", slug=slug, details=details) as audit:
            importer = LegacyImporter(platform, TenantService(platform))
            report = await importer.run(slug, file, uploads, dry_run=dry_run, actor=actor)
            audit.details.update(summary(report))
            return report

    report = with_platform(work)
    if as_json:
        emit_json(report)
    else:
        _print(report)


def _print(report: ImportReport) -> None:
    verb = "would import" if report.dry_run else "imported"
    click.echo(f"{report.tenant}: {verb} in {report.seconds:.1f} s{' (dry run: nothing written)' * report.dry_run}")
    rows = [
        {"table": table_, "rows": count, "ids": report.ids.get(table_, "")} for table_, count in report.imported.items()
    ]
    table(rows, ("table", "rows", "ids"))
    click.echo(f"image bytes: {report.image_bytes}")
    merged = {k: v for k, v in report.merged.items() if v}
    if merged:
        click.echo("users merged: " + ", ".join(f"{k} {v}" for k, v in merged.items()))
    if report.password_resets:
        click.echo(
            f"\n{len(report.password_resets)} user(s) must set a new password (resend their invitation: "
            "POST /users/{id}/invitation):"
        )
        table([{"user_id": r.user_id, "email": r.email, "reason": r.reason} for r in report.password_resets],
              ("user_id", "email", "reason"))  # fmt: skip
    if not report.issue_counts:
        click.echo("\nnothing was left out or changed")
        return
    click.echo("\nnot taken as it was:")
    table([{"issue": k, "count": v} for k, v in report.issue_counts.items()], ("issue", "count"))
    shown: dict[str, int] = {}
    lines = []
    for issue in report.issues:
        shown[issue.kind] = shown.get(issue.kind, 0) + 1
        if shown[issue.kind] <= _SHOWN_PER_KIND:
            lines.append(
                {
                    "issue": issue.kind.value,
                    "row": f"{issue.table}#{issue.legacy_id}" if issue.legacy_id is not None else issue.table,
                    "field": issue.field,
                    "value": issue.value,
                    "detail": issue.detail,
                }
            )
    click.echo("")
    table(lines, ("issue", "row", "field", "value", "detail"))
    hidden = sum(report.issue_counts.values()) - len(lines)
    if hidden:
        click.echo(f"... and {hidden} more (--json lists up to 1000 of each kind)")
