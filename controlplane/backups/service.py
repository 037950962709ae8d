"""``BackupService``: asking for a backup, running it, listing them, expiring them.

A backup is a row before it is anything else (``request``: ``pending``, with its object key and a fresh data
key wrapped by the master key), so a crash always leaves a row that says what to finish. ``run`` takes a
slot of the tenant's server (at most ``CARDVAULT_BACKUP_CONCURRENCY`` backups per server in this process),
then the backup's **lease** (a session advisory lock on one dedicated control connection of this process),
claims it (``running``, one more attempt), dumps the database into the object store (``dump.Dumper``) and
records the result, fenced by the attempt number: a runner whose lease was lost and whose backup was taken
over meanwhile can no longer change it. A process that dies releases its leases with its connection; the
backup job then finds ``running`` rows whose lease is free and runs them again (``recover``), up to
``CARDVAULT_MAX_ATTEMPTS`` attempts, and starts the ``pending`` ones nobody is running. A failed dump leaves
no object and a ``failed`` row with the reason (pg_dump's own message). After the dump, the tenant's stored
files that the dump's ``files`` rows name go into a second sealed object (``files.store_files``, same data
key, recorded in ``manifest["files"]``; a file missing from storage is listed there, not a failure). (A
runner that lost its lease connection is not stopped: should the backup be taken over and the old runner
finish last, its object replaces the new one's under the same key and data key, and the row's sha256, the
new attempt's, no longer matches: restores and verifications refuse it rather than restore something
unchecked.)

Expiry deletes the objects (the dump and the files) first and then marks the row ``expired`` (a crash in
between is finished by the next run: deleting is idempotent), for every succeeded backup past ``expires_at``
whether its tenant still exists or not. Each success and expiry updates the tenant's
``tenant_storage_usage`` row of type ``backups`` (retained bytes, dumps and files objects both, and count).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from controlplane.backups import files, repository
from controlplane.backups.dump import Dumper, DumpFailed
from controlplane.backups.leases import Leases, ServerSlots
from controlplane.backups.models import (
    OPEN_STATUSES,
    Backup,
    BackupInProgress,
    BackupNotFound,
    BackupStatus,
    BackupTrigger,
    files_object_key,
    object_key,
)
from controlplane.db import AsyncConn
from controlplane.errors import CardVaultError, InvalidState, TenantNotFound, TooManyRequests
from controlplane.objectstore.sealed import new_data_key, unwrap_key, wrap_key
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.registry.models import SLUG_PATTERN, Tenant, TenantStatus
from controlplane.settings.groups import DEFAULT_BACKUP_SCHEDULES
from controlplane.storage import Storage
from controlplane.storage.local import LocalStorage
from controlplane.usage import repository as usage_repository
from controlplane.usage.models import BACKUPS_STORAGE_TYPE

log = logging.getLogger(__name__)

#: Tenants that may be backed up: their database exists (a deleted tenant is kept until its purge).
BACKUP_STATUSES = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.DELETING})
#: Backups a tenant's own admins may ask for per day (on top of the one-open-backup rule).
TENANT_REQUESTS_PER_DAY = 5
#: Rows listed at most.
MAX_LISTED = 500
#: Expired backups handled per ``expire`` call.
EXPIRE_BATCH = 500


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BackupService:
    """Backups of tenant databases (see the module doc). Safe for concurrent use within one event loop."""

    def __init__(
        self,
        platform: Platform,
        *,
        dumper: Dumper | None = None,
        storage: Storage | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._p = platform
        self._settings = platform.settings
        self.dumper = dumper or Dumper(platform.settings.database)
        #: The tenants' stored files (card images), as the tenant API keeps them.
        self.storage = storage if storage is not None else LocalStorage(platform.settings.data_dir / "storage")
        self._clock = clock
        self._leases = Leases(platform.settings.database.url, platform.settings.database)
        self.slots = ServerSlots(platform.settings.backups.per_server_concurrency)
        #: Backups this process runs or has queued (the job does not start them twice).
        self._active: set[uuid.UUID] = set()
        self._tasks: set[asyncio.Task[Backup | None]] = set()

    @property
    def platform(self) -> Platform:
        return self._p

    async def stop(self) -> None:
        """Cancel the backups running in the background (their rows stay ``running``: the job retries
        them) and drop the leases."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._leases.close()

    # -- asking ---------------------------------------------------------------------------------------

    async def request(
        self,
        tenant: Tenant | str | uuid.UUID,
        trigger: BackupTrigger = BackupTrigger.MANUAL,
        requested_by: str | None = None,
        *,
        exclusive: bool = True,
    ) -> Backup:
        """Write a ``pending`` backup of ``tenant`` (a slug, an id or the registry row) and return it.

        ``exclusive``: refuse (``BackupInProgress``, 409) while another backup of the tenant is pending or
        running. A tenant admin (``trigger`` ``tenant``) may also ask ``TENANT_REQUESTS_PER_DAY`` times a day
        at most (429).
        """
        async with self._p.control.connection() as conn, conn.transaction():
            current = await self._current(conn, tenant)
            if current.status not in BACKUP_STATUSES:
                raise InvalidState(f"tenant {current.slug!r} is {current.status.value}: it cannot be backed up")
            await repository.lock_requests(conn, current.id)
            if exclusive and await repository.open_count(conn, current.id):
                raise BackupInProgress(f"a backup of {current.slug!r} is already pending or running")
            if trigger is BackupTrigger.TENANT:
                made = await repository.requested_since(conn, current.id, trigger, 86400.0)
                if made >= TENANT_REQUESTS_PER_DAY:
                    raise TooManyRequests(
                        f"at most {TENANT_REQUESTS_PER_DAY} backups a day can be asked for",
                        headers={"Retry-After": "3600"},
                    )
            backup_id = uuid.uuid4()
            return await repository.insert(
                conn,
                backup_id=backup_id,
                tenant=current,
                trigger=trigger,
                requested_by=requested_by,
                store=self._p.objects.description,
                object_key=object_key(current.id, backup_id),
                data_key_encrypted=wrap_key(self._p.box, new_data_key()),
            )

    async def create(
        self,
        tenant: Tenant | str | uuid.UUID,
        trigger: BackupTrigger = BackupTrigger.MANUAL,
        requested_by: str | None = None,
        *,
        exclusive: bool = True,
    ) -> Backup:
        """``request`` and ``run`` at once: the finished backup (``succeeded``, or ``failed`` with its error)."""
        backup = await self.request(tenant, trigger, requested_by, exclusive=exclusive)
        return await self.run(backup.id)

    async def wait_background(self) -> None:
        """Wait for the backups running in the background of this process to end."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def start(self, backup_id: uuid.UUID) -> bool:
        """Run the backup in the background of this process; False if this process already runs it."""
        if backup_id in self._active:
            return False
        self._active.add(backup_id)
        task = asyncio.create_task(self._background(backup_id), name=f"backup-{backup_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _background(self, backup_id: uuid.UUID) -> Backup | None:
        try:
            return await self._run_owned(backup_id)
        except Exception:
            log.exception("backup %s failed unexpectedly", backup_id)
            return None

    # -- running --------------------------------------------------------------------------------------

    async def run(self, backup_id: uuid.UUID) -> Backup:
        """Perform the pending (or abandoned running) backup and return its row as it ends.

        A backup this process already runs, or another process holds the lease of, is not run twice: its
        row is returned as it is now.
        """
        if backup_id in self._active:
            return await self.get(backup_id)
        self._active.add(backup_id)
        return await self._run_owned(backup_id)

    async def _run_owned(self, backup_id: uuid.UUID) -> Backup:
        try:
            async with self._p.control.connection() as conn:
                backup = await self._row(conn, backup_id)
                tenant = await registry.get_by_id(conn, backup.tenant_id)
            if backup.status not in OPEN_STATUSES:
                return backup
            server_id = tenant.server_id if tenant is not None else backup.server_id
            async with self.slots.hold(server_id):
                if not await self._leases.acquire(backup_id):
                    return await self.get(backup_id)  # another process runs it
                try:
                    return await self._run_leased(backup_id)
                finally:
                    await self._leases.release(backup_id)
        finally:
            self._active.discard(backup_id)

    async def _run_leased(self, backup_id: uuid.UUID) -> Backup:
        async with self._p.control.connection() as conn:
            backup = await self._row(conn, backup_id)
            if backup.status not in OPEN_STATUSES:
                return backup  # finished by someone else while this one waited for its slot
            limit = self._settings.provisioning.max_attempts
            if backup.attempts >= limit:
                return await self._fail(conn, backup, f"interrupted {backup.attempts} time(s); not retried")
            tenant = await registry.get_by_id(conn, backup.tenant_id)
            if tenant is None or tenant.status not in BACKUP_STATUSES:
                why = "no longer exists" if tenant is None else f"is {tenant.status.value}"
                return await self._fail(conn, backup, f"the tenant {why}")
            wrapped = await repository.data_key_encrypted(conn, backup_id)
            claimed = await repository.claim(
                conn, backup_id, server_id=tenant.server_id, database_name=tenant.database_name
            )
            if claimed is None or wrapped is None:
                return await self._row(conn, backup_id)
            try:
                dsn = await self._p.fleet.dsn(conn, tenant.server_id)
            except CardVaultError as exc:
                return await self._fail(conn, claimed, exc.detail, attempt=claimed.attempts)
        log.info("backup %s of %s: attempt %d started", backup_id, tenant.slug, claimed.attempts)
        files_key = files_object_key(tenant.id, backup_id)
        try:
            data_key = unwrap_key(self._p.box, wrapped)
            stored, manifest, referenced = await self.dumper.dump(
                dsn, tenant.database_name, self._p.objects, claimed.object_key, data_key
            )
            manifest.files = await files.store_files(
                self.storage, self._p.objects, tenant.id, files_key, data_key, referenced
            )
        except Exception as exc:
            reason = exc.detail if isinstance(exc, CardVaultError) else str(exc) or type(exc).__name__
            if not isinstance(exc, CardVaultError | OSError | DumpFailed):
                log.exception("backup %s of %s failed", backup_id, tenant.slug)
            async with self._p.control.connection() as conn:
                failed = await self._fail(conn, claimed, reason, attempt=claimed.attempts)
            if failed.status is BackupStatus.FAILED and failed.attempts == claimed.attempts:
                # Still this attempt's backup. The store's put left nothing; make sure (a newer attempt's
                # object, had this one been superseded, is never touched).
                for key in (claimed.object_key, files_key):
                    with contextlib.suppress(Exception):
                        await self._p.objects.delete(key)
            return failed
        retention = self._retention(tenant.subscription_tier.value)
        async with self._p.control.connection() as conn, conn.transaction():
            done = await repository.succeed(
                conn,
                backup_id,
                claimed.attempts,
                size=stored.size,
                sha256=stored.sha256,
                manifest=manifest,
                retention_seconds=retention,
            )
            if done is None:  # taken over meanwhile (this process lost its lease): the new attempt decides
                log.warning("backup %s: attempt %d was superseded; its result is dropped", backup_id, claimed.attempts)
                return await self._row(conn, backup_id)
            await self._update_usage(conn, [tenant.id])
        log.info("backup %s of %s: %d bytes stored", backup_id, tenant.slug, stored.size)
        return done

    async def _fail(self, conn: AsyncConn, backup: Backup, reason: str, *, attempt: int | None = None) -> Backup:
        log.warning("backup %s of %s failed: %s", backup.id, backup.tenant_slug, reason)
        failed = await repository.fail(conn, backup.id, reason, attempt=attempt)
        return failed if failed is not None else await self._row(conn, backup.id)

    def _retention(self, tier: str) -> float:
        schedule = self._settings.backups.schedules.get(tier) or DEFAULT_BACKUP_SCHEDULES.get(tier)
        return schedule.retention if schedule is not None else 7 * 86400.0

    # -- the job's part ---------------------------------------------------------------------------------

    async def recover(self) -> int:
        """Start every open backup this process does not run: pending ones, and running ones whose runner
        died (their lease is free; the run retries or fails them). The number started."""
        async with self._p.control.connection() as conn:
            found = await repository.open_backups(conn)
        return sum(self.start(b.id) for b in found if b.id not in self._active)

    async def expire(self, limit: int = EXPIRE_BATCH) -> int:
        """Delete the objects of succeeded backups past their expiry and mark them ``expired``; how many."""
        async with self._p.control.connection() as conn:
            due = await repository.due_for_expiry(conn, limit)
        gone: list[repository.Expiring] = []
        for item in due:
            if not await self._leases.acquire(item.id):
                continue  # being read (a restore, a verification): next time
            try:
                for key in (item.object_key, item.files_key):
                    if key is not None:
                        await self._p.objects.delete(key)
                gone.append(item)
            except Exception:
                log.exception("backup %s: cannot delete its objects; expiry retried next run", item.id)
            finally:
                await self._leases.release(item.id)
        if not gone:
            return 0
        async with self._p.control.connection() as conn, conn.transaction():
            expired = await repository.mark_expired(conn, [g.id for g in gone])
            await self._update_usage(conn, sorted({g.tenant_id for g in gone}))
        return expired

    @asynccontextmanager
    async def leased(self, backup_id: uuid.UUID) -> AsyncIterator[None]:
        """Hold the backup's lease for the block (read its object while expiry and other runs keep away);
        ``BackupInProgress`` when someone else holds it."""
        if not await self._leases.acquire(backup_id):
            raise BackupInProgress(f"backup {backup_id} is in use by another process; retry shortly")
        try:
            yield
        finally:
            await self._leases.release(backup_id)

    async def _update_usage(self, conn: AsyncConn, tenant_ids: Sequence[uuid.UUID]) -> None:
        rows = await repository.retained(conn, tenant_ids)
        await usage_repository.upsert_storage(
            conn,
            self._clock(),
            [usage_repository.StorageRow(r.tenant_id, BACKUPS_STORAGE_TYPE, r.size, r.number) for r in rows],
        )

    # -- reading --------------------------------------------------------------------------------------

    async def get(self, backup_id: uuid.UUID) -> Backup:
        async with self._p.control.connection() as conn:
            return await self._row(conn, backup_id)

    async def list_for_tenant(self, tenant: Tenant | str | uuid.UUID, limit: int = 50) -> list[Backup]:
        """The tenant's backups, newest first. By slug, a tenant no longer in the registry is found by the
        slug its backups were made under."""
        async with self._p.control.connection() as conn:
            tenant_id: uuid.UUID | None
            if isinstance(tenant, Tenant):
                tenant_id = tenant.id
            elif isinstance(tenant, uuid.UUID):
                tenant_id = tenant
            else:
                found = await self._by_slug(conn, tenant)
                if found is not None:
                    tenant_id = found.id
                elif SLUG_PATTERN.fullmatch(tenant):  # a slug no tenant has now: one that had backups
                    tenant_id = await repository.tenant_id_by_slug(conn, tenant)
                else:
                    tenant_id = None
            if tenant_id is None:
                raise TenantNotFound(f"no tenant with slug {tenant!r}", slug=str(tenant))
            return await repository.list_for_tenant(conn, tenant_id, max(1, min(limit, MAX_LISTED)))

    async def _row(self, conn: AsyncConn, backup_id: uuid.UUID) -> Backup:
        backup = await repository.get(conn, backup_id)
        if backup is None:
            raise BackupNotFound(f"no backup {backup_id}", backup_id=str(backup_id))
        return backup

    async def _by_slug(self, conn: AsyncConn, slug: str) -> Tenant | None:
        if not (isinstance(slug, str) and SLUG_PATTERN.fullmatch(slug)):
            return None
        return await registry.get_by_slug(conn, slug)

    async def _current(self, conn: AsyncConn, tenant: Tenant | str | uuid.UUID) -> Tenant:
        if isinstance(tenant, str):
            found = await self._by_slug(conn, tenant)
        else:
            found = await registry.get_by_id(conn, tenant.id if isinstance(tenant, Tenant) else tenant)
        if found is None:
            name = tenant.slug if isinstance(tenant, Tenant) else str(tenant)
            raise TenantNotFound(f"no tenant {name!r}", slug=name)
        return found
