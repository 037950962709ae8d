"""Tenant and user exports: asked for, made in the background, downloaded once, then deleted.

- ``request`` writes a ``pending`` row (only the download token's SHA-256) and returns the one-time link.
- ``kick`` makes it at once in this process, in the background (at most ``concurrency`` at a time); the
  leader's ``upkeep`` also takes whatever is pending or was left running by a process that died (its lease
  ended). A worker reads the tenant database in one REPEATABLE READ, read-only transaction over its own
  management connection (never a request pool), streams the archive (``archive.write_archive``) through
  AES-GCM sealing (a data key per archive, wrapped by the master key) into the object store under
  ``exports/<tenant id>/<export id>.<attempt>.zip.cvs``, and marks the row ``ready`` for
  ``CARDVAULT_EXPORT_TTL``. A failed attempt is retried (``MAX_ATTEMPTS``), then the export fails.
- ``open_download`` checks the link (the export must be the tenant's, the token right: otherwise 404),
  reserves the one download and streams the archive unsealed; when the stream has been sent whole the
  export is ``downloaded`` and its archive deleted. A stream that breaks off leaves the link working.
- ``upkeep`` also expires links past their time and deletes the archives of ended exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
from psycopg import IsolationLevel
from psycopg import errors as pg_errors

from controlplane import db
from controlplane.auth.models import Permission, Principal
from controlplane.context import TenantContext
from controlplane.errors import NotFound, PermissionDenied
from controlplane.objectstore.sealed import SealBroken, new_data_key, seal, unseal, unwrap_key, wrap_key
from controlplane.platform import Platform
from controlplane.privacy import repository as repo
from controlplane.privacy.archive import ArchiveSpec, write_archive
from controlplane.privacy.errors import DownloadInProgress, ExportFailed, ExportGone, ExportInProgress, ExportNotReady
from controlplane.privacy.models import ExportCreated, ExportKind, ExportRecord, ExportStatus
from controlplane.registry import repository as registry
from controlplane.storage import Storage
from controlplane.storage.local import LocalStorage

log = logging.getLogger(__name__)

#: What a principal must hold to export (and list, and download) a whole tenant.
TENANT_EXPORT_PERMISSIONS = frozenset(
    {Permission.USERS_READ, Permission.AUDIT_READ, Permission.CARDS_READ, Permission.CATALOG_READ}
)
#: What a principal must hold to export another user's data.
USER_EXPORT_PERMISSIONS = frozenset({Permission.USERS_READ, Permission.AUDIT_READ})
#: Seconds a worker's claim on an export lasts; renewed every third of it while the worker runs.
LEASE_SECONDS = 120.0
#: Seconds one download holds the link (no second download meanwhile).
DOWNLOAD_LEASE_SECONDS = 900.0
#: Attempts at making an export before it fails.
MAX_ATTEMPTS = 3
#: Exports the leader's job makes per run, and archives it deletes per run.
PER_RUN = 10
#: ``application_name`` suffix of the connections that read tenant databases for exports.
EXPORT_ROLE = "export"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def object_key(record: ExportRecord) -> str:
    """Where an attempt's archive is stored (per tenant, per attempt: a late worker never touches its
    successor's object)."""
    return f"exports/{record.tenant_id}/{record.id}.{record.attempts}.zip.cvs"


def require(principal: Principal, permissions: frozenset[Permission], what: str) -> None:
    missing = sorted(p.value for p in permissions if not principal.can(p))
    if missing:
        raise PermissionDenied(f"{what} needs {', '.join(missing)}", permission=missing[0])


class Download(msgspec.Struct, frozen=True, kw_only=True):
    """A download that has begun: the export, the archive's bytes (stream it to the end), its file name."""

    record: ExportRecord
    chunks: AsyncIterator[bytes]
    filename: str


class _Measured:
    """Passes a stream through, counting its bytes and hashing them."""

    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._source = source
        self.size = 0
        self.digest = hashlib.sha256()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._source:
            self.size += len(chunk)
            self.digest.update(chunk)
            yield chunk


