"""Admin API of restores and verifications (super-admins and the automation token only: ``/admin/*``).

- ``POST /admin/tenants/{slug}/restore`` ``{"backup_id": ...}`` or ``{"latest": true}`` (and
  ``"pre_backup": false`` to skip the backup of the live database; ``name`` and ``tier`` for a purged
  tenant): restores and answers 200 with the finished ``restore`` operation.
- ``POST /admin/tenants/{slug}/rollback``: back to the database the last restore replaced (200, the operation).
- ``POST /admin/backups/{id}/verify``: a test restore into a scratch database (200, the verification).
- ``GET /admin/backups/{id}/verifications``: the backup's verifications, newest first.

Tenant admins have no way to restore: the tenant API has no such route, and a tenant's token is refused
by the ``/admin`` guard (403). A backup is only ever restored into the tenant it was taken of (409
``backup_mismatch``).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.params import FromPath, JSONBody

from controlplane.audit.routes import audited
from controlplane.backups.models import BackupNotFound
from controlplane.backups.restore import RestoreService
from controlplane.backups.restore_models import Verification
from controlplane.http.admin import admin_principal
from controlplane.http.state import RESTORES_STATE_KEY
from controlplane.provisioning.models import Operation

_NO_NUL = r"^[^\x00]*$"


class RestoreRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Which backup: one by id, or the tenant's latest restorable one."""

    backup_id: uuid.UUID | None = None
    latest: bool = False
    #: Take a backup of the live database first (trigger ``pre_restore``).
    pre_backup: bool = True
    #: A purged tenant is registered again under its slug with this display name (default: the slug) and
    #: tier (default: the one the ledger last recorded).
    name: Annotated[str, msgspec.Meta(max_length=200, pattern=_NO_NUL)] | None = None
    tier: Annotated[str, msgspec.Meta(max_length=20, pattern=_NO_NUL)] | None = None


def _backup_id(text: str) -> uuid.UUID:
    """A backup id from a path; anything that is no UUID names no backup (404, after the admin guard)."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise BackupNotFound(f"no backup {text!r}", backup_id=text) from None


def _restores(request: Request[Any, Any, Any]) -> RestoreService:
    restores: RestoreService = request.app.state[RESTORES_STATE_KEY]
    return restores


@post("/admin/tenants/{slug:str}/restore", status_code=200, tags=["backups"], summary="Restore a tenant from a backup")
async def restore_tenant(
    request: Request[Any, Any, Any], slug: FromPath[str], data: JSONBody[RestoreRequest]
) -> Operation:
    restores = _restores(request)
    details = {"backup_id": str(data.backup_id) if data.backup_id else None, "latest": data.latest}
    async with audited(request, "tenant.restore", slug=slug, details=details) as audit:
        op = await restores.restore(
            slug,
            backup_id=data.backup_id,
            latest=data.latest,
            pre_backup=data.pre_backup,
            requested_by=admin_principal(request).subject,
            name=data.name,
            tier=data.tier,
        )
        audit.details["operation"] = op.id
        audit.result(await restores.tenant(op.tenant_id))
        return op


@post(
    "/admin/tenants/{slug:str}/rollback",
    status_code=200,
    tags=["backups"],
    summary="Switch a restored tenant back to the database its last restore replaced",
)
async def rollback_tenant(request: Request[Any, Any, Any], slug: FromPath[str]) -> Operation:
    restores = _restores(request)
    async with audited(request, "tenant.rollback", slug=slug) as audit:
        op = await restores.retired.rollback(slug, requested_by=admin_principal(request).subject)
        audit.details["operation"] = op.id
        audit.result(await restores.tenant(op.tenant_id))
        return op


@post(
    "/admin/backups/{backup_id:str}/verify",
    status_code=200,
    tags=["backups"],
    summary="Restore a backup into a scratch database and check it against its manifest",
)
async def verify_backup(request: Request[Any, Any, Any], backup_id: FromPath[str]) -> Verification:
    async with audited(request, "backup.verify", entity="backup", entity_id=backup_id) as audit:
        verification = await _restores(request).verifier.verify(_backup_id(backup_id))
        audit.details["ok"] = verification.ok
        return verification


@get("/admin/backups/{backup_id:str}/verifications", tags=["backups"], summary="A backup's verifications, newest first")
async def backup_verifications(request: Request[Any, Any, Any], backup_id: FromPath[str]) -> list[Verification]:
    return await _restores(request).verifier.verifications(_backup_id(backup_id))


ADMIN_RESTORE_HANDLERS = [restore_tenant, rollback_tenant, verify_backup, backup_verifications]
