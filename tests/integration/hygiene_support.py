"""Helpers of the storage hygiene tests: real tenants, objects written to their real storage area (with a
chosen age), ``files`` rows and cards written straight into the tenant database as the superuser, and reads
of the control tables hygiene keeps."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from typing import Any

from controlplane.hygiene.service import StorageHygiene
from controlplane.platform import Platform
from controlplane.storage import new_key
from controlplane.storage.local import LocalStorage
from tests.integration.auth_support import tenant_rows

#: Older than the safety margin hygiene leaves new objects alone for (1 hour).
OLD = 2 * 3600


def png(size: int = 300) -> bytes:
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(size)


def hygiene_of(platform: Platform) -> StorageHygiene:
    """Hygiene over the test's storage (``<data_dir>/storage``), two tenants at once."""
    return StorageHygiene(platform, concurrency=2)


def storage_of(platform: Platform) -> LocalStorage:
    return LocalStorage(platform.settings.data_dir / "storage")


async def put_object(storage: LocalStorage, tenant_id: uuid.UUID, data: bytes, *, age: float = OLD) -> str:
    """Store ``data`` for the tenant as an upload would, modified ``age`` seconds ago; its key."""
    key = new_key(hashlib.sha256(data).hexdigest(), "png")
    await storage.put(tenant_id, key, data)
    then = time.time() - age
    os.utime(storage.tenant_dir(tenant_id) / key, (then, then))
    return key


async def add_image_row(platform: Platform, slug: str, key: str, data: bytes) -> int:
    """A card whose image is ``key`` (its ``files`` row, as an upload commits it); the card id."""
    (card,) = await tenant_rows(platform, slug, "INSERT INTO cards (cardnumber) VALUES ('1') RETURNING id")
    await tenant_rows(
        platform,
        slug,
        "INSERT INTO files (key, content_type, bytes, sha256, card_id) VALUES (%s, 'image/png', %s, %s, %s)",
        (key, len(data), hashlib.sha256(data).hexdigest(), card["id"]),
    )
    await tenant_rows(platform, slug, "UPDATE cards SET image = %s WHERE id = %s", (key, card["id"]))
    return int(card["id"])


async def control_rows(platform: Platform, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    async with platform.control.connection() as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def quarantined(platform: Platform, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    return await control_rows(
        platform, "SELECT * FROM quarantined_files WHERE tenant_id = %s ORDER BY id", (tenant_id,)
    )


async def missing(platform: Platform, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    return await control_rows(platform, "SELECT * FROM missing_files WHERE tenant_id = %s ORDER BY id", (tenant_id,))


async def make_due(platform: Platform) -> None:
    """End every grace period now (as if ``CARDVAULT_QUARANTINE_GRACE`` had passed)."""
    await control_rows(platform, "UPDATE quarantined_files SET delete_after = now() - interval '1 second'")
    await control_rows(platform, "UPDATE missing_files SET resolve_after = now() - interval '1 second'")


def area(storage: LocalStorage, tenant_id: uuid.UUID) -> dict[str, bytes]:
    """The tenant's served objects, by key."""
    directory = storage.tenant_dir(tenant_id)
    return {p.name: p.read_bytes() for p in directory.iterdir()} if directory.exists() else {}


def in_quarantine(storage: LocalStorage, tenant_id: uuid.UUID) -> dict[str, bytes]:
    directory = storage.quarantine_dir(tenant_id)
    return {p.name: p.read_bytes() for p in directory.iterdir()} if directory.exists() else {}
