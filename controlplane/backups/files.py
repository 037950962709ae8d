"""A backup's second object: the tenant's stored files (card images) that its dump's ``files`` rows name.

- **Which files.** ``snapshot_files`` reads ``key, sha256, bytes`` of every ``files`` row inside the dump's
  own snapshot (``dump.Dumper``), so the files object holds exactly what the archive refers to.
- **Stored after the dump** (``store_files``): each object is read from the tenant's ``Storage`` and checked
  against its row; one that is not there is listed in the manifest as ``missing``, one whose size or sha256
  differs from its row (or that cannot be read) as ``damaged``: neither fails the backup. The stream is
  sealed with the backup's data key (``seal`` draws a fresh nonce prefix per stream) into
  ``files_object_key``; its size and sha256 go to ``manifest["files"]`` (``FilesManifest``). A dump that names
  no file gets no object (``key`` None): most tenants have no image, and an empty object per backup would
  only cost a write, a read and a delete.
- **Format** (the plaintext): ``MAGIC``, then per file a 4-byte big-endian header length, the header (JSON
  ``{"key", "sha256", "bytes"}``) and the file's bytes; a zero header length ends it. ``read_files`` checks
  every file's size and sha256 against its header and refuses anything after the end or a stream cut short.
- **Checked before a restore** (``check_files``): read whole, size and sha256 equal to the manifest's, every
  frame authentic, the framing whole, as many files as recorded; anything else is ``BackupCorrupted``.
- **Put back** (``put_back``, a restore's step ``files``, after the database is restored and before the
  switch): every file the restored database's ``files`` rows name and the tenant's storage lacks is written
  back, once its size and sha256 equal its row's. Keys are content-addressed and never reused, so an object
  already stored under a key is that file. Objects the restored database does not name are left to storage
  hygiene (it quarantines orphans after a grace period).
"""

from __future__ import annotations

import hashlib
import logging
import re
import struct
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Sequence

import msgspec

from controlplane.backups.models import Backup, FilesManifest
from controlplane.backups.restore_models import BackupCorrupted, BackupUnusable, RestoreCheckFailed
from controlplane.db import AsyncConn
from controlplane.objectstore import ObjectNotFound, ObjectStore
from controlplane.objectstore.sealed import SealBroken, seal, unseal
from controlplane.storage import KEY_PATTERN, InvalidStorageKey, Storage

log = logging.getLogger(__name__)

MAGIC = b"CVFILES1\n"
_HEAD = struct.Struct(">I")
#: Longest header accepted (a key, a digest and a size take about 200 bytes).
MAX_HEADER = 4096
#: Keys listed at most per kind (``missing``, ``damaged``) in a manifest; the counts are always whole.
MAX_LISTED_KEYS = 1000
_SHA256 = re.compile(r"[0-9a-f]{64}")


class FileEntry(msgspec.Struct, frozen=True):
    """A stored file as a ``files`` row names it."""

    key: str
    sha256: str
    bytes: int


class FilesCorrupted(ValueError):
    """The files object's plaintext is not a whole, well-formed stream of files."""


# -- backing up -------------------------------------------------------------------------------------------


async def snapshot_files(conn: AsyncConn) -> list[FileEntry]:
    """Every ``files`` row (key order) in the caller's transaction; none when the table does not exist."""
    cur = await conn.execute("SELECT to_regclass('public.files') IS NOT NULL AS present")
    row = await cur.fetchone()
    if not row or not row["present"]:
        return []
    cur = await conn.execute("SELECT key, sha256, bytes FROM public.files ORDER BY key")
    return [FileEntry(str(r["key"]), str(r["sha256"]), int(r["bytes"])) for r in await cur.fetchall()]


class _Outcome:
    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.missing: list[str] = []
        self.damaged: list[str] = []