class Exports:
    def __init__(self, platform: Platform, storage: Storage | None = None, *, concurrency: int = 2) -> None:
        self._p = platform
        #: The tenants' stored files (card images), as the tenant API keeps them.
        self.storage = storage if storage is not None else LocalStorage(platform.settings.data_dir / "storage")
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    # -- asking -----------------------------------------------------------------------------------

    async def request(
        self, tenant: TenantContext, kind: ExportKind, subject: int | None, requested_by: str
    ) -> ExportCreated:
        """A new pending export and its one-time link (``ExportInProgress`` while one of the same kind runs)."""
        token = secrets.token_urlsafe(32)
        try:
            async with self._p.control.connection() as conn:
                record = await repo.insert(
                    conn,
                    export_id=uuid.uuid4(),
                    tenant_id=tenant.id,
                    tenant_slug=tenant.slug,
                    kind=kind,
                    subject=subject,
                    requested_by=requested_by,
                    token_hash=token_hash(token),
                )
        except pg_errors.UniqueViolation:
            raise ExportInProgress(
                "an export of this kind is already pending or running for this tenant; wait for it"
            ) from None
        settings = self._p.settings
        api = f"/t/{tenant.slug}/api" if settings.multi_tenant else "/api"  # single-tenant mode: /api only
        url = f"{settings.http.base_url}{api}/exports/{record.id}/download?token={token}"
        return ExportCreated(**msgspec.structs.asdict(record.public()), download_token=token, download_url=url)

    async def get(self, tenant_id: uuid.UUID, export_id: uuid.UUID) -> ExportRecord:
        async with self._p.control.connection() as conn:
            record = await repo.get(conn, export_id, tenant_id)
        if record is None:
            raise NotFound(f"no export {export_id}", resource="export", id=str(export_id))
        return record

    async def list_exports(
        self, tenant_id: uuid.UUID, *, requested_by: str | None = None, limit: int
    ) -> list[ExportRecord]:
        async with self._p.control.connection() as conn:
            return await repo.list_for_tenant(conn, tenant_id, requested_by=requested_by, limit=limit)

    # -- making -----------------------------------------------------------------------------------

    def kick(self, export_id: uuid.UUID) -> None:
        """Make the export in the background of this process (the leader's job would take it otherwise)."""
        if self._stopping:
            return
        task = asyncio.get_running_loop().create_task(self._bounded(export_id), name=f"export-{export_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _bounded(self, export_id: uuid.UUID) -> None:
        async with self._slots:
            try:
                await self.process(export_id)
            except Exception:
                log.error("export %s: could not be processed here; the leader job retries", export_id, exc_info=True)

    async def idle(self) -> None:
        """Wait for the background exports of this process (tests, the CLI)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        """Stop: running exports are given back (pending) for another process to make."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def process(self, export_id: uuid.UUID | None = None) -> ExportRecord | None:
        """Claim one export that is due (or exactly ``export_id``) and make it; the claimed row as it ended,
        None if there was nothing to claim."""
        async with self._p.control.connection() as conn:
            record = await repo.claim(conn, lease_seconds=LEASE_SECONDS, export_id=export_id)
        if record is None:
            return None
        await self._make(record)
        async with self._p.control.connection() as conn:
            return await repo.get(conn, record.id)

    async def _make(self, record: ExportRecord) -> None:
        attempt = record.attempts
        keeper = asyncio.get_running_loop().create_task(self._keep_lease(record.id, attempt))
        key: str | None = None
        try:
            async with self._p.control.connection() as conn:
                tenant = await registry.get_by_id(conn, record.tenant_id)
                dsn = await self._p.fleet.dsn(conn, tenant.server_id) if tenant is not None else None
            if tenant is None or dsn is None:
                await self._failed(record, "the tenant no longer exists", final=True)
                return
            data_key = new_data_key()
            key = object_key(record)
            spec = ArchiveSpec(
                export_id=record.id,
                kind=record.kind,
                tenant_id=record.tenant_id,
                tenant_slug=tenant.slug,
                subject=record.subject,
                created_at=datetime.now(UTC),
            )
            settings = self._p.settings.database
            async with db.connect(dsn, settings, dbname=tenant.database_name, role=EXPORT_ROLE) as tdb:
                await tdb.set_isolation_level(IsolationLevel.REPEATABLE_READ)
                await tdb.set_read_only(True)
                async with tdb.transaction():
                    archive = _Measured(write_archive(tdb, self.storage, spec))
                    await self._p.objects.put(key, seal(archive, data_key))
            async with self._p.control.connection() as conn:
                ready = await repo.mark_ready(
                    conn,
                    record.id,
                    attempt,
                    object_key=key,
                    data_key_encrypted=wrap_key(self._p.box, data_key),
                    size=archive.size,
                    sha256=archive.digest.hexdigest(),
                    ttl_seconds=self._p.settings.privacy.export_ttl,
                )
            stored, key = key, None  # the row owns the archive now (or nobody does)
            if not ready:  # withdrawn (a user erasure) or claimed again meanwhile: this archive is nobody's
                await self._p.objects.delete(stored)
            else:
                log.info("export %s of tenant %s ready (%d bytes)", record.id, record.tenant_slug, archive.size)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(record, attempt, key))
            raise
        except Exception as exc:
            log.warning("export %s attempt %d failed: %s", record.id, attempt, exc, exc_info=True)
            if key is not None:
                with contextlib.suppress(Exception):
                    await self._p.objects.delete(key)
            await self._failed(record, f"{type(exc).__name__}: {exc}", final=attempt >= MAX_ATTEMPTS)
        finally:
            keeper.cancel()

    async def _failed(self, record: ExportRecord, error: str, *, final: bool) -> None:
        async with self._p.control.connection() as conn:
            await repo.mark_attempt_failed(
                conn, record.id, record.attempts, error, final=final, retry_after=60.0 * record.attempts
            )

    async def _release(self, record: ExportRecord, attempt: int, key: str | None) -> None:
        with contextlib.suppress(Exception):
            if key is not None:
                await self._p.objects.delete(key)
            async with self._p.control.connection() as conn:
                await repo.release(conn, record.id, attempt)

    async def _keep_lease(self, export_id: uuid.UUID, attempt: int) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                async with self._p.control.connection() as conn:
                    if not await repo.renew(conn, export_id, attempt, LEASE_SECONDS):
                        return
            except Exception:
                log.warning("export %s: could not renew the lease", export_id, exc_info=True)

    # -- downloading ------------------------------------------------------------------------------

    def may_read(self, record: ExportRecord, principal: Principal) -> bool:
        """Who may see an export: whoever asked for it, and whoever may make one like it."""
        needed = TENANT_EXPORT_PERMISSIONS if record.kind is ExportKind.TENANT else USER_EXPORT_PERMISSIONS
        return record.requested_by == principal.subject or all(principal.can(p) for p in needed)

    async def open_download(
        self, tenant_id: uuid.UUID, export_id: uuid.UUID, token: str, principal: Principal
    ) -> Download:
        """Check the link and begin its one download (see the module doc)."""
        async with self._p.control.connection() as conn:
            record = await repo.get(conn, export_id, tenant_id)
            if (
                record is None
                or not hmac.compare_digest(record.token_hash, token_hash(token))
                or not self.may_read(record, principal)
            ):
                raise NotFound("no export with this id and token", resource="export", id=str(export_id))
            self._check_downloadable(record)
            if not await repo.start_download(conn, record.id, DOWNLOAD_LEASE_SECONDS):
                current = await repo.get(conn, record.id)
                assert current is not None
                self._check_downloadable(current)
                raise DownloadInProgress("this export is being downloaded right now")
        assert record.object_key is not None and record.data_key_encrypted is not None
        if await self._p.objects.stat(record.object_key) is None:
            async with self._p.control.connection() as conn:
                await repo.fail_ready(conn, record.id, "the archive is missing from the store")
            raise ExportGone("the archive of this export is missing from the store; ask for a new export")
        data_key = unwrap_key(self._p.box, record.data_key_encrypted)
        stamp = record.created_at.strftime("%Y%m%d-%H%M%S")
        who = "" if record.subject is None else f"-user-{record.subject}"
        filename = f"cardvault-{record.tenant_slug}{who}-export-{stamp}.zip"
        return Download(record=record, chunks=self._stream(record, data_key), filename=filename)

    @staticmethod
    def _check_downloadable(record: ExportRecord) -> None:
        now = datetime.now(UTC)
        if record.status is ExportStatus.DOWNLOADED:
            raise ExportGone("this link was used already (each works once); ask for a new export")
        if record.status is ExportStatus.EXPIRED or (
            record.status is ExportStatus.READY and record.expires_at is not None and record.expires_at <= now
        ):
            raise ExportGone("this link has expired; ask for a new export")
        if record.status in (ExportStatus.PENDING, ExportStatus.RUNNING):
            raise ExportNotReady("the export is still being made; try again shortly")
        if record.status is ExportStatus.FAILED:
            raise ExportFailed(f"the export failed: {record.error}")

    async def _stream(self, record: ExportRecord, data_key: bytes) -> AsyncIterator[bytes]:
        assert record.object_key is not None
        completed = False
        try:
            async for chunk in unseal(self._p.objects.get(record.object_key), data_key):
                yield chunk
            completed = True
        except SealBroken as exc:
            log.error("export %s: the stored archive is damaged: %s", record.id, exc)
            async with self._p.control.connection() as conn:
                await repo.fail_ready(conn, record.id, f"the stored archive is damaged: {exc}")
            raise
        finally:
            await asyncio.shield(self._end_download(record, completed))

    async def _end_download(self, record: ExportRecord, completed: bool) -> None:
        try:
            async with self._p.control.connection() as conn:
                ended = await repo.end_download(conn, record.id, completed=completed)
            if completed and ended:
                await self.delete_ended_archives()
        except Exception:
            log.error("export %s: could not record the end of its download", record.id, exc_info=True)

    # -- upkeep (the leader's job) ----------------------------------------------------------------

    async def delete_ended_archives(self) -> int:
        """Delete the stored archives of exports that ended (downloaded, expired, failed, withdrawn)."""
        deleted = 0
        async with self._p.control.connection() as conn:
            for export_id, key in await repo.objects_to_delete(conn, PER_RUN * 10):
                await self._p.objects.delete(key)
                await repo.mark_object_deleted(conn, export_id)
                deleted += 1
        return deleted

    async def upkeep(self) -> str:
        made = 0
        for _ in range(PER_RUN):
            if await self.process() is None:
                break
            made += 1
        async with self._p.control.connection() as conn:
            ended = await repo.expire_due(conn) + await repo.expire_orphans(conn)
        deleted = await self.delete_ended_archives()
        return f"{made} export(s) made, {ended} ended, {deleted} archive(s) deleted"

    async def end_orphans(self) -> int:
        """End the exports of purged tenants and delete their archives; how many exports ended."""
        async with self._p.control.connection() as conn:
            ended = await repo.expire_orphans(conn)
        await self.delete_ended_archives()
        return ended
