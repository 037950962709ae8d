"""Where tenants' files (card images) live: the ``Storage`` interface and how object keys look.

Keys are made here (``new_key``), never taken from user input, and every implementation refuses a key
that does not look like one, so no request can name a path outside its tenant's area. Objects are
grouped per tenant (``tenant_id``) so that one tenant's uploads can never touch another's objects.
``LocalStorage`` (``controlplane.storage.local``) keeps them on disk; an object store can replace it
behind the same methods.

Besides the served objects, a storage keeps a *quarantine* per tenant, outside what is served: storage
hygiene (``controlplane.hygiene``) moves objects no ``files`` row refers to there, and later deletes them
or moves them back. ``controlplane.storage.delivery`` has what serving objects over HTTP needs (entity
tags, cache policies, signed links), free of HTTP types.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import uuid
from typing import Protocol, runtime_checkable

__all__ = ["KEY_PATTERN", "InvalidStorageKey", "Storage", "StoredObject", "new_key", "validate_key"]

#: A key: lowercase letters, digits, ``-`` and ``_`` (never starting with ``.`` or ``-``), optionally
#: one extension. No separators, so a key can only ever name an object directly in its tenant's area.
KEY_PATTERN = re.compile(r"[0-9a-z][0-9a-z_-]{0,126}(?:\.[0-9a-z]{1,8})?")


class InvalidStorageKey(ValueError):
    """A key that is not one ``new_key`` makes, or a tenant id that is not a UUID: refused."""


def validate_key(tenant_id: uuid.UUID, key: str) -> None:
    """Raise ``InvalidStorageKey`` unless ``tenant_id`` is a UUID and ``key`` matches ``KEY_PATTERN``."""
    if not isinstance(tenant_id, uuid.UUID):
        raise InvalidStorageKey(f"tenant id must be a UUID, got {tenant_id!r}")
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise InvalidStorageKey(f"refusing storage key {key!r}")


def new_key(sha256_hex: str, extension: str) -> str:
    """A fresh key for an object with this content digest: ``<sha256>-<random>.<extension>``.

    The random part keeps keys unique when two cards carry the same picture (``files.key`` is unique
    and each card owns its own object, so deleting one never removes the other's).
    """
    key = f"{sha256_hex[:64]}-{secrets.token_hex(8)}.{extension}"
    if not KEY_PATTERN.fullmatch(key):
        raise InvalidStorageKey(f"cannot make a key from {sha256_hex!r} and {extension!r}")
    return key


@dataclasses.dataclass(frozen=True)
class StoredObject:
    """One object as listed by ``Storage.keys``: its key, size and last modification (Unix time)."""

    key: str
    bytes: int
    modified: float


@runtime_checkable
class Storage(Protocol):
    """Per-tenant object storage. Implementations must be safe for concurrent use.

    Runtime-checkable so that Litestar can validate an injected ``storage`` dependency.
    """

    async def put(self, tenant_id: uuid.UUID, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically: readers see the old object or the new one, never a part."""
        ...

    async def get(self, tenant_id: uuid.UUID, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such object."""
        ...

    async def delete(self, tenant_id: uuid.UUID, key: str) -> bool:
        """Remove the object; False when there was none (deleting is idempotent)."""
        ...

    async def usage(self, tenant_id: uuid.UUID) -> int:
        """Bytes the tenant's objects take up."""
        ...

    async def delete_all(self, tenant_id: uuid.UUID) -> int:
        """Remove every object of the tenant and its area, its quarantine included (a purge); the number
        of served objects removed.

        Idempotent: a second call (say, the reconciler finishing an interrupted purge) removes what the
        first one left and returns 0 when nothing was left.
        """
        ...

    async def keys(self, tenant_id: uuid.UUID) -> list[StoredObject]:
        """The tenant's served objects (writes in progress and anything that is no key are left out)."""
        ...

    async def stat(self, tenant_id: uuid.UUID, key: str) -> StoredObject | None:
        """The served object's size and modification time, or None when there is no such object."""
        ...

    async def areas(self) -> list[uuid.UUID]:
        """Every tenant id that has a storage area (whether or not the registry still knows it)."""
        ...

    async def remove_area(self, tenant_id: uuid.UUID) -> bool:
        """Remove the tenant's served area if it holds no object (leftover temporary files go with it);
        False when objects are left in it. The quarantine is kept."""
        ...

    async def quarantine(self, tenant_id: uuid.UUID, key: str) -> int | None:
        """Move the object out of the served area into the tenant's quarantine; its size, or None when
        there was no such object (it is not served from then on)."""
        ...

    async def restore(self, tenant_id: uuid.UUID, key: str) -> bool:
        """Move a quarantined object back to the served area; True when it is served again (or already
        was), False when there was nothing to bring back."""
        ...

    async def delete_quarantined(self, tenant_id: uuid.UUID, key: str) -> int | None:
        """Delete a quarantined object; the bytes freed, or None when there was none."""
        ...