async def store_files(
    storage: Storage,
    objects: ObjectStore,
    tenant_id: uuid.UUID,
    key: str,
    data_key: bytes,
    entries: Sequence[FileEntry],
) -> FilesManifest:
    """Store the tenant's files that ``entries`` name, sealed with ``data_key``, under ``key``."""
    if not entries:
        return FilesManifest(key=None, size=0, sha256=None, count=0, bytes=0)
    outcome = _Outcome()
    stored = await objects.put(key, seal(_stream(storage, tenant_id, entries, outcome), data_key))
    log.info("backup files of %s: %d file(s), %d bytes stored in %s", tenant_id, outcome.count, stored.size, key)
    if outcome.missing or outcome.damaged:
        log.warning(
            "backup files of %s: %d missing, %d damaged (not kept)",
            tenant_id,
            len(outcome.missing),
            len(outcome.damaged),
        )
    return FilesManifest(
        key=key,
        size=stored.size,
        sha256=stored.sha256,
        count=outcome.count,
        bytes=outcome.bytes,
        missing=outcome.missing[:MAX_LISTED_KEYS],
        missing_count=len(outcome.missing),
        damaged=outcome.damaged[:MAX_LISTED_KEYS],
        damaged_count=len(outcome.damaged),
    )


async def _stream(
    storage: Storage, tenant_id: uuid.UUID, entries: Sequence[FileEntry], outcome: _Outcome
) -> AsyncIterator[bytes]:
    yield MAGIC
    for entry in entries:
        try:
            data = await storage.get(tenant_id, entry.key)
        except (InvalidStorageKey, OSError) as exc:
            log.warning("backup files of %s: %s cannot be read: %s", tenant_id, entry.key, exc)
            outcome.damaged.append(entry.key)
            continue
        if data is None:
            outcome.missing.append(entry.key)
            continue
        if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
            outcome.damaged.append(entry.key)
            continue
        header = msgspec.json.encode(entry)
        yield _HEAD.pack(len(header)) + header
        yield data
        outcome.count += 1
        outcome.bytes += len(data)
    yield _HEAD.pack(0)


# -- reading back -----------------------------------------------------------------------------------------


async def read_files(plaintext: AsyncIterable[bytes]) -> AsyncIterator[tuple[FileEntry, bytes]]:
    """The files of an (unsealed) files stream, each checked against its header; ``FilesCorrupted`` if the
    stream is not whole and well-formed."""
    chunks = aiter(plaintext)
    buffer = bytearray()

    async def fill(size: int) -> bool:
        while len(buffer) < size:
            try:
                buffer.extend(await anext(chunks))
            except StopAsyncIteration:
                return False
        return True

    def take(size: int) -> bytes:
        out = bytes(buffer[:size])
        del buffer[:size]
        return out

    if not await fill(len(MAGIC)) or take(len(MAGIC)) != MAGIC:
        raise FilesCorrupted("not a files object (bad header)")
    while True:
        if not await fill(_HEAD.size):
            raise FilesCorrupted("truncated: the end marker is missing")
        (length,) = _HEAD.unpack(take(_HEAD.size))
        if length == 0:
            break
        if length > MAX_HEADER or not await fill(length):
            raise FilesCorrupted("a file header is too long or cut short")
        entry = _entry(take(length))
        if not await fill(entry.bytes):
            raise FilesCorrupted(f"truncated: {entry.key} is cut short")
        data = take(entry.bytes)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise FilesCorrupted(f"{entry.key} does not match its checksum")
        yield entry, data
    if buffer or await fill(1):
        raise FilesCorrupted("data after the end marker")


def _entry(raw: bytes) -> FileEntry:
    try:
        entry = msgspec.json.decode(raw, type=FileEntry)
    except msgspec.DecodeError as exc:
        raise FilesCorrupted(f"a file header is unreadable: {exc}") from None
    if not KEY_PATTERN.fullmatch(entry.key) or not _SHA256.fullmatch(entry.sha256) or entry.bytes < 0:
        raise FilesCorrupted(f"a file header is not valid: {entry.key!r}")
    return entry


def files_manifest(backup: Backup) -> FilesManifest | None:
    """The backup's files object as its manifest records it; None for a backup made before files were kept."""
    raw = backup.manifest.get("files")
    if raw is None:
        return None
    try:
        return msgspec.convert(raw, FilesManifest)
    except msgspec.ValidationError as exc:
        raise BackupUnusable(
            f"backup {backup.id} has no usable files manifest: {exc}", backup_id=str(backup.id)
        ) from None


