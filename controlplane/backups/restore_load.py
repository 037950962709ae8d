"""Loading a backup into a new database, the part restores and verifications share.

1. ``check_object``: before anything is created, the stored object is read whole: its size and sha256
   must be the row's, and every frame must open (``unseal``: authenticated, in order, complete). A flipped
   byte, a truncated object, a missing one or a data key that does not unwrap is ``BackupCorrupted``.
2. ``pg_restore``: the object is read again, unsealed as it streams and piped into ``pg_restore`` of the
   server's major version (``--no-owner --no-privileges --single-transaction --exit-on-error``): the
   objects belong to the server's user, as in a template clone, and the privileges are the ones
   provisioning gives (``catalog.grant_schema_privileges``), applied afterwards. A frame that fails to
   open kills ``pg_restore`` (so nothing unauthenticated is committed); a non-zero exit is
   ``RestoreCheckFailed`` with the end of its stderr.
3. ``check_manifest``: the restored database holds exactly the manifest's tables with the manifest's row
   counts, at the manifest's schema revision; anything else is ``RestoreCheckFailed``.

Binaries and the password handling are ``dump``'s: ``pg_restore`` comes from the same directory lookup as
``pg_dump``, gets a conninfo without the password on its command line, and the password in a passfile.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from psycopg import conninfo

from controlplane import db
from controlplane.backups import dump
from controlplane.backups.models import Backup, Manifest
from controlplane.backups.restore_catalog import schema_revision
from controlplane.backups.restore_models import BackupCorrupted, BackupUnusable, RestoreCheckFailed
from controlplane.crypto import SecretBox
from controlplane.db import AsyncConn
from controlplane.objectstore import ObjectNotFound, ObjectStore
from controlplane.objectstore.sealed import SealBroken, unseal, unwrap_key
from controlplane.settings import DatabaseSettings

#: Bytes of pg_restore's stderr kept for the error message.
STDERR_TAIL = 8 * 1024


def manifest_of(backup: Backup) -> Manifest:
    try:
        return msgspec.convert(backup.manifest, Manifest)
    except msgspec.ValidationError as exc:
        raise BackupUnusable(f"backup {backup.id} has no usable manifest: {exc}", backup_id=str(backup.id)) from None


async def check_object(objects: ObjectStore, box: SecretBox, backup: Backup, wrapped_key: str | None) -> bytes:
    """The backup's data key, once the stored object proved whole and authentic (see the module docstring)."""
    if backup.sha256 is None or backup.bytes is None or wrapped_key is None:
        raise BackupUnusable(f"backup {backup.id} has no stored object", backup_id=str(backup.id))
    try:
        key = unwrap_key(box, wrapped_key)
    except SealBroken as exc:
        raise BackupCorrupted(f"backup {backup.id}: {exc}", backup_id=str(backup.id)) from None
    digest = hashlib.sha256()
    size = 0
    stream = objects.get(backup.object_key)

    async def counted() -> AsyncIterator[bytes]:
        nonlocal size
        async for chunk in stream:
            digest.update(chunk)
            size += len(chunk)
            yield chunk

    broken: str | None = None
    try:
        async for _ in unseal(counted(), key):
            pass
    except ObjectNotFound:
        raise BackupCorrupted(f"backup {backup.id}: its object is missing from the store") from None
    except SealBroken as exc:
        broken = str(exc)
        async for chunk in stream:  # the rest, so that the checksum is of the whole object
            digest.update(chunk)
            size += len(chunk)
    if size != backup.bytes:
        raise BackupCorrupted(
            f"backup {backup.id}: the stored object has {size} bytes, {backup.bytes} were stored (truncated?)",
            backup_id=str(backup.id),
        )
    if digest.hexdigest() != backup.sha256:
        raise BackupCorrupted(
            f"backup {backup.id}: checksum mismatch (the stored object changed since it was written)",
            backup_id=str(backup.id),
        )
    if broken is not None:
        raise BackupCorrupted(f"backup {backup.id}: {broken}", backup_id=str(backup.id))
    return key


