"""``LocalStorage``: tenants' objects as files under ``<root>/<tenant id>/<key>``.

Writes go to a temporary file in the same directory, are flushed to disk, then renamed over the
target, so a crash never leaves a half-written object under a real key. Every path is checked to
resolve to a file directly inside the tenant's own directory (no traversal, no symlink escapes).
Blocking file I/O runs in worker threads (``asyncio.to_thread``) so the event loop never waits on a disk.

Quarantined objects live under ``<root>/.quarantine/<tenant id>/<key>``: outside every tenant's served
directory (``.quarantine`` is no tenant id), on the same file system, so moving an object in or out is
one atomic rename.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import uuid
from pathlib import Path

from controlplane.storage import KEY_PATTERN, InvalidStorageKey, StoredObject, validate_key

_TMP_PREFIX = ".tmp-"
#: Directory under the root holding every tenant's quarantine (a name no tenant id can have).
QUARANTINE_DIR = ".quarantine"


class LocalStorage:
    """A ``Storage`` on the local file system (``CARDVAULT_DATA_DIR/storage`` in the service)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def tenant_dir(self, tenant_id: uuid.UUID) -> Path:
        """The directory holding the tenant's objects (it may not exist yet)."""
        if not isinstance(tenant_id, uuid.UUID):
            raise InvalidStorageKey(f"tenant id must be a UUID, got {tenant_id!r}")
        return self.root / str(tenant_id)

    def quarantine_dir(self, tenant_id: uuid.UUID) -> Path:
        """The directory holding the tenant's quarantined objects (it may not exist yet)."""
        if not isinstance(tenant_id, uuid.UUID):
            raise InvalidStorageKey(f"tenant id must be a UUID, got {tenant_id!r}")
        return self.root / QUARANTINE_DIR / str(tenant_id)

    def _path(self, tenant_id: uuid.UUID, key: str, *, quarantined: bool = False) -> Path:
        validate_key(tenant_id, key)
        directory = self.quarantine_dir(tenant_id) if quarantined else self.tenant_dir(tenant_id)
        path = directory / key
        # Defence in depth: the key pattern already rules out separators and dot-names, but a
        # symlink planted in the tree must not lead a read or a delete elsewhere either.
        resolved = directory.resolve()
        if path.resolve().parent != resolved or not resolved.is_relative_to(self.root.resolve()):
            raise InvalidStorageKey(f"storage key {key!r} escapes the tenant directory")
        return path

    async def put(self, tenant_id: uuid.UUID, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, tenant_id, key, bytes(data))

    async def get(self, tenant_id: uuid.UUID, key: str) -> bytes | None:
        return await asyncio.to_thread(self._get, tenant_id, key)

    async def delete(self, tenant_id: uuid.UUID, key: str) -> bool:
        return await asyncio.to_thread(self._delete, tenant_id, key)

    async def usage(self, tenant_id: uuid.UUID) -> int:
        return await asyncio.to_thread(self._usage, tenant_id)

    async def delete_all(self, tenant_id: uuid.UUID) -> int:
        return await asyncio.to_thread(self._delete_all, tenant_id)

    async def keys(self, tenant_id: uuid.UUID) -> list[StoredObject]:
        return await asyncio.to_thread(self._keys, tenant_id)

    async def stat(self, tenant_id: uuid.UUID, key: str) -> StoredObject | None:
        return await asyncio.to_thread(self._stat, tenant_id, key)

    async def areas(self) -> list[uuid.UUID]:
        return await asyncio.to_thread(self._areas)

    async def remove_area(self, tenant_id: uuid.UUID) -> bool:
        return await asyncio.to_thread(self._remove_area, tenant_id)

    async def quarantine(self, tenant_id: uuid.UUID, key: str) -> int | None:
        return await asyncio.to_thread(self._quarantine, tenant_id, key)

    async def restore(self, tenant_id: uuid.UUID, key: str) -> bool:
        return await asyncio.to_thread(self._restore, tenant_id, key)

    async def delete_quarantined(self, tenant_id: uuid.UUID, key: str) -> int | None:
        return await asyncio.to_thread(self._delete_quarantined, tenant_id, key)

    # -- blocking halves, run in worker threads -------------------------------------------------

    def _put(self, tenant_id: uuid.UUID, key: str, data: bytes) -> None:
        self.tenant_dir(tenant_id).mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(tenant_id, key)
        tmp = path.with_name(f"{_TMP_PREFIX}{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def _get(self, tenant_id: uuid.UUID, key: str) -> bytes | None:
        try:
            return self._path(tenant_id, key).read_bytes()
        except FileNotFoundError:
            return None

    def _delete(self, tenant_id: uuid.UUID, key: str) -> bool:
        try:
            self._path(tenant_id, key).unlink()
        except FileNotFoundError:
            return False
        return True

    def _usage(self, tenant_id: uuid.UUID) -> int:
        directory = self.tenant_dir(tenant_id)
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(directory):
                if entry.name.startswith(_TMP_PREFIX) or not entry.is_file(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError):  # deleted while we were counting
                    total += entry.stat(follow_symlinks=False).st_size
        return total

    def _delete_all(self, tenant_id: uuid.UUID) -> int:
        _remove_tree(self.quarantine_dir(tenant_id))  # a purge leaves no byte of the tenant, quarantined or not
        return _remove_tree(self.tenant_dir(tenant_id))

    def _keys(self, tenant_id: uuid.UUID) -> list[StoredObject]:
        directory = self.tenant_dir(tenant_id)
        if directory.is_symlink():  # planted: nothing in it is the tenant's
            return []
        found = []
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(directory):
                if not KEY_PATTERN.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                    continue  # temporary files (".tmp-..."), links and anything else nothing can name
                with contextlib.suppress(FileNotFoundError):  # deleted while we were listing
                    info = entry.stat(follow_symlinks=False)
                    found.append(StoredObject(entry.name, info.st_size, info.st_mtime))
        return found

    def _stat(self, tenant_id: uuid.UUID, key: str) -> StoredObject | None:
        try:
            info = self._path(tenant_id, key).stat(follow_symlinks=False)
        except FileNotFoundError:
            return None
        return StoredObject(key, info.st_size, info.st_mtime)

    def _areas(self) -> list[uuid.UUID]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                try:
                    tenant_id = uuid.UUID(entry.name)
                except ValueError:
                    continue  # the quarantine, or something that is no tenant's
                if str(tenant_id) == entry.name:
                    found.append(tenant_id)
        return found

    def _remove_area(self, tenant_id: uuid.UUID) -> bool:
        directory = self.tenant_dir(tenant_id)
        if directory.is_symlink():  # planted: remove the link, never what it points at
            directory.unlink()
            return True
        if self._keys(tenant_id):
            return False
        _remove_tree(directory)
        return True

    def _quarantine(self, tenant_id: uuid.UUID, key: str) -> int | None:
        source = self._path(tenant_id, key)
        target = self._path(tenant_id, key, quarantined=True)  # checked before anything is made
        if not source.exists():
            return None
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            size = source.stat(follow_symlinks=False).st_size
            os.replace(source, target)
        except FileNotFoundError:
            return None
        return size

    def _restore(self, tenant_id: uuid.UUID, key: str) -> bool:
        source = self._path(tenant_id, key, quarantined=True)
        target = self._path(tenant_id, key)
        if not source.exists():
            return target.exists()
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if target.exists():  # served already (keys are never reused, so it is the same object)
            with contextlib.suppress(FileNotFoundError):
                source.unlink()
            return True
        try:
            os.replace(source, target)
        except FileNotFoundError:  # deleted meanwhile
            return False
        return True

    def _delete_quarantined(self, tenant_id: uuid.UUID, key: str) -> int | None:
        path = self._path(tenant_id, key, quarantined=True)
        try:
            size = path.stat(follow_symlinks=False).st_size
            path.unlink()
        except FileNotFoundError:
            return None
        return size


def _remove_tree(directory: Path) -> int:
    """Remove ``directory`` and everything in it, never following a link; the objects removed (files
    that are not temporary ones). Gone already: 0."""
    if directory.is_symlink():  # planted: remove the link, never what it points at
        directory.unlink()
        return 0
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile (a retry, a discard)
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)  # nothing makes one; removed all the same
                else:
                    os.unlink(entry.path)
                    removed += not entry.name.startswith(_TMP_PREFIX)
        directory.rmdir()
    return removed
