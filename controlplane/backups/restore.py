"""``RestoreService``: a tenant restored from one of its backups into a new database, then switched to it.

A restore never writes to the live database. In order:

1. **Choose.** The backup must be the tenant's own (``BackupMismatch`` otherwise, whoever asks), succeeded,
   retained, and not found corrupted by its last verification. By slug, a tenant no longer in the registry
   (purged) is found by the slug its backups were made under.
2. **Check the objects** (``restore_load.check_object``, ``files.check_files``): the dump and the files
   object read whole, size and sha256 equal to the recorded ones, every frame authentic. Anything else is
   ``BackupCorrupted`` (recorded as a failed verification, so ``--latest`` skips it from then on); nothing
   was created.
3. **Pre-restore backup** of the live database (trigger ``pre_restore``), unless asked not to.
4. Under the tenant's lock, with a ``restore`` operation in the ledger whose params are a ``SwitchPlan``:
   ``create_database`` (``t_<id hex>_r<hex>``, closed to PUBLIC), ``pg_restore`` (streamed), ``check``
   (row counts and schema revision against the manifest), ``upgrade`` (to the tenant schema head if the
   backup is older, then the tenant group's privileges, as provisioning gives them), ``create_role`` (a
   re-created tenant), ``files`` (the backup's stored files the restored database names and the storage
   lacks are put back: ``files.put_back``), then ``quiesce``, ``switch`` and ``record`` (``restore_switch``).
   Files put back by a restore that is undone are left to storage hygiene (orphans), except for a purged
   tenant whose re-creation is undone: its storage area goes again at once.

A failure anywhere is settled at once (``Switch.settle``: undone before the switch, finished after it);
a crash is settled later by the restore upkeep (``retired.RestoreUpkeep``) or by the next restore or
rollback of the tenant, which settle an interrupted one first.

**Deleted tenants.** A soft-deleted tenant (``deleting``) is restored like any other and is ``active``
again afterwards. A purged one is registered again with its old id and slug (the slug must be free; name
and tier from the request, else the slug and the tier the ledger last recorded), in status
``provisioning`` (its API answers 503) until the switch; its login role is created with a new password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid

from controlplane.backups import files, restore_catalog
from controlplane.backups import repository as backups_repository
from controlplane.backups import restore_repository as repo
from controlplane.backups.models import Backup, BackupNotFound, BackupStatus, BackupTrigger
from controlplane.backups.restore_load import Loader, check_object, restore_conninfo
from controlplane.backups.restore_models import (
    BackupCorrupted,
    BackupMismatch,
    BackupUnusable,
    PreBackupFailed,
    RestoreMode,
    SwitchPlan,
)
from controlplane.backups.restore_switch import Switch
from controlplane.backups.retired import RestoreUpkeep, RetiredDatabases
from controlplane.backups.service import BackupService
from controlplane.backups.verification import Verifier
from controlplane.crypto import new_password, tenant_role_verifier
from controlplane.db import AsyncConn
from controlplane.errors import CardVaultError, InvalidState, OperationFailed, TenantNotFound, ValidationFailed
from controlplane.fleet import repository as fleet_repository
from controlplane.fleet.models import ServerStatus
from controlplane.platform import Platform
from controlplane.provisioning import catalog
from controlplane.provisioning import repository as ledger
from controlplane.provisioning.inputs import validate_name
from controlplane.provisioning.models import Operation, OperationKind
from controlplane.provisioning.service import TenantService
from controlplane.provisioning.steps import Steps
from controlplane.registry import repository as registry
from controlplane.registry.models import (
    SLUG_PATTERN,
    TIER_QUOTAS,
    QuotaType,
    Tenant,
    TenantStatus,
    database_name_for,
    parse_tier,
    role_name_for,
    validate_slug,
)

log = logging.getLogger(__name__)

#: Statuses a registered tenant may be restored from (provisioning: its own operation is not done).
RESTORABLE_STATUSES = frozenset(
    {TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.DELETING, TenantStatus.BROKEN}
)


class RestoreService:
    """Restores of tenants from their backups (CLI and admin API alike)."""

    def __init__(self, platform: Platform, tenants: TenantService, backups: BackupService) -> None:
        self._p = platform
        self._tenants = tenants
        self._backups = backups
        self.loader = Loader(platform.settings.database, platform.objects)
        self.switch = Switch(platform)
        #: Test restores into scratch databases (``cardvault backups verify``, the verification job).
        self.verifier = Verifier(platform, backups, self.loader)
        #: Rollbacks to retired databases, and their drop after the window.
        self.retired = RetiredDatabases(platform, tenants, self.switch)
        #: The leader job settling interrupted restores and dropping what is due.
        self.upkeep = RestoreUpkeep(platform, tenants, self.retired, self.verifier)

    async def tenant(self, tenant_id: uuid.UUID) -> Tenant | None:
        async with self._p.control.connection() as conn:
            return await registry.get_by_id(conn, tenant_id)

    # -- choosing ---------------------------------------------------------------------------------------

    async def choose(
        self, slug: str, backup_id: uuid.UUID | None = None, *, latest: bool = False
    ) -> tuple[Tenant | None, Backup]:
        """The tenant ``slug`` names (None: purged, known from its backups) and the backup to restore."""
        if (backup_id is None) == (not latest):
            raise ValidationFailed("name one backup to restore, or ask for the latest")
        async with self._p.control.connection() as conn:
            tenant = await registry.get_by_slug(conn, slug) if SLUG_PATTERN.fullmatch(slug) else None
            if tenant is not None:
                tenant_id = tenant.id
            else:
                known = await backups_repository.tenant_id_by_slug(conn, slug) if SLUG_PATTERN.fullmatch(slug) else None
                if known is None:
                    raise TenantNotFound(f"no tenant with slug {slug!r}, and no backups made under it", slug=slug)
                renamed = await registry.get_by_id(conn, known)
                if renamed is not None:
                    raise TenantNotFound(f"no tenant {slug!r}: its backups belong to {renamed.slug!r} now", slug=slug)
                tenant_id = known
            if latest:
                backup_id = await repo.latest_restorable(conn, tenant_id)
                if backup_id is None:
                    raise BackupNotFound(f"tenant {slug!r} has no backup that can be restored", slug=slug)
            assert backup_id is not None
            backup = await backups_repository.get(conn, backup_id)
            if backup is None:
                raise BackupNotFound(f"no backup {backup_id}", backup_id=str(backup_id))
            if backup.tenant_id != tenant_id:
                raise BackupMismatch(
                    f"backup {backup.id} is of another tenant: a backup is only restored into its own tenant",
                    backup_id=str(backup.id),
                    slug=slug,
                )
            if not await repo.restorable(conn, backup.id):
                raise BackupUnusable(_unusable(backup), backup_id=str(backup.id), status=backup.status.value)
        return tenant, backup

    async def check(self, backup: Backup) -> bytes:
        """The backup's data key once its object proved whole; a corrupted one is recorded as such."""
        async with self._p.control.connection() as conn:
            wrapped = await backups_repository.data_key_encrypted(conn, backup.id)
        try:
            key = await check_object(self._p.objects, self._p.box, backup, wrapped)
            await files.check_files(self._p.objects, backup, key)
            return key
        except BackupCorrupted as exc:
            async with self._p.control.connection() as conn:
                await repo.record_verification(
                    conn, backup.id, ok=False, detail=f"refused at restore: {exc.detail}", seconds=0.0
                )
            raise

    # -- restoring --------------------------------------------------------------------------------------

    async def restore(
        self,
        slug: str,
        *,
        backup_id: uuid.UUID | None = None,
        latest: bool = False,
        pre_backup: bool = True,
        requested_by: str | None = None,
        name: str | None = None,
        tier: str | None = None,
    ) -> Operation:
        """Restore the tenant ``slug`` from a backup (see the module docstring); the finished operation."""
        tenant, backup = await self.choose(slug, backup_id, latest=latest)
        if tenant is not None:
            _restorable(tenant)
        async with self._backups.leased(backup.id):  # expiry keeps away while its object is read
            key = await self.check(backup)
            pre = await self._pre_backup(tenant, requested_by) if tenant is not None and pre_backup else None
            if tenant is None:
                return await self._recreate(slug, backup, key, name=name, tier=tier, requested_by=requested_by)
            return await self._replace(slug, tenant.id, backup, key, pre, requested_by)

    async def _pre_backup(self, tenant: Tenant, requested_by: str | None) -> uuid.UUID | None:
        if tenant.status is TenantStatus.BROKEN:
            return None  # its database is gone: nothing to keep
        made = await self._backups.create(tenant, BackupTrigger.PRE_RESTORE, requested_by or "restore", exclusive=False)
        if made.status is not BackupStatus.SUCCEEDED:
            raise PreBackupFailed(
                f"the backup of {tenant.slug!r} before the restore failed ({made.error}); nothing was changed. "
                "Retry, or restore without a pre-restore backup",
                backup_id=str(made.id),
            )
        return made.id

    async def _replace(
        self,
        slug: str,
        tenant_id: uuid.UUID,
        backup: Backup,
        key: bytes,
        pre: uuid.UUID | None,
        requested_by: str | None,
    ) -> Operation:
        async with self._tenants.locked_slug(slug, expect=tenant_id) as (conn, tenant):
            _restorable(tenant)
            await self.switch.settle_tenant(conn, tenant.id)
            async with self._p.fleet.admin(conn, tenant.server_id) as admin:
                live = await catalog.database_exists(admin, tenant.database_name)
            short = secrets.token_hex(4)
            plan = SwitchPlan(
                mode=RestoreMode.REPLACE,
                server_id=tenant.server_id,
                source=restore_catalog.staging_name(tenant.id, short),
                retired=restore_catalog.retired_name(tenant.id, short) if live else None,
                status_after=(
                    TenantStatus.SUSPENDED if tenant.status is TenantStatus.SUSPENDED else TenantStatus.ACTIVE
                ),
                backup_id=backup.id,
                pre_backup_id=pre,
                requested_by=requested_by,
            )
            op_id = await ledger.start(conn, tenant.id, tenant.slug, OperationKind.RESTORE, plan.to_params())
            return await self._run(conn, tenant, op_id, plan, backup, key)

    async def _recreate(
        self, slug: str, backup: Backup, key: bytes, *, name: str | None, tier: str | None, requested_by: str | None
    ) -> Operation:
        validate_slug(slug)
        display = validate_name(name) if name is not None else slug
        tenant_id = backup.tenant_id
        async with self._tenants.locked(tenant_id) as conn:
            if await registry.get_by_id(conn, tenant_id) is not None:
                raise InvalidState("the tenant was registered again meanwhile; restore it by its slug")
            tier_ = parse_tier(tier or await repo.last_known_tier(conn, tenant_id) or "starter")
            server_id = await self._server_for(conn, backup)
            plan = SwitchPlan(
                mode=RestoreMode.RECREATE,
                server_id=server_id,
                source=restore_catalog.staging_name(tenant_id, secrets.token_hex(4)),
                retired=None,
                status_after=TenantStatus.ACTIVE,
                backup_id=backup.id,
                tier=tier_.value,
                requested_by=requested_by,
            )
            async with conn.transaction():
                await registry.insert_tenant(  # status provisioning: its API answers 503 until the switch
                    conn,
                    tenant_id=tenant_id,
                    slug=slug,
                    name=display,
                    tier=tier_,
                    max_users=TIER_QUOTAS[tier_][QuotaType.USERS],
                    server_id=server_id,
                    database_name=database_name_for(tenant_id),
                    role_name=role_name_for(tenant_id),
                    role_password_encrypted=self._p.box.encrypt(new_password()),
                )
                op_id = await ledger.start(conn, tenant_id, slug, OperationKind.RESTORE, plan.to_params())
            tenant = await registry.get_by_id(conn, tenant_id)
            assert tenant is not None
            return await self._run(conn, tenant, op_id, plan, backup, key)

    async def _server_for(self, conn: AsyncConn, backup: Backup) -> uuid.UUID:
        """The server the backup was made on while it takes tenants, else the one placement chooses."""
        server = await fleet_repository.get_by_id(conn, backup.server_id)
        if server is not None and server.status is ServerStatus.ACTIVE:
            return server.id
        return (await self._p.fleet.place(conn)).id

    # -- the steps ----------------------------------------------------------------------------------------

    async def _run(
        self, conn: AsyncConn, tenant: Tenant, op_id: int, plan: SwitchPlan, backup: Backup, key: bytes
    ) -> Operation:
        steps = Steps(self._p)
        try:
            await self._steps(conn, tenant, op_id, plan, backup, key, steps)
        except Exception as exc:
            failed_step = steps.current
            try:
                finished = await self.switch.settle(conn, tenant.id, op_id, plan, steps, str(exc))
            except Exception as settle_exc:
                log.error(
                    "restore #%d of %s: settling failed (%s); the restore upkeep will", op_id, tenant.slug, settle_exc
                )
                raise OperationFailed(
                    f"restore failed at step {failed_step}: {exc}; it is finished or undone by the restore upkeep",
                    step=failed_step,
                ) from exc
            if not finished:
                if plan.mode is RestoreMode.RECREATE:  # purged it was, purged it stays: files put back go too
                    with contextlib.suppress(OSError):  # else storage hygiene removes the area (tenant_gone)
                        await self._tenants.storage.delete_all(tenant.id)
                if isinstance(exc, CardVaultError):
                    raise
                raise OperationFailed(
                    f"restore failed at step {failed_step}: {exc}; nothing was changed", step=failed_step
                ) from exc
        found = await ledger.get(conn, op_id)
        assert found is not None
        return found

    async def _steps(
        self, conn: AsyncConn, tenant: Tenant, op_id: int, plan: SwitchPlan, backup: Backup, key: bytes, steps: Steps
    ) -> None:
        fleet, scripts = self._p.fleet, self._p.tenant_scripts

        async def create_database() -> int:
            async with fleet.admin(conn, plan.server_id) as admin:
                await restore_catalog.create_closed_database(admin, plan.source)
                return await restore_catalog.server_version(admin)

        version = await steps.run("create_database", create_database)
        dsn = await fleet.dsn(conn, plan.server_id)
        await steps.run("pg_restore", lambda: self.loader.pg_restore(dsn, plan.source, backup, key, version))

        async def check() -> str | None:
            async with fleet.connect_database(conn, plan.server_id, plan.source) as restored:
                return await self.loader.check_manifest(restored, backup, scripts.version_table)

        revision = await steps.run("check", check)

        async def upgrade() -> None:
            if revision != scripts.head():  # an older backup: the code serves the head schema only
                info = restore_conninfo(dsn, self._p.settings.database, plan.source)
                await asyncio.to_thread(scripts.upgrade, info)
            async with fleet.connect_database(conn, plan.server_id, plan.source) as restored:
                await catalog.grant_schema_privileges(restored, scripts.version_table)

        await steps.run("upgrade", upgrade)

        async def create_role() -> None:
            encrypted = await registry.role_password_encrypted(conn, tenant.id)
            assert encrypted is not None
            async with fleet.admin(conn, plan.server_id) as admin:
                if not await catalog.role_exists(admin, tenant.role_name):
                    verifier = tenant_role_verifier(self._p.box.decrypt(encrypted))
                    await catalog.create_tenant_role(admin, tenant.role_name, plan.source, verifier)

        await steps.run("create_role", create_role)

        async def put_files() -> int:
            async with fleet.connect_database(conn, plan.server_id, plan.source) as restored:
                rows = await files.referenced(restored)
            return await files.put_back(self._p.objects, self._tenants.storage, tenant.id, backup, key, rows)

        await steps.run("files", put_files)
        if plan.retired is not None:
            await steps.run("quiesce", lambda: self.switch.quiesce(conn, tenant, plan))
        await steps.run("switch", lambda: self.switch.switch(conn, tenant, plan))
        current = await registry.get_by_id(conn, tenant.id)
        assert current is not None
        await steps.run("record", lambda: self.switch.record(conn, current, op_id, plan, steps))


def _restorable(tenant: Tenant) -> None:
    if tenant.status not in RESTORABLE_STATUSES:
        raise InvalidState(f"cannot restore a tenant that is {tenant.status.value}", status=tenant.status.value)


def _unusable(backup: Backup) -> str:
    if backup.status is not BackupStatus.SUCCEEDED:
        return f"backup {backup.id} is {backup.status.value}: only a succeeded backup can be restored"
    if backup.deleted_at is not None:
        return f"backup {backup.id} has expired and its object is deleted"
    return f"backup {backup.id} failed its last verification (corrupted): it is never restored"