async def check_files(objects: ObjectStore, backup: Backup, data_key: bytes) -> list[FileEntry] | None:
    """The files the backup's files object holds, once it proved whole and authentic (read whole: size and
    sha256 as recorded, every frame authentic, the framing whole, the count as recorded); None for a backup
    without one. Anything wrong is ``BackupCorrupted``."""
    manifest = files_manifest(backup)
    if manifest is None:
        return None
    if manifest.key is None:  # the dump named no file: nothing was stored
        if manifest.count:
            raise BackupCorrupted(f"backup {backup.id}: its files object is not recorded", backup_id=str(backup.id))
        return []
    digest = hashlib.sha256()
    size = 0
    stream = objects.get(manifest.key)

    async def counted() -> AsyncIterator[bytes]:
        nonlocal size
        async for chunk in stream:
            digest.update(chunk)
            size += len(chunk)
            yield chunk

    entries: list[FileEntry] = []
    broken: str | None = None
    try:
        async for entry, _ in read_files(unseal(counted(), data_key)):
            entries.append(entry)
    except ObjectNotFound:
        raise BackupCorrupted(
            f"backup {backup.id}: its files object is missing from the store", backup_id=str(backup.id)
        ) from None
    except (SealBroken, FilesCorrupted) as exc:
        broken = str(exc)
        async for chunk in stream:  # the rest, so that the checksum is of the whole object
            digest.update(chunk)
            size += len(chunk)
    if size != manifest.size or digest.hexdigest() != manifest.sha256:
        raise BackupCorrupted(
            f"backup {backup.id}: the files object has {size} bytes and another checksum than were stored",
            backup_id=str(backup.id),
        )
    if broken is not None:
        raise BackupCorrupted(f"backup {backup.id}: files object: {broken}", backup_id=str(backup.id))
    if len(entries) != manifest.count:
        raise BackupCorrupted(
            f"backup {backup.id}: the files object holds {len(entries)} file(s), {manifest.count} were stored",
            backup_id=str(backup.id),
        )
    return entries


# -- restoring --------------------------------------------------------------------------------------------


async def referenced(conn: AsyncConn) -> dict[str, FileEntry]:
    """The ``files`` rows of a (restored) tenant database, by key."""
    return {e.key: e for e in await snapshot_files(conn)}


async def check_rows(conn: AsyncConn, backup: Backup, entries: Sequence[FileEntry]) -> None:
    """``RestoreCheckFailed`` unless every file of the backup has its ``files`` row in the (restored) database
    ``conn`` reaches, and every row is a file kept, missing or damaged at backup time (a verification)."""
    manifest = files_manifest(backup)
    assert manifest is not None
    rows = await referenced(conn)
    problems = [f"{e.key}: no such row, or another size or checksum" for e in entries if rows.get(e.key) != e]
    recorded = manifest.count + manifest.missing_count + manifest.damaged_count
    if len(rows) != recorded:
        problems.append(f"{len(rows)} files row(s) restored, the backup recorded {recorded}")
    if problems:
        raise RestoreCheckFailed(
            f"the files of backup {backup.id} do not match its database: " + "; ".join(problems[:10]),
            backup_id=str(backup.id),
        )


async def put_back(
    objects: ObjectStore,
    storage: Storage,
    tenant_id: uuid.UUID,
    backup: Backup,
    data_key: bytes,
    rows: dict[str, FileEntry],
) -> int:
    """Write back every file of the backup that ``rows`` (the restored database's) name and the tenant's
    storage lacks; the number written. A file whose size or sha256 is not its row's is ``RestoreCheckFailed``
    (files written before it are left to storage hygiene: nothing names them until the switch)."""
    manifest = files_manifest(backup)
    if manifest is None or manifest.key is None:
        return 0
    written = 0
    try:
        async for entry, data in read_files(unseal(objects.get(manifest.key), data_key)):
            row = rows.get(entry.key)
            if row is None or await storage.stat(tenant_id, entry.key) is not None:
                continue  # not named any more (an upgrade), or stored already: the same bytes
            if len(data) != row.bytes or hashlib.sha256(data).hexdigest() != row.sha256:
                raise RestoreCheckFailed(
                    f"backup {backup.id}: the stored file {entry.key} does not match its files row",
                    backup_id=str(backup.id),
                )
            await storage.put(tenant_id, entry.key, data)
            written += 1
    except (ObjectNotFound, SealBroken, FilesCorrupted) as exc:
        raise BackupCorrupted(f"backup {backup.id}: files object: {exc}", backup_id=str(backup.id)) from None
    log.info("backup %s: %d stored file(s) put back for %s", backup.id, written, tenant_id)
    return written
