"""All SQL on ``tenant_exports`` (control database). Each function is one statement: callers on the
autocommit control pool get it committed on its own.

Workers claim rows with ``FOR UPDATE SKIP LOCKED`` and hold them by a lease (``lease_until``), renewed
while they work: concurrent workers (the replica that took the request, the leader's job) never take the
same row, and a row whose worker died is claimed again once its lease ends. Each claim counts an attempt,
and every later write of the worker names that attempt, so a worker that lost its lease cannot overwrite
what its successor did.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from controlplane.db import AsyncConn
from controlplane.privacy.models import ExportKind, ExportRecord, ExportStatus

#: Longest ``error`` kept.
_ERROR_LENGTH = 500

_FIELDS = ExportRecord.__struct_fields__


def _record(row: Mapping[str, Any]) -> ExportRecord:
    values = {name: row[name] for name in _FIELDS}
    values.update(kind=ExportKind(row["kind"]), status=ExportStatus(row["status"]), token_hash=bytes(row["token_hash"]))
    return ExportRecord(**values)


async def _one(conn: AsyncConn, query: str, params: Mapping[str, Any] | tuple[Any, ...]) -> ExportRecord | None:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return _record(row) if row else None


async def insert(
    conn: AsyncConn,
    *,
    export_id: uuid.UUID,
    tenant_id: uuid.UUID,
    tenant_slug: str,
    kind: ExportKind,
    subject: int | None,
    requested_by: str,
    token_hash: bytes,
) -> ExportRecord:
    record = await _one(
        conn,
        "INSERT INTO tenant_exports (id, tenant_id, tenant_slug, kind, subject, requested_by, token_hash)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
        (export_id, tenant_id, tenant_slug, kind.value, subject, requested_by, token_hash),
    )
    assert record is not None
    return record


async def get(conn: AsyncConn, export_id: uuid.UUID, tenant_id: uuid.UUID | None = None) -> ExportRecord | None:
    """The export, if it exists (and belongs to ``tenant_id`` when given)."""
    return await _one(
        conn,
        "SELECT * FROM tenant_exports WHERE id = %s AND (%s::uuid IS NULL OR tenant_id = %s)",
        (export_id, tenant_id, tenant_id),
    )


async def list_for_tenant(
    conn: AsyncConn, tenant_id: uuid.UUID, *, requested_by: str | None = None, limit: int
) -> list[ExportRecord]:
    """The tenant's exports, newest first (only those ``requested_by`` asked for, when given)."""
    cur = await conn.execute(
        "SELECT * FROM tenant_exports WHERE tenant_id = %s AND (%s::text IS NULL OR requested_by = %s)"
        " ORDER BY created_at DESC, id LIMIT %s",
        (tenant_id, requested_by, requested_by, limit),
    )
    return [_record(row) for row in await cur.fetchall()]


async def unfinished(
    conn: AsyncConn, tenant_id: uuid.UUID, kind: ExportKind, subject: int | None
) -> ExportRecord | None:
    """A pending or running export of the same kind and subject, if there is one."""
    return await _one(
        conn,
        "SELECT * FROM tenant_exports WHERE tenant_id = %s AND kind = %s"
        " AND subject IS NOT DISTINCT FROM %s AND status IN ('pending', 'running') LIMIT 1",
        (tenant_id, kind.value, subject),
    )


async def claim(conn: AsyncConn, *, lease_seconds: float, export_id: uuid.UUID | None = None) -> ExportRecord | None:
    """Take one export that is due (pending and not backing off, or running with its lease ended), oldest
    first, or exactly ``export_id``; it becomes ``running`` under a fresh lease with one more attempt."""
    return await _one(
        conn,
        """
        UPDATE tenant_exports e
           SET status = 'running', attempts = e.attempts + 1, started_at = now(),
               lease_until = now() + make_interval(secs => %(lease)s), error = NULL
          FROM (
            SELECT id FROM tenant_exports
             WHERE (status = 'pending' OR status = 'running')
               AND (lease_until IS NULL OR lease_until < now())
               AND (%(id)s::uuid IS NULL OR id = %(id)s)
             ORDER BY created_at, id
             LIMIT 1
             FOR UPDATE SKIP LOCKED
          ) due
         WHERE e.id = due.id
        RETURNING e.*
        """,
        {"lease": lease_seconds, "id": export_id},
    )


