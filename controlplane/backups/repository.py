"""All SQL on ``backups``. Callers own the transaction.

Every change of a running backup names the attempt it belongs to (``attempts`` as a fencing token): a
runner that lost its lease while another process took the backup over cannot finish or fail it any more.

``bytes`` and ``sha256`` are those of the stored dump; a backup's files object (``manifest->'files'``: its key,
``size`` and ``sha256``) counts in the retained bytes too (``_STORED``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import msgspec
from psycopg import sql
from psycopg.types.json import Jsonb

from controlplane import db
from controlplane.backups.models import Backup, BackupStatus, BackupTrigger, Manifest, TenantBackupState
from controlplane.db import AsyncConn
from controlplane.registry.models import Tenant

_COLUMNS = sql.SQL(
    "id, tenant_id, tenant_slug, server_id, database_name, schema_revision, status, trigger, requested_by, store,"
    " object_key, bytes, sha256, manifest, error, attempts, created_at, started_at, finished_at, expires_at,"
    " deleted_at"
)
#: Longest error text kept in a row (pg_dump's stderr can be long; its end says what went wrong).
MAX_ERROR = 4000
#: Bytes a backup keeps in the store: its dump and its files object (none for backups made before files were).
_STORED = "coalesce(b.bytes, 0) + coalesce((b.manifest #>> '{files,size}')::bigint, 0)"


def _backup(row: Mapping[str, Any]) -> Backup:
    return Backup(
        id=row["id"],
        tenant_id=row["tenant_id"],
        tenant_slug=row["tenant_slug"],
        server_id=row["server_id"],
        database_name=row["database_name"],
        schema_revision=row["schema_revision"],
        status=BackupStatus(row["status"]),
        trigger=BackupTrigger(row["trigger"]),
        requested_by=row["requested_by"],
        store=row["store"],
        object_key=row["object_key"],
        bytes=row["bytes"],
        sha256=row["sha256"],
        manifest=dict(row["manifest"]),
        error=row["error"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        expires_at=row["expires_at"],
        deleted_at=row["deleted_at"],
    )


async def _one(conn: AsyncConn, query: sql.Composed, params: Sequence[Any]) -> Backup | None:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return _backup(row) if row is not None else None


# -- requests -------------------------------------------------------------------------------------------


async def lock_requests(conn: AsyncConn, tenant_id: uuid.UUID) -> None:
    """Serialise backup requests of one tenant until the transaction ends (the one-open-backup rule)."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (db.lock_key(f"cardvault:backup-request:{tenant_id}"),))


