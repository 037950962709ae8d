"""Admin API for backups (behind ``admin_guard``).

- ``POST /admin/tenants/{slug}/backups``: ask for a backup now: 202 with its ``pending`` row; it runs in the
  background of this process (and if the process dies, the leader's backup job runs it). 409
  ``backup_in_progress`` while another backup of the tenant is pending or running.
- ``GET /admin/tenants/{slug}/backups?limit=``: the tenant's backups, newest first (also of a purged tenant,
  by the slug its backups were made under).
- ``GET /admin/backups/{id}``: one backup (404 ``backup_not_found``).

The data key never leaves the control database; rows show the store, object key, checksum and manifest.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, QueryParameter

from controlplane.audit.routes import audited
from controlplane.backups.models import Backup, BackupNotFound, BackupTrigger
from controlplane.backups.service import MAX_LISTED, BackupService
from controlplane.http.admin import admin_audit_context
from controlplane.http.state import BACKUPS_STATE_KEY


def provide_backups(state: State) -> BackupService:
    backups: BackupService = state[BACKUPS_STATE_KEY]
    return backups


#: The ``backups`` dependency of every backup route.
BACKUP_DEPENDENCIES = {"backups": Provide(provide_backups, sync_to_thread=False)}
Backups = NamedDependency[BackupService]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LISTED, description="rows at most, newest first")]


class BackupList(msgspec.Struct):
    items: list[Backup]


@post(
    "/admin/tenants/{slug:str}/backups",
    status_code=202,
    tags=["backups"],
    dependencies=BACKUP_DEPENDENCIES,
    summary="Back the tenant up now (runs in the background; 409 while another backup of it is open)",
)
async def request_backup(request: Request[Any, Any, Any], slug: FromPath[str], backups: Backups) -> Backup:
    actor = admin_audit_context(request).actor
    async with audited(request, "tenant.backup", slug=slug, entity="backup") as audit:
        backup = await backups.request(slug, BackupTrigger.MANUAL, requested_by=actor)
        audit.entity_id = backup.id
    backups.start(backup.id)
    return backup


@get(
    "/admin/tenants/{slug:str}/backups",
    tags=["backups"],
    dependencies=BACKUP_DEPENDENCIES,
    summary="The tenant's backups, newest first",
)
async def tenant_backups(slug: FromPath[str], backups: Backups, limit: Limit = 50) -> BackupList:
    return BackupList(items=await backups.list_for_tenant(slug, limit))


@get("/admin/backups/{backup_id:str}", tags=["backups"], dependencies=BACKUP_DEPENDENCIES, summary="One backup")
async def backup_detail(backup_id: FromPath[str], backups: Backups) -> Backup:
    # A string path parameter, checked here: whatever it is, the guard answers first (401 without a
    # credential), and an id that is no UUID names no backup (404, like an unknown one).
    try:
        wanted = uuid.UUID(backup_id)
    except ValueError:
        raise BackupNotFound(f"no backup {backup_id!r}", backup_id=backup_id) from None
    return await backups.get(wanted)


#: Handlers of ``/admin`` (behind ``admin_guard``).
ADMIN_BACKUP_HANDLERS = [request_backup, tenant_backups, backup_detail]
