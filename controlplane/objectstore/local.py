"""``LocalObjectStore``: objects as files under a directory (``CARDVAULT_BACKUP_DIR``).

A ``put`` streams into a temporary file beside the target, fsyncs it and renames it over the target, so
a crash or a failed stream never leaves a partial object under a real key. Blocking file I/O runs in
worker threads so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import BinaryIO

from controlplane.objectstore import CHUNK_SIZE, ObjectNotFound, StoredObject, validate_key

_TMP_PREFIX = ".tmp-"


class LocalObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.description = f"local:{self.root}"

    def path(self, key: str) -> Path:
        """Where ``key`` lives on disk (the key pattern keeps it inside ``root``)."""
        return self.root / validate_key(key)

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> StoredObject:
        path = self.path(key)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f"{_TMP_PREFIX}{secrets.token_hex(8)}")
        handle: BinaryIO = await asyncio.to_thread(_open_exclusive, tmp)
        digest = hashlib.sha256()
        size = 0
        try:
            async for chunk in chunks:
                if chunk:
                    digest.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(_sync_close, handle)
            await asyncio.to_thread(os.replace, tmp, path)
        except BaseException:
            handle.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return StoredObject(key=key, size=size, sha256=digest.hexdigest())

    async def get(self, key: str) -> AsyncIterator[bytes]:
        path = self.path(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK_SIZE):
                yield chunk
        finally:
            handle.close()

    async def stat(self, key: str) -> int | None:
        try:
            return (await asyncio.to_thread(self.path(key).stat)).st_size
        except FileNotFoundError:
            return None

    async def delete(self, key: str) -> bool:
        try:
            await asyncio.to_thread(self.path(key).unlink)
        except FileNotFoundError:
            return False
        return True

    async def list(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> builtins.list[str]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        keys: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            for directory, _, files in os.walk(base):
                for name in files:
                    if name.startswith(_TMP_PREFIX):
                        continue
                    key = Path(directory, name).relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        keys.append(key)
        return sorted(keys)


def _open_exclusive(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


def _sync_close(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
