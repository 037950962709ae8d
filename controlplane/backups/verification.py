"""``Verifier``: a backup restored into a scratch database and checked, without touching any tenant.

``verify(backup_id)`` (``cardvault backups verify ID``, ``POST /admin/backups/{id}/verify``) checks the
stored objects whole (the dump and the files object: size, sha256, every frame authentic), restores the dump
with ``pg_restore`` into a scratch database ``cvverify_<tag>_<hex>`` on the server the backup was made on
(placement's choice if that server is gone), compares row counts and schema revision with the manifest and
the files object with the restored ``files`` rows (``files.check_rows``), drops the scratch database and
records the outcome in ``backup_verifications``. A corrupted backup (checksum, truncation, authentication,
``pg_restore`` failure, manifest mismatch) gets a failed row, and a backup whose last verification failed
is never restored. A verification that cannot run at all (server unreachable, no ``pg_restore``) raises
and records nothing: it says nothing about the backup.

``job()`` (leader, every ``CARDVAULT_BACKUP_VERIFY_INTERVAL``) verifies ``CARDVAULT_BACKUP_VERIFY_SAMPLE``
retained backups not verified within the interval, never-verified ones first.

A verification holds an advisory lock named after its scratch database on the control database while it
exists; ``clear_leftovers`` (the restore upkeep) drops this control plane's scratch databases whose lock
is free (their verification died with its process). The ``<tag>`` is the spare pool's, so another control
plane's scratch databases on a shared server are never taken for ours.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid

from controlplane import db
from controlplane.backups import files, restore_catalog
from controlplane.backups import repository as backups_repository
from controlplane.backups import restore_repository as repo
from controlplane.backups.models import Backup, BackupStatus
from controlplane.backups.restore_load import Loader, check_object
from controlplane.backups.restore_models import (
    VERIFY_PREFIX,
    BackupCorrupted,
    BackupUnusable,
    RestoreCheckFailed,
    Verification,
)
from controlplane.backups.service import BackupService
from controlplane.db import AsyncConn
from controlplane.errors import CardVaultError
from controlplane.fleet import repository as fleet_repository
from controlplane.platform import Platform
from controlplane.provisioning import catalog, spares_repository

log = logging.getLogger(__name__)


def _scratch_lock(name: str) -> int:
    return db.lock_key(f"cardvault:verify:{name}")


class Verifier:
    """Test restores of backups into scratch databases, and the verification job."""

    def __init__(self, platform: Platform, backups: BackupService, loader: Loader | None = None) -> None:
        self._p = platform
        self._backups = backups
        self._loader = loader or Loader(platform.settings.database, platform.objects)

    async def verify(self, backup_id: uuid.UUID) -> Verification:
        """Restore the backup into a scratch database, check it, drop it; the recorded verification."""
        backup = await self._backups.get(backup_id)
        if backup.status is not BackupStatus.SUCCEEDED:
            raise BackupUnusable(
                f"backup {backup.id} is {backup.status.value}: only a succeeded backup can be verified",
                backup_id=str(backup.id),
            )
        started = time.perf_counter()
        async with self._backups.leased(backup.id):
            try:
                ok, detail = True, await self._restore_and_check(backup)
            except (BackupCorrupted, RestoreCheckFailed, BackupUnusable) as exc:
                ok, detail = False, exc.detail
        seconds = round(time.perf_counter() - started, 3)
        async with self._p.control.connection() as conn:
            verification = await repo.record_verification(conn, backup.id, ok=ok, detail=detail, seconds=seconds)
        (log.info if ok else log.error)("verification of backup %s: %s", backup.id, detail)
        return verification

    async def verifications(self, backup_id: uuid.UUID) -> list[Verification]:
        """The backup's verifications, newest first (``BackupNotFound`` for no such backup)."""
        await self._backups.get(backup_id)
        async with self._p.control.connection() as conn:
            return await repo.verifications(conn, backup_id)

    async def _restore_and_check(self, backup: Backup) -> str:
        async with self._p.control.connection() as conn:
            wrapped = await backups_repository.data_key_encrypted(conn, backup.id)
            tag = await spares_repository.pool_tag(conn)
            server_id = await self._server_for(conn, backup)
        key = await check_object(self._p.objects, self._p.box, backup, wrapped)
        kept = await files.check_files(self._p.objects, backup, key)
        name = f"{VERIFY_PREFIX}{tag}_{secrets.token_hex(8)}"
        fleet = self._p.fleet
        async with self._p.control.connection() as conn:
            await db.advisory_lock(conn, _scratch_lock(name))  # held while the scratch database exists
            try:
                async with fleet.admin(conn, server_id) as admin:
                    await restore_catalog.create_closed_database(admin, name)
                    version = await restore_catalog.server_version(admin)
                try:
                    await self._loader.pg_restore(await fleet.dsn(conn, server_id), name, backup, key, version)
                    async with fleet.connect_database(conn, server_id, name) as restored:
                        revision = await self._loader.check_manifest(
                            restored, backup, self._p.tenant_scripts.version_table
                        )
                        if kept is not None:
                            await files.check_rows(restored, backup, kept)
                finally:
                    async with fleet.admin(conn, server_id) as admin:
                        await catalog.drop_database(admin, name)
            finally:
                await db.advisory_unlock(conn, _scratch_lock(name))
        tables = backup.manifest.get("tables")
        counts = tables if isinstance(tables, dict) else {}
        rows = sum(int(n) for n in counts.values())
        stored = "" if kept is None else f", {len(kept)} stored file(s)"
        return f"restored and checked: {len(counts)} table(s), {rows} row(s){stored}, schema revision {revision}"

    async def _server_for(self, conn: AsyncConn, backup: Backup) -> uuid.UUID:
        server = await fleet_repository.get_by_id(conn, backup.server_id)
        return server.id if server is not None else (await self._p.fleet.place(conn)).id

    async def job(self) -> str:
        """Verify a sample of recent backups (see the module docstring); the outcome line."""
        settings = self._p.settings.backups
        async with self._p.control.connection() as conn:
            due = await repo.due_for_verification(conn, settings.verify_sample, settings.verify_interval)
        ok = failed = skipped = 0
        for backup_id in due:
            try:
                verification = await self.verify(backup_id)
            except CardVaultError as exc:
                skipped += 1
                log.warning("backup %s could not be verified now: %s", backup_id, exc.detail)
                continue
            ok, failed = ok + verification.ok, failed + (not verification.ok)
        line = f"verified {ok + failed} backup(s): {ok} ok, {failed} failed"
        return line + (f", {skipped} skipped" if skipped else "")

    async def clear_leftovers(self) -> int:
        """Drop this control plane's scratch databases whose verification died; how many."""
        dropped = 0
        async with self._p.control.connection() as conn:
            tag = await spares_repository.pool_tag(conn)
            for server in await fleet_repository.list_servers(conn):
                try:
                    async with self._p.fleet.admin(conn, server.id) as admin:
                        for name in await restore_catalog.list_databases(admin, f"{VERIFY_PREFIX}{tag}_"):
                            if not await db.try_advisory_lock(conn, _scratch_lock(name)):
                                continue  # its verification is running
                            try:
                                await catalog.drop_database(admin, name)
                                dropped += 1
                            finally:
                                await db.advisory_unlock(conn, _scratch_lock(name))
                except CardVaultError as exc:
                    log.warning("verification leftovers on %s not checked: %s", server.name, exc.detail)
        return dropped
