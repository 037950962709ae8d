"""``cardvault privacy ...``: GDPR operations for operators.

- ``export SLUG [--output FILE]``: the tenant's whole export archive (the same zip the API's download link
  gives: every table as JSON and CSV, every file, a manifest with checksums), made now and written to a
  file (mode 0600). Recorded like an API export (requested and downloaded, then its stored copy deleted).
- ``erase-user SLUG EMAIL [--yes]``: erase a user (see ``controlplane.privacy.erasure``); asks for the slug
  typed back unless ``--yes``.
- ``certificate SLUG|ID``: the deletion certificate of a purged tenant (purges without one are certified
  first).

The CLI acts as a platform operator (``cli:<os user>`` in the tenant's audit log) over a management
connection to the tenant's database.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from controlplane.cli.common import cli_actor, confirm_destructive, emit_json, json_option, with_platform

if TYPE_CHECKING:  # the rest is imported where used, so that the command line starts fast
    from controlplane.context import TenantRequest
    from controlplane.platform import Platform
    from controlplane.privacy.models import DeletionCertificate


@click.group()
def privacy() -> None:
    """GDPR: tenant exports, user erasure, deletion certificates."""


@asynccontextmanager
async def _operator(platform: Platform, slug: str) -> AsyncIterator[TenantRequest]:
    """A request inside tenant ``slug`` as the platform operator, in one transaction of its database."""
    from controlplane.auth.models import ROLE_PERMISSIONS, Principal, PrincipalKind, Role
    from controlplane.context import AuditContext, TenantContext, TenantRequest
    from controlplane.provisioning.service import TenantService

    actor = cli_actor()
    async with platform.control.connection() as control:
        tenant = await TenantService(platform).require(control, slug)
        async with (
            platform.fleet.connect_database(control, tenant.server_id, tenant.database_name) as conn,
            conn.transaction(),
        ):
            principal = Principal(
                kind=PrincipalKind.AUTOMATION,
                subject=actor,
                label=actor,
                role=Role.SUPER_ADMIN,
                permissions=ROLE_PERMISSIONS[Role.SUPER_ADMIN],
                tenant_id=tenant.id,
            )
            yield TenantRequest(
                conn=conn,
                tenant=TenantContext.of(tenant),
                principal=principal,
                audit=AuditContext(actor=actor, actor_label="command line"),
            )


@privacy.command("export")
@click.argument("slug")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Archive file to write.")
@json_option
def export(slug: str, output: Path | None, as_json: bool) -> None:
    """Export the whole tenant into a zip file (default: ./cardvault-SLUG-export-TIME.zip)."""
    from controlplane.errors import OperationFailed
    from controlplane.privacy.models import ExportStatus
    from controlplane.privacy.service import Privacy

    async def work(platform: Platform) -> dict[str, Any]:
        service = Privacy(platform)
        async with _operator(platform, slug) as request:
            created = await service.for_request(request).export_tenant()
        made = await service.exports.process(created.id)
        if made is None or made.status is not ExportStatus.READY:
            raise OperationFailed(f"the export failed: {made.error if made else 'it could not be claimed'}")
        async with _operator(platform, slug) as request:
            download = await service.for_request(request).download(created.id, created.download_token)
            path = output or Path(download.filename)
            tmp = path.with_name(f".{path.name}.part")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "wb") as handle:
                    async for chunk in download.chunks:
                        handle.write(chunk)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return {"export_id": str(created.id), "path": str(path), "bytes": made.bytes, "sha256": made.sha256}

    result = with_platform(work)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"wrote {result['path']} ({result['bytes']} bytes, sha256 {result['sha256']})")


@privacy.command("erase-user")
@click.argument("slug")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for the slug typed back.")
@click.option("--delete-files", is_flag=True, help="Also delete the images of the cards the user created.")
@json_option
def erase_user(slug: str, email: str, yes: bool, delete_files: bool, as_json: bool) -> None:
    """Erase a user: their row, sessions, keys and exports go, their audit entries are pseudonymised."""
    from controlplane.auth import principal_events
    from controlplane.errors import NotFound
    from controlplane.privacy.erasure import Erasure
    from controlplane.privacy.models import ErasureResult
    from controlplane.privacy.service import Privacy

    async def work(platform: Platform) -> ErasureResult:
        service = Privacy(platform)
        async with _operator(platform, slug) as request:
            user_id = await Erasure.user_id(request.conn, email)
            if user_id is None:
                raise NotFound(f"tenant {slug!r} has no user {email!r}", resource="user")
            scoped = service.for_request(request)
            result = await scoped.erase_user(user_id, email, delete_files=delete_files)
        await scoped.after_commit()
        async with platform.control.connection() as conn:
            await principal_events.publish(conn, request.tenant.id)
        return result

    with confirm_destructive(slug, f"erase the user {email} (irreversibly) from", yes):
        result = with_platform(work)
    if as_json:
        emit_json(result)
    else:
        click.echo(
            f"erased user {result.user_id}: now {result.pseudonym} in the audit log; {result.sessions_removed}"
            f" session(s), {result.api_keys_removed} API key(s) removed, {result.rows_scrubbed} row(s) scrubbed"
        )


@privacy.command("certificate")
@click.argument("tenant")
@json_option
def certificate(tenant: str, as_json: bool) -> None:
    """The deletion certificate of a purged tenant (TENANT: its id, or the slug it had)."""
    from controlplane.privacy.service import Privacy

    async def work(platform: Platform) -> DeletionCertificate:
        service = Privacy(platform)
        await service.certificates.issue_pending()
        await service.certificates.track_backups()
        return (await service.certificates.find(tenant))[0]

    found = with_platform(work)
    if as_json:
        emit_json(found)
        return
    click.echo(f"Deletion certificate {found.id}")
    click.echo(f"  tenant {found.tenant_slug} ({found.tenant_id}), purge operation {found.operation_id}")
    click.echo(f"  purged between {found.purge_started_at.isoformat()} and {found.purged_at.isoformat()}")
    for item in found.document.get("deleted", []):
        where = " ".join(f"{k}={v}" for k, v in item.items() if k in ("name", "server", "location") and v)
        click.echo(f"  deleted {item['item']}: {where} (by {item.get('deleted_at') or item.get('deleted_by')})")
    backups = found.document.get("backups_remaining", [])
    if found.backups_destroyed_at is not None:
        click.echo(f"  every backup destroyed by {found.backups_destroyed_at.isoformat()}")
    else:
        click.echo(f"  {len(backups)} backup(s) remain:")
        for backup in backups:
            click.echo(f"    {backup['backup_id']} made {backup['created_at']}, expires {backup['expires_at']}")