async def renew(conn: AsyncConn, export_id: uuid.UUID, attempt: int, lease_seconds: float) -> bool:
    """Extend the worker's lease; False when the row is no longer this attempt's."""
    cur = await conn.execute(
        "UPDATE tenant_exports SET lease_until = now() + make_interval(secs => %s)"
        " WHERE id = %s AND attempts = %s AND status = 'running'",
        (lease_seconds, export_id, attempt),
    )
    return cur.rowcount == 1


async def mark_ready(
    conn: AsyncConn,
    export_id: uuid.UUID,
    attempt: int,
    *,
    object_key: str,
    data_key_encrypted: str,
    size: int,
    sha256: str,
    ttl_seconds: float,
) -> bool:
    """The archive is stored: ready for download until now + ``ttl_seconds``. False when the row is no
    longer this attempt's (it was withdrawn, or a successor claimed it)."""
    cur = await conn.execute(
        """
        UPDATE tenant_exports
           SET status = 'ready', object_key = %s, data_key_encrypted = %s, bytes = %s, sha256 = %s,
               finished_at = now(), expires_at = now() + make_interval(secs => %s), lease_until = NULL
         WHERE id = %s AND attempts = %s AND status = 'running'
        """,
        (object_key, data_key_encrypted, size, sha256, ttl_seconds, export_id, attempt),
    )
    return cur.rowcount == 1


async def mark_attempt_failed(
    conn: AsyncConn, export_id: uuid.UUID, attempt: int, error: str, *, final: bool, retry_after: float
) -> None:
    """This attempt failed: for good (``final``), or back to pending, not claimed again for ``retry_after`` s."""
    await conn.execute(
        """
        UPDATE tenant_exports
           SET status = CASE WHEN %(final)s THEN 'failed' ELSE 'pending' END, error = %(error)s,
               finished_at = CASE WHEN %(final)s THEN now() END,
               lease_until = CASE WHEN %(final)s THEN NULL ELSE now() + make_interval(secs => %(retry)s) END
         WHERE id = %(id)s AND attempts = %(attempt)s AND status = 'running'
        """,
        {"final": final, "error": error[:_ERROR_LENGTH], "retry": retry_after, "id": export_id, "attempt": attempt},
    )


async def release(conn: AsyncConn, export_id: uuid.UUID, attempt: int) -> None:
    """Give a running export back (its worker is stopping): pending, claimable at once."""
    await conn.execute(
        "UPDATE tenant_exports SET status = 'pending', lease_until = NULL"
        " WHERE id = %s AND attempts = %s AND status = 'running'",
        (export_id, attempt),
    )


async def start_download(conn: AsyncConn, export_id: uuid.UUID, lease_seconds: float) -> bool:
    """Reserve the ready export's one download (no other download runs meanwhile); False when it is not
    ready, expired, or already being downloaded."""
    cur = await conn.execute(
        """
        UPDATE tenant_exports SET download_lease_until = now() + make_interval(secs => %s)
         WHERE id = %s AND status = 'ready' AND expires_at > now()
           AND (download_lease_until IS NULL OR download_lease_until < now())
        """,
        (lease_seconds, export_id),
    )
    return cur.rowcount == 1


async def end_download(conn: AsyncConn, export_id: uuid.UUID, *, completed: bool) -> bool:
    """The download streamed to its end (``completed``: the export is ``downloaded``) or broke off (the link
    works again). False when the export was no longer ready."""
    cur = await conn.execute(
        """
        UPDATE tenant_exports
           SET status = CASE WHEN %(done)s THEN 'downloaded' ELSE status END,
               downloaded_at = CASE WHEN %(done)s THEN now() END, download_lease_until = NULL
         WHERE id = %(id)s AND status = 'ready'
        """,
        {"done": completed, "id": export_id},
    )
    return cur.rowcount == 1


async def fail_ready(conn: AsyncConn, export_id: uuid.UUID, error: str) -> None:
    """A ready export whose archive is missing or damaged fails (its link can never work)."""
    await conn.execute(
        "UPDATE tenant_exports SET status = 'failed', error = %s, download_lease_until = NULL"
        " WHERE id = %s AND status = 'ready'",
        (error[:_ERROR_LENGTH], export_id),
    )


