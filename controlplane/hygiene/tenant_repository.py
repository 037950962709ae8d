"""The SQL storage hygiene and file delivery run in a tenant's own database: its ``files`` rows, one file
by key, and removing a row whose object is lost. Callers own the transaction."""

from __future__ import annotations

from typing import Any, NamedTuple

from controlplane.audit import repository as audit
from controlplane.context import AuditContext
from controlplane.db import AsyncConn

#: Who acts in the tenant's audit log when hygiene removes a lost file's row.
HYGIENE_ACTOR = AuditContext(actor="system:storage-hygiene")


class FileRow(NamedTuple):
    bytes: int
    card_id: int | None


async def file_rows(conn: AsyncConn) -> dict[str, FileRow]:
    """Every ``files`` row, by key."""
    cur = await conn.execute("SELECT key, bytes, card_id FROM files")
    return {r["key"]: FileRow(int(r["bytes"]), r["card_id"]) for r in await cur.fetchall()}


async def file_by_key(conn: AsyncConn, key: str) -> dict[str, Any] | None:
    """The row of the file stored under ``key`` (``content_type``, ``bytes``, ``sha256``), or None."""
    cur = await conn.execute("SELECT content_type, bytes, sha256 FROM files WHERE key = %s", (key,))
    return await cur.fetchone()


async def remove_lost_file(conn: AsyncConn, key: str) -> bool:
    """Delete the row of a file whose object is lost, clear every card image pointing at it and audit it
    (``image.lost``); False when the row is gone already."""
    cur = await conn.execute("DELETE FROM files WHERE key = %s RETURNING bytes, card_id, sha256", (key,))
    row = await cur.fetchone()
    if row is None:
        return False
    cur = await conn.execute("UPDATE cards SET image = NULL WHERE image = %s RETURNING id", (key,))
    cards = [r["id"] for r in await cur.fetchall()]
    details = {"key": key, "bytes": row["bytes"], "sha256": row["sha256"], "cards": cards}
    entity_id = row["card_id"] if row["card_id"] is not None else (cards[0] if cards else None)
    await audit.record_tenant(conn, HYGIENE_ACTOR, "image.lost", "card", entity_id, details)
    return True
