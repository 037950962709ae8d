"""The tenant's own backups in the tenant API (``/t/{slug}/api/backups``, ``/api/backups``), for its admins
(``settings:manage``, i.e. tenant_admin).

- ``GET /backups``: its backups, newest first, as ``TenantBackup`` (no object key, data key, server,
  database name or error text).
- ``POST /backups``: ask for one now: 202 with it, run in the background; 409 ``backup_in_progress`` while
  one is pending or running, 429 ``rate_limited`` past ``TENANT_REQUESTS_PER_DAY`` a day. Audited in the
  tenant's ``audit_log`` (``backup.request``).

The tenant comes from the request's own resolution and credential: another tenant's token is refused
(403 ``wrong_tenant``) before these handlers run, and nothing here takes a tenant or backup id as input.
"""

from __future__ import annotations

import msgspec
from litestar import get, post
from litestar.di import NamedDependency

from controlplane.audit import repository as audit
from controlplane.auth.models import Permission
from controlplane.backups.admin_routes import BACKUP_DEPENDENCIES, Backups, Limit
from controlplane.backups.models import BackupTrigger, TenantBackup
from controlplane.context import TenantRequest
from controlplane.http.tenant_api import requires

#: The permission of the backup routes: a tenant_admin's.
BACKUP_PERMISSION = Permission.SETTINGS_MANAGE
Ctx = NamedDependency[TenantRequest]


class TenantBackupList(msgspec.Struct):
    items: list[TenantBackup]


@get(
    "/backups",
    opt=requires(BACKUP_PERMISSION),
    tags=["backups"],
    dependencies=BACKUP_DEPENDENCIES,
    summary="The tenant's backups, newest first",
)
async def list_backups(tenant_request: Ctx, backups: Backups, limit: Limit = 50) -> TenantBackupList:
    found = await backups.list_for_tenant(tenant_request.tenant.id, limit)
    return TenantBackupList(items=[TenantBackup.of(b) for b in found])


@post(
    "/backups",
    opt=requires(BACKUP_PERMISSION),
    status_code=202,
    tags=["backups"],
    dependencies=BACKUP_DEPENDENCIES,
    summary="Ask for a backup now (409 while one is pending or running)",
)
async def request_backup(tenant_request: Ctx, backups: Backups) -> TenantBackup:
    ctx = tenant_request
    backup = await backups.request(ctx.tenant.id, BackupTrigger.TENANT, requested_by=ctx.audit.actor)
    await audit.record_tenant(ctx.conn, ctx.audit, "backup.request", entity="backup", entity_id=str(backup.id))
    backups.start(backup.id)
    return TenantBackup.of(backup)


#: Handlers of the tenant API (mounted with ``TENANT_API_HANDLERS``).
TENANT_BACKUP_HANDLERS = [list_backups, request_backup]