async def expire_due(conn: AsyncConn) -> int:
    """Ready exports past their expiry (and not being downloaded) become ``expired``; how many."""
    cur = await conn.execute(
        "UPDATE tenant_exports SET status = 'expired'"
        " WHERE status = 'ready' AND expires_at <= now()"
        " AND (download_lease_until IS NULL OR download_lease_until < now())"
    )
    return cur.rowcount


async def expire_orphans(conn: AsyncConn) -> int:
    """Exports of tenants that no longer exist (purged) end: unfinished ones fail, ready ones expire."""
    cur = await conn.execute(
        """
        UPDATE tenant_exports e
           SET status = CASE WHEN e.status = 'ready' THEN 'expired' ELSE 'failed' END,
               error = CASE WHEN e.status = 'ready' THEN e.error ELSE 'the tenant was purged' END,
               finished_at = coalesce(e.finished_at, now()), lease_until = NULL
         WHERE e.status IN ('pending', 'running', 'ready')
           AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = e.tenant_id)
        """
    )
    return cur.rowcount


async def withdraw(conn: AsyncConn, tenant_id: uuid.UUID, reason: str) -> int:
    """End every export of the tenant that is running or ready (a user erasure: their data may be in it)."""
    cur = await conn.execute(
        """
        UPDATE tenant_exports
           SET status = CASE WHEN status = 'ready' THEN 'expired' ELSE 'failed' END, error = %s,
               finished_at = coalesce(finished_at, now()), lease_until = NULL, download_lease_until = NULL
         WHERE tenant_id = %s AND status IN ('running', 'ready')
        """,
        (reason[:_ERROR_LENGTH], tenant_id),
    )
    return cur.rowcount


async def end_user_exports(conn: AsyncConn, tenant_id: uuid.UUID, user_id: int, pseudonym: str) -> int:
    """A user is erased: their own exports end (archives to be deleted) and name them by ``pseudonym``."""
    actor = f"user:{user_id}"
    cur = await conn.execute(
        """
        UPDATE tenant_exports
           SET status = CASE WHEN status IN ('downloaded', 'expired', 'failed') THEN status ELSE 'expired' END,
               requested_by = CASE WHEN requested_by = %(actor)s THEN %(pseudonym)s ELSE requested_by END,
               finished_at = coalesce(finished_at, now()), lease_until = NULL, download_lease_until = NULL
         WHERE tenant_id = %(tenant)s AND ((kind = 'user' AND subject = %(user)s) OR requested_by = %(actor)s)
        """,
        {"actor": actor, "pseudonym": pseudonym, "tenant": tenant_id, "user": user_id},
    )
    return cur.rowcount


async def objects_to_delete(conn: AsyncConn, limit: int) -> list[tuple[uuid.UUID, str]]:
    """(export id, object key) of archives whose export has ended but that are still stored."""
    cur = await conn.execute(
        "SELECT id, object_key FROM tenant_exports"
        " WHERE object_key IS NOT NULL AND object_deleted_at IS NULL"
        " AND status IN ('downloaded', 'expired', 'failed') ORDER BY created_at LIMIT %s",
        (limit,),
    )
    return [(row["id"], row["object_key"]) for row in await cur.fetchall()]


async def mark_object_deleted(conn: AsyncConn, export_id: uuid.UUID) -> None:
    await conn.execute("UPDATE tenant_exports SET object_deleted_at = now() WHERE id = %s", (export_id,))


async def count_for_tenant(conn: AsyncConn, tenant_id: uuid.UUID) -> dict[str, int]:
    """Exports of the tenant by status (for a deletion certificate)."""
    cur = await conn.execute(
        "SELECT status, count(*) AS n FROM tenant_exports WHERE tenant_id = %s GROUP BY status", (tenant_id,)
    )
    return {row["status"]: int(row["n"]) for row in await cur.fetchall()}


async def stored_for_tenant(conn: AsyncConn, tenant_id: uuid.UUID) -> int:
    """Archives of the tenant still in the object store."""
    cur = await conn.execute(
        "SELECT count(*) AS n FROM tenant_exports WHERE tenant_id = %s"
        " AND object_key IS NOT NULL AND object_deleted_at IS NULL",
        (tenant_id,),
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0
