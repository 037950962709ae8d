"""``cardvault backups create SLUG | list SLUG``: per-tenant backups, as the admin API does them.

``create`` backs the tenant up now and waits for the outcome (exit status 1 with the reason if the dump
failed); ``list`` shows its backups, newest first (also of a purged tenant whose backups are retained).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from controlplane.cli.common import cli_actor, emit_json, fail, json_option, table, to_builtins, with_platform

if TYPE_CHECKING:
    from controlplane.backups.models import Backup
    from controlplane.platform import Platform

_COLUMNS = ("id", "status", "trigger", "created_at", "finished_at", "bytes", "expires_at", "error")


def _rows(found: list[Backup]) -> list[dict[str, Any]]:
    rows = []
    for backup in found:
        row = to_builtins(backup)
        if row.get("error"):
            row["error"] = row["error"].splitlines()[-1][:120]
        rows.append(row)
    return rows


@click.group()
def backups() -> None:
    """Per-tenant backups: pg_dump -Fc, sealed with a key of their own, kept per tier."""


@backups.command("create")
@click.argument("slug")
@json_option
def backups_create(slug: str, as_json: bool) -> None:
    """Back SLUG up now and wait for it (exit status 1 if it failed)."""
    from controlplane.audit.service import platform_action
    from controlplane.backups.models import BackupStatus, BackupTrigger
    from controlplane.backups.service import BackupService
    from controlplane.context import AuditContext
    from controlplane.errors import OperationFailed

    async def work(platform: Platform) -> Backup:
        service = BackupService(platform)
        actor = cli_actor()
        try:
            context = AuditContext(actor=actor, actor_label="command line")
            async with platform_action(platform.control, context, "tenant.backup", slug=slug, entity="backup") as audit:
                backup = await service.create(slug, BackupTrigger.MANUAL, requested_by=actor)
                audit.entity_id = backup.id
                audit.details["status"] = backup.status.value
                return backup
        finally:
            await service.stop()

    backup = with_platform(work)
    if as_json:
        emit_json(backup)
    else:
        table(_rows([backup]), _COLUMNS)
    if backup.status is not BackupStatus.SUCCEEDED:
        fail(OperationFailed(f"backup {backup.id} of {slug!r} failed: {backup.error}", backup_id=str(backup.id)))


@backups.command("list")
@click.argument("slug")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True, help="Newest backups shown.")
@json_option
def backups_list(slug: str, limit: int, as_json: bool) -> None:
    """SLUG's backups, newest first."""
    from controlplane.backups.service import BackupService

    async def work(platform: Platform) -> list[Backup]:
        service = BackupService(platform)
        try:
            return await service.list_for_tenant(slug, limit)
        finally:
            await service.stop()

    found = with_platform(work)
    if as_json:
        emit_json(found)
    else:
        table(_rows(found), _COLUMNS)
