"""``cardvault backups restore | rollback | verify | upkeep``: restores, as the admin API does them (added to
the ``backups`` group).

``restore SLUG --backup ID | --latest`` replaces the tenant's database by the backup's (a purged tenant is
registered again); without ``--yes`` it asks for the slug typed back. ``rollback SLUG`` switches back to
the database the last restore replaced, while it is kept. ``verify ID`` restores a backup into a scratch
database and checks it (exit status 1 when it fails). ``upkeep`` settles interrupted restores and drops
what is due, as the service's leader job does.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from controlplane.cli.common import (
    cli_actor,
    confirm_destructive,
    emit_json,
    fail,
    json_option,
    table,
    to_builtins,
    with_platform,
)

if TYPE_CHECKING:
    from controlplane.backups.restore import RestoreService
    from controlplane.backups.restore_models import Verification
    from controlplane.platform import Platform
    from controlplane.provisioning.models import Operation

T = TypeVar("T")
_OPERATION_COLUMNS = ("id", "tenant_slug", "kind", "state", "step", "error")


def _with_restores(work: Callable[[RestoreService, Platform], Awaitable[T]]) -> T:
    from controlplane.backups.restore import RestoreService
    from controlplane.backups.service import BackupService
    from controlplane.provisioning.service import TenantService

    async def run(platform: Platform) -> T:
        backups = BackupService(platform)
        try:
            return await work(RestoreService(platform, TenantService(platform), backups), platform)
        finally:
            await backups.stop()

    return with_platform(run)


def _audited(platform: Platform, action: str, **kwargs: Any) -> Any:
    from controlplane.audit.service import platform_action
    from controlplane.context import AuditContext

    context = AuditContext(actor=cli_actor(), actor_label="command line")
    return platform_action(platform.control, context, action, **kwargs)


def _show(op: Operation, as_json: bool) -> None:
    if as_json:
        emit_json(op)
    else:
        table([to_builtins(op)], _OPERATION_COLUMNS)


@click.command("restore")
@click.argument("slug")
@click.option("--backup", "backup_id", type=click.UUID, help="The backup to restore.")
@click.option("--latest", is_flag=True, help="The tenant's newest backup that can be restored.")
@click.option("--no-pre-backup", is_flag=True, help="Do not back the live database up first.")
@click.option("--name", help="Display name of a purged tenant registered again (default: the slug).")
@click.option("--tier", help="Tier of a purged tenant registered again (default: the one it had).")
@click.option("--yes", is_flag=True, help="Do not ask for the slug typed back.")
@json_option
def restore(
    slug: str,
    backup_id: uuid.UUID | None,
    latest: bool,
    no_pre_backup: bool,
    name: str | None,
    tier: str | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Restore SLUG from a backup into a new database and switch it over (the old one is kept a while)."""
    from controlplane.errors import ValidationFailed

    if (backup_id is None) == (not latest):
        fail(ValidationFailed("name one backup (--backup ID) or ask for --latest"))

    async def work(restores: RestoreService, platform: Platform) -> Operation:
        details = {"backup_id": str(backup_id) if backup_id else None, "latest": latest}
        async with _audited(platform, "tenant.restore", slug=slug, details=details) as audit:
            op = await restores.restore(
                slug,
                backup_id=backup_id,
                latest=latest,
                pre_backup=not no_pre_backup,
                requested_by=cli_actor(),
                name=name,
                tier=tier,
            )
            audit.details["operation"] = op.id
            audit.result(await restores.tenant(op.tenant_id))
            return op

    with confirm_destructive(slug, "restore (replace the database of)", yes):
        _show(_with_restores(work), as_json)


@click.command("rollback")
@click.argument("slug")
@click.option("--yes", is_flag=True, help="Do not ask for the slug typed back.")
@json_option
def rollback(slug: str, yes: bool, as_json: bool) -> None:
    """Switch SLUG back to the database its last restore replaced (while it is kept)."""

    async def work(restores: RestoreService, platform: Platform) -> Operation:
        async with _audited(platform, "tenant.rollback", slug=slug) as audit:
            op = await restores.retired.rollback(slug, requested_by=cli_actor())
            audit.details["operation"] = op.id
            audit.result(await restores.tenant(op.tenant_id))
            return op

    with confirm_destructive(slug, "roll back (replace the database of)", yes):
        _show(_with_restores(work), as_json)


@click.command("verify")
@click.argument("backup_id", type=click.UUID)
@json_option
def verify(backup_id: uuid.UUID, as_json: bool) -> None:
    """Restore backup BACKUP_ID into a scratch database and check it (exit status 1 if it fails)."""
    from controlplane.backups.restore_models import BackupCorrupted

    async def work(restores: RestoreService, platform: Platform) -> Verification:
        async with _audited(platform, "backup.verify", entity="backup", entity_id=backup_id) as audit:
            verification = await restores.verifier.verify(backup_id)
            audit.details["ok"] = verification.ok
            return verification

    found = _with_restores(work)
    if as_json:
        emit_json(found)
    else:
        table([to_builtins(found)], ("backup_id", "ok", "seconds", "detail"))
    if not found.ok:
        fail(BackupCorrupted(found.detail, backup_id=str(backup_id)))


@click.command("upkeep")
def upkeep() -> None:
    """Settle interrupted restores, drop retired databases past their window and dead verification leftovers."""
    click.echo(_with_restores(lambda restores, _: restores.upkeep.run()))


#: Added to the ``cardvault backups`` group.
RESTORE_COMMANDS = (restore, rollback, verify, upkeep)