class Loader:
    """Runs ``pg_restore`` of sealed backups into databases (one per service; safe for concurrent use)."""

    def __init__(self, settings: DatabaseSettings, objects: ObjectStore) -> None:
        self._db = settings
        self._objects = objects
        self._bindirs: dict[int, Path] = {}

    async def bindir(self, major: int) -> Path:
        """The directory of ``pg_restore`` for a server of PostgreSQL ``major`` (``dump``'s lookup)."""
        if major not in self._bindirs:
            self._bindirs[major] = await asyncio.to_thread(dump.find_client_bindir, major, "pg_restore")
        return self._bindirs[major]

    async def pg_restore(self, dsn: str, database: str, backup: Backup, key: bytes, server_version: int) -> None:
        """Stream the backup (unsealed) into ``pg_restore`` of ``database`` on the server ``dsn`` reaches."""
        major = server_version // 10000
        made_by = manifest_of(backup).server_version // 10000
        if made_by > major:
            raise RestoreCheckFailed(
                f"backup {backup.id} was made on PostgreSQL {made_by}; this server runs {major}",
                backup_id=str(backup.id),
            )
        tool = await self.bindir(major) / "pg_restore"
        target, password = dump.client_conninfo(dsn, database, connect_timeout=self._db.connect_timeout)
        with dump.passfile(password) as passfile:
            proc = await asyncio.create_subprocess_exec(
                str(tool),
                "--no-owner",
                "--no-privileges",
                "--single-transaction",
                "--exit-on-error",
                "--no-password",
                f"--dbname={target}",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=dump.client_env(passfile),
            )
            assert proc.stdin is not None and proc.stderr is not None
            stderr = asyncio.create_task(_tail(proc.stderr))
            try:
                await self._feed(proc.stdin, backup, key)
                code = await proc.wait()
            finally:
                if proc.returncode is None:  # a broken seal, a store error, a cancellation: nothing committed
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
                message = (await stderr).decode(errors="replace").strip()
        if code != 0:
            raise RestoreCheckFailed(
                f"pg_restore of backup {backup.id} exited with status {code}: {message or 'no message'}",
                backup_id=str(backup.id),
            )

    async def _feed(self, stdin: asyncio.StreamWriter, backup: Backup, key: bytes) -> None:
        try:
            async for chunk in unseal(self._objects.get(backup.object_key), key):
                stdin.write(chunk)
                await stdin.drain()
            stdin.close()
            await stdin.wait_closed()
        except (BrokenPipeError, ConnectionResetError):
            pass  # pg_restore stopped reading: its exit status and stderr say why
        except (SealBroken, ObjectNotFound) as exc:
            raise BackupCorrupted(f"backup {backup.id}: {exc}", backup_id=str(backup.id)) from None

    async def check_manifest(self, conn: AsyncConn, backup: Backup, version_table: str) -> str | None:
        """The restored database's schema revision, once it matches the manifest (tables, rows, revision)."""
        manifest = manifest_of(backup)
        await conn.execute(f"SET statement_timeout = {int(self._db.migration_statement_timeout * 1000)}")
        counts = await dump.count_rows(conn)
        problems = []
        for table in sorted(set(counts) | set(manifest.tables)):
            found, expected = counts.get(table), manifest.tables.get(table)
            if found != expected:
                problems.append(f"{table}: {_rows(found)} restored, {_rows(expected)} in the manifest")
        revision = await schema_revision(conn, version_table)
        if revision != manifest.schema_revision:
            problems.append(f"schema revision {revision}, the manifest says {manifest.schema_revision}")
        if problems:
            raise RestoreCheckFailed(
                f"the restore of backup {backup.id} does not match its manifest: " + "; ".join(problems[:10]),
                backup_id=str(backup.id),
            )
        return revision


def _rows(count: int | None) -> str:
    return "no table" if count is None else f"{count} row(s)"


async def _tail(stream: asyncio.StreamReader) -> bytes:
    kept = b""
    while chunk := await stream.read(64 * 1024):
        kept = (kept + chunk)[-STDERR_TAIL:]
    return kept


def restore_conninfo(dsn: str, settings: DatabaseSettings, database: str) -> str:
    """A management conninfo for ``database`` with the migrations' statement timeout (the upgrade of a
    restored database to the schema head)."""
    info = db.management_conninfo(dsn, settings, dbname=database, role="restore")
    return conninfo.make_conninfo(
        info, options=f"-c statement_timeout={int(settings.migration_statement_timeout * 1000)}"
    )