async def open_count(conn: AsyncConn, tenant_id: uuid.UUID) -> int:
    cur = await conn.execute(
        "SELECT count(*) AS n FROM backups WHERE tenant_id = %s AND status IN ('pending', 'running')", (tenant_id,)
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def requested_since(conn: AsyncConn, tenant_id: uuid.UUID, trigger: BackupTrigger, seconds: float) -> int:
    """Backups of the tenant with this trigger created in the last ``seconds``."""
    cur = await conn.execute(
        "SELECT count(*) AS n FROM backups WHERE tenant_id = %s AND trigger = %s"
        " AND created_at > now() - make_interval(secs => %s)",
        (tenant_id, trigger.value, seconds),
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def insert(
    conn: AsyncConn,
    *,
    backup_id: uuid.UUID,
    tenant: Tenant,
    trigger: BackupTrigger,
    requested_by: str | None,
    store: str,
    object_key: str,
    data_key_encrypted: str,
) -> Backup:
    cur = await conn.execute(
        sql.SQL(
            "INSERT INTO backups (id, tenant_id, tenant_slug, server_id, database_name, schema_revision, status,"
            " trigger, requested_by, store, object_key, data_key_encrypted)"
            " VALUES (%s, %s, %s, %s, %s, %s, 'pending', %s, %s, %s, %s, %s) RETURNING {}"
        ).format(_COLUMNS),
        (
            backup_id,
            tenant.id,
            tenant.slug,
            tenant.server_id,
            tenant.database_name,
            tenant.schema_revision,
            trigger.value,
            requested_by,
            store,
            object_key,
            data_key_encrypted,
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    return _backup(row)


# -- reads ----------------------------------------------------------------------------------------------


async def get(conn: AsyncConn, backup_id: uuid.UUID) -> Backup | None:
    return await _one(conn, sql.SQL("SELECT {} FROM backups WHERE id = %s").format(_COLUMNS), (backup_id,))


async def data_key_encrypted(conn: AsyncConn, backup_id: uuid.UUID) -> str | None:
    cur = await conn.execute("SELECT data_key_encrypted FROM backups WHERE id = %s", (backup_id,))
    row = await cur.fetchone()
    return str(row["data_key_encrypted"]) if row else None


async def list_for_tenant(conn: AsyncConn, tenant_id: uuid.UUID, limit: int) -> list[Backup]:
    """The tenant's backups, newest first (also of a tenant that no longer exists)."""
    cur = await conn.execute(
        sql.SQL("SELECT {} FROM backups WHERE tenant_id = %s ORDER BY created_at DESC, id LIMIT %s").format(_COLUMNS),
        (tenant_id, limit),
    )
    return [_backup(r) for r in await cur.fetchall()]


async def tenant_id_by_slug(conn: AsyncConn, slug: str) -> uuid.UUID | None:
    """The tenant that last had backups under ``slug`` (for a tenant no longer in the registry)."""
    cur = await conn.execute(
        "SELECT tenant_id FROM backups WHERE tenant_slug = %s ORDER BY created_at DESC LIMIT 1", (slug,)
    )
    row = await cur.fetchone()
    return row["tenant_id"] if row else None


class OpenBackup(NamedTuple):
    id: uuid.UUID
    status: BackupStatus


async def open_backups(conn: AsyncConn) -> list[OpenBackup]:
    """Every pending or running backup, oldest first."""
    cur = await conn.execute(
        "SELECT id, status FROM backups WHERE status IN ('pending', 'running') ORDER BY created_at, id"
    )
    return [OpenBackup(r["id"], BackupStatus(r["status"])) for r in await cur.fetchall()]


# -- a run ----------------------------------------------------------------------------------------------


async def claim(conn: AsyncConn, backup_id: uuid.UUID, *, server_id: uuid.UUID, database_name: str) -> Backup | None:
    """Start (or restart) the backup: ``running``, one more attempt, where the tenant's database is now.

    Call it holding the backup's lease; None when it is no longer pending or running.
    """
    return await _one(
        conn,
        sql.SQL(
            "UPDATE backups SET status = 'running', attempts = attempts + 1, started_at = now(), server_id = %s,"
            " database_name = %s, error = NULL WHERE id = %s AND status IN ('pending', 'running') RETURNING {}"
        ).format(_COLUMNS),
        (server_id, database_name, backup_id),
    )


async def succeed(
    conn: AsyncConn,
    backup_id: uuid.UUID,
    attempt: int,
    *,
    size: int,
    sha256: str,
    manifest: Manifest,
    retention_seconds: float,
) -> Backup | None:
    """Record the stored object; None if the attempt is no longer the backup's current one."""
    return await _one(
        conn,
        sql.SQL(
            "UPDATE backups SET status = 'succeeded', bytes = %s, sha256 = %s, manifest = %s, schema_revision = %s,"
            " finished_at = now(), expires_at = now() + make_interval(secs => %s), error = NULL"
            " WHERE id = %s AND status = 'running' AND attempts = %s RETURNING {}"
        ).format(_COLUMNS),
        (
            size,
            sha256,
            Jsonb(msgspec.to_builtins(manifest)),
            manifest.schema_revision,
            retention_seconds,
            backup_id,
            attempt,
        ),
    )


async def fail(conn: AsyncConn, backup_id: uuid.UUID, error: str, *, attempt: int | None = None) -> Backup | None:
    """Mark the backup failed with ``error`` (of attempt ``attempt`` only, when given); None if it was not
    open (or the attempt is stale)."""
    fence = sql.SQL("") if attempt is None else sql.SQL(" AND attempts = %s")
    params: tuple[Any, ...] = (error[-MAX_ERROR:], backup_id) + (() if attempt is None else (attempt,))
    return await _one(
        conn,
        sql.SQL(
            "UPDATE backups SET status = 'failed', error = %s, finished_at = now()"
            " WHERE id = %s AND status IN ('pending', 'running'){} RETURNING {}"
        ).format(fence, _COLUMNS),
        params,
    )


# -- expiry ---------------------------------------------------------------------------------------------


class Expiring(NamedTuple):
    id: uuid.UUID
    tenant_id: uuid.UUID
    object_key: str
    #: The files object (None: a backup made before files were kept).
    files_key: str | None = None


async def due_for_expiry(conn: AsyncConn, limit: int) -> list[Expiring]:
    """Succeeded backups past ``expires_at`` (of existing tenants or not), oldest expiry first."""
    cur = await conn.execute(
        "SELECT id, tenant_id, object_key, manifest #>> '{files,key}' AS files_key FROM backups"
        " WHERE status = 'succeeded' AND expires_at <= now() ORDER BY expires_at LIMIT %s",
        (limit,),
    )
    return [Expiring(r["id"], r["tenant_id"], r["object_key"], r["files_key"]) for r in await cur.fetchall()]


async def mark_expired(conn: AsyncConn, backup_ids: Sequence[uuid.UUID]) -> int:
    """``expired`` with ``deleted_at``; call once their objects are deleted."""
    if not backup_ids:
        return 0
    cur = await conn.execute(
        "UPDATE backups SET status = 'expired', deleted_at = now() WHERE id = ANY(%s) AND status = 'succeeded'",
        (list(backup_ids),),
    )
    return cur.rowcount


# -- usage and standing ---------------------------------------------------------------------------------


class Retained(NamedTuple):
    tenant_id: uuid.UUID
    size: int
    number: int


async def retained(conn: AsyncConn, tenant_ids: Sequence[uuid.UUID]) -> list[Retained]:
    """Bytes and number of each tenant's retained backups (succeeded, not expired); 0 for none."""
    cur = await conn.execute(
        sql.SQL(
            """
            SELECT t.id AS tenant_id, coalesce(sum({}), 0) AS bytes, count(b.id) AS n
              FROM unnest(%s::uuid[]) AS t (id)
              LEFT JOIN backups b ON b.tenant_id = t.id AND b.status = 'succeeded'
             GROUP BY t.id
            """
        ).format(sql.SQL(_STORED)),
        (list(tenant_ids),),
    )
    return [Retained(r["tenant_id"], int(r["bytes"]), int(r["n"])) for r in await cur.fetchall()]


async def retained_totals(conn: AsyncConn) -> tuple[int, int]:
    """Bytes and number of every retained backup (of existing tenants or not)."""
    cur = await conn.execute(
        sql.SQL("SELECT coalesce(sum({}), 0) AS bytes, count(*) AS n FROM backups b WHERE status = 'succeeded'").format(
            sql.SQL(_STORED)
        )
    )
    row = await cur.fetchone()
    return (int(row["bytes"]), int(row["n"])) if row else (0, 0)


async def tenant_states(conn: AsyncConn) -> list[TenantBackupState]:
    """Every active or suspended tenant with its backup standing (a few index probes per tenant)."""
    query = sql.SQL(
        """
        SELECT t.id, t.slug, t.subscription_tier, t.status, t.server_id, t.created_at,
               (SELECT b.created_at FROM backups b
                 WHERE b.tenant_id = t.id AND b.status <> 'failed'
                 ORDER BY b.created_at DESC LIMIT 1) AS last_requested,
               (SELECT b.created_at FROM backups b
                 WHERE b.tenant_id = t.id AND b.status = 'failed'
                 ORDER BY b.created_at DESC LIMIT 1) AS last_failed,
               (SELECT max(b.finished_at) FROM backups b
                 WHERE b.tenant_id = t.id AND b.status IN ('succeeded', 'expired')) AS last_succeeded,
               r.bytes AS retained_bytes, r.n AS retained,
               EXISTS (SELECT 1 FROM backups b
                        WHERE b.tenant_id = t.id AND b.status IN ('pending', 'running')) AS open
          FROM tenants t
          LEFT JOIN LATERAL (
               SELECT coalesce(sum({}), 0) AS bytes, count(*) AS n FROM backups b
                WHERE b.tenant_id = t.id AND b.status = 'succeeded') r ON true
         WHERE t.status IN ('active', 'suspended')
         ORDER BY t.slug
        """
    ).format(sql.SQL(_STORED))
    cur = await conn.execute(query)
    return [
        TenantBackupState(
            tenant_id=r["id"],
            slug=r["slug"],
            tier=r["subscription_tier"],
            status=r["status"],
            server_id=r["server_id"],
            created_at=r["created_at"],
            last_requested=r["last_requested"],
            last_failed=r["last_failed"],
            last_succeeded=r["last_succeeded"],
            retained_bytes=int(r["retained_bytes"] or 0),
            retained=int(r["retained"] or 0),
            open=bool(r["open"]),
        )
        for r in await cur.fetchall()
    ]
