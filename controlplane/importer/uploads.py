"""Card images of a legacy installation: finding them in its ``uploads/`` folder and storing them.

``cards.image`` holds a path relative to the uploads folder. A path is followed only to a regular file
inside that folder (after resolving ``..`` and symlinks); the file must be a JPEG, PNG or WebP by its
magic bytes (``cards.images.sniff``, as for uploads through the API) and at most the API's image size
limit. Stored objects get keys from ``storage.new_key`` like images uploaded through the API, one object
per card (two cards showing the same picture own one object each, as through the API).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import uuid
from collections.abc import Iterable
from pathlib import Path

from controlplane.cards.images import ImageFormat, sniff
from controlplane.storage import Storage, new_key

log = logging.getLogger(__name__)

#: Objects written to the storage at once (each write is flushed to disk).
STORE_CONCURRENCY = 8
_SNIFF_BYTES = 16


@dataclasses.dataclass(frozen=True, slots=True)
class ImageSource:
    """An image file found for a card: where, its format and its size when it was looked at."""

    path: Path
    format: ImageFormat
    size: int


@dataclasses.dataclass(frozen=True, slots=True)
class StoredImage:
    """An object written for a card (its ``files`` row to be)."""

    card_id: int
    key: str
    content_type: str
    size: int
    sha256: str


def locate(root: Path | None, raw: str, max_bytes: int) -> tuple[ImageSource | None, str | None, bool]:
    """``(source, problem, missing)`` of a card's image path under ``root`` (the resolved uploads folder).

    ``missing``: the problem is that no file is there (else the file is unusable). Blocking (file system).
    """
    if root is None:
        return None, "no uploads folder was given", True
    relative = raw.strip().replace("\\", "/")
    if "\x00" in relative:
        return None, "the path contains NUL", False
    while relative.startswith(("/", "./")):
        relative = relative[1:] if relative.startswith("/") else relative[2:]
    candidates = [relative]
    if relative.startswith("uploads/"):  # some installations stored the folder's name with the path
        candidates.append(relative.removeprefix("uploads/"))
    for candidate in candidates:
        if not candidate:
            continue
        path = (root / candidate).resolve()
        if not path.is_relative_to(root):
            return None, "the path leads outside the uploads folder", False
        if path.is_file():
            return _probe(path, max_bytes)
    return None, "no such file in the uploads folder", True


def _probe(path: Path, max_bytes: int) -> tuple[ImageSource | None, str | None, bool]:
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror or exc}", False
    found = sniff(head)
    if found is None:
        return None, "not a JPEG, PNG or WebP image", False
    if size > max_bytes:
        return None, f"{size} bytes: larger than the image limit of {max_bytes}", False
    return ImageSource(path=path, format=found, size=size), None, False


def _read(source: ImageSource) -> tuple[bytes, str]:
    data = source.path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


async def store_all(
    storage: Storage, tenant_id: uuid.UUID, jobs: Iterable[tuple[int, ImageSource]], stored: list[StoredImage]
) -> None:
    """Store every ``(card id, source)`` under a new key, appending each to ``stored`` before it is
    written, so that whatever fails, the caller knows every object to remove again.

    Every write runs to its end (no cancellation of the others when one fails: a write cancelled in its
    thread could land after the clean-up), then the first failure is raised.
    """
    gate = asyncio.Semaphore(STORE_CONCURRENCY)

    async def one(card_id: int, source: ImageSource) -> None:
        async with gate:
            data, digest = await asyncio.to_thread(_read, source)
            key = new_key(digest, source.format.extension)
            image = StoredImage(card_id, key, source.format.content_type, len(data), digest)
            stored.append(image)
            await storage.put(tenant_id, key, data)

    results = await asyncio.gather(*(one(card_id, source) for card_id, source in jobs), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def digest_all(jobs: Iterable[tuple[int, ImageSource]]) -> list[StoredImage]:
    """What ``store_all`` would record, without storing anything (a dry run reads every file all the same)."""
    out = []
    for card_id, source in jobs:
        data, digest = await asyncio.to_thread(_read, source)
        key = new_key(digest, source.format.extension)
        out.append(StoredImage(card_id, key, source.format.content_type, len(data), digest))
    return out


async def remove_all(storage: Storage, tenant_id: uuid.UUID, stored: Iterable[StoredImage]) -> None:
    """Remove objects an import wrote before it failed (each attempted, whatever the others do)."""
    for image in stored:
        try:
            await storage.delete(tenant_id, image.key)
        except Exception:  # keep removing the others; storage hygiene finds what is left
            log.exception("tenant %s: could not remove stored object %s of a failed import", tenant_id, image.key)
