"""Where backups and export archives live: the ``ObjectStore`` interface and how object keys look.

Objects are written as streams and land whole or not at all (``put``), are read back as streams
(``get``), and are named by keys the control plane makes itself (``backups/<tenant>/<id>.dump.cvs``), never
by user input. ``LocalObjectStore`` keeps them in a directory (``CARDVAULT_BACKUP_DIR``), ``S3ObjectStore``
in an S3-compatible bucket. What goes in is sealed first (``controlplane.objectstore.sealed``): the store
sees only ciphertext.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol

import msgspec

__all__ = ["KEY_PATTERN", "InvalidObjectKey", "ObjectNotFound", "ObjectStore", "StoredObject", "validate_key"]

#: Path-like keys of lowercase letters, digits, ``_``, ``-`` and ``.``, separated by single ``/``; no
#: segment starts with a dot, so no key can climb out of the store (``..``) or name a hidden file.
KEY_PATTERN = re.compile(r"[0-9a-z][0-9a-z_.-]{0,127}(?:/[0-9a-z][0-9a-z_.-]{0,127}){0,7}")

#: Bytes per chunk that stores read and write.
CHUNK_SIZE = 1024 * 1024


class InvalidObjectKey(ValueError):
    """A key that does not match ``KEY_PATTERN``: refused by every store."""


class ObjectNotFound(LookupError):
    """No object under that key."""


class StoredObject(msgspec.Struct, frozen=True, kw_only=True):
    """An object as stored: its key, size in bytes and the sha256 (hex) of the stored bytes."""

    key: str
    size: int
    sha256: str


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise InvalidObjectKey(f"refusing object key {key!r}")
    return key


class ObjectStore(Protocol):
    """Streamed object storage. Implementations must be safe for concurrent use."""

    #: What the store is, for logs and reports (``local:/var/backups``, ``s3://bucket/prefix``).
    description: str

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> StoredObject:
        """Store the stream under ``key`` (replacing any object there); readers never see a part of it.

        If ``chunks`` raises, nothing is left under ``key`` (nor any temporary part) and the error propagates.
        """
        ...

    def get(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks; raises ``ObjectNotFound`` (on first iteration) if there is none."""
        ...

    async def stat(self, key: str) -> int | None:
        """The object's size in bytes, or None when there is no such object."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove the object; False when there was none (idempotent)."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` (a directory-like prefix ending in ``/``), sorted."""
        ...
