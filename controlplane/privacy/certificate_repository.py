"""All SQL of deletion certificates (control database): the purges that need one, what the registry knew
of the tenant (``tenant_tombstones``), its backups and retired databases, and ``deletion_certificates``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from controlplane.db import AsyncConn
from controlplane.privacy.models import DeletionCertificate

_CERTIFICATE = """
    SELECT id, tenant_id, tenant_slug, operation_id, purge_started_at, purged_at, issued_at, backups_destroyed_at,
           document
      FROM deletion_certificates
"""


def _certificate(row: Mapping[str, Any]) -> DeletionCertificate:
    return DeletionCertificate(**row)


async def purges_without_certificate(conn: AsyncConn, limit: int) -> list[dict[str, Any]]:
    """Succeeded purge operations that have no certificate yet, oldest first."""
    cur = await conn.execute(
        """
        SELECT op.id, op.tenant_id, op.tenant_slug, op.attempts, op.steps, op.started_at, op.finished_at
          FROM tenant_operations op
         WHERE op.kind = 'purge' AND op.state = 'succeeded'
           AND NOT EXISTS (SELECT 1 FROM deletion_certificates c WHERE c.operation_id = op.id)
         ORDER BY op.finished_at, op.id
         LIMIT %s
        """,
        (limit,),
    )
    return list(await cur.fetchall())


async def tombstone(conn: AsyncConn, tenant_id: uuid.UUID, until: datetime) -> dict[str, Any] | None:
    """The tenant as its registry row was when it was deleted (the last deletion up to ``until``)."""
    cur = await conn.execute(
        "SELECT slug, name, subscription_tier, server_id, server_name, database_name, role_name, created_at,"
        " deleted_at FROM tenant_tombstones WHERE tenant_id = %s AND deleted_at <= %s"
        " ORDER BY deleted_at DESC LIMIT 1",
        (tenant_id, until),
    )
    return await cur.fetchone()


async def remaining_backups(conn: AsyncConn, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    """The tenant's backups that still exist (or may: pending and running ones), oldest first."""
    cur = await conn.execute(
        "SELECT id, status, created_at, finished_at, expires_at, bytes, store FROM backups"
        " WHERE tenant_id = %s AND status IN ('pending', 'running', 'succeeded') AND deleted_at IS NULL"
        " ORDER BY created_at, id",
        (tenant_id,),
    )
    return list(await cur.fetchall())


async def last_backup_deletion(conn: AsyncConn, tenant_id: uuid.UUID) -> datetime | None:
    cur = await conn.execute("SELECT max(deleted_at) AS at FROM backups WHERE tenant_id = %s", (tenant_id,))
    row = await cur.fetchone()
    return row["at"] if row else None


async def retired_databases(conn: AsyncConn, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    """Databases a restore replaced for the tenant that are still kept (until ``drop_after``)."""
    cur = await conn.execute(
        "SELECT r.database_name, s.name AS server, r.retired_at, r.drop_after FROM retired_databases r"
        " LEFT JOIN db_servers s ON s.id = r.server_id WHERE r.tenant_id = %s ORDER BY r.retired_at",
        (tenant_id,),
    )
    return list(await cur.fetchall())


async def insert(
    conn: AsyncConn,
    *,
    certificate_id: uuid.UUID,
    operation: Mapping[str, Any],
    document: Mapping[str, Any],
    backups_destroyed_at: datetime | None,
) -> bool:
    """Store a certificate (once per purge operation: False if it exists)."""
    cur = await conn.execute(
        """
        INSERT INTO deletion_certificates
            (id, tenant_id, tenant_slug, operation_id, purge_started_at, purged_at, document, backups_destroyed_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (operation_id) DO NOTHING
        """,
        (
            certificate_id,
            operation["tenant_id"],
            operation["tenant_slug"],
            operation["id"],
            operation["started_at"],
            operation["finished_at"],
            Jsonb(dict(document)),
            backups_destroyed_at,
        ),
    )
    return cur.rowcount == 1


async def awaiting_backups(conn: AsyncConn) -> list[DeletionCertificate]:
    """Certificates whose tenant still had backups when last looked at."""
    cur = await conn.execute(_CERTIFICATE + " WHERE backups_destroyed_at IS NULL ORDER BY issued_at")
    return [_certificate(row) for row in await cur.fetchall()]


async def set_backups_destroyed(conn: AsyncConn, certificate_id: uuid.UUID, at: datetime) -> None:
    await conn.execute(
        "UPDATE deletion_certificates SET backups_destroyed_at = %s,"
        " document = document || jsonb_build_object('backups_destroyed_at', %s::text)"
        " WHERE id = %s AND backups_destroyed_at IS NULL",
        (at, at.isoformat(), certificate_id),
    )


async def for_tenant(
    conn: AsyncConn, *, tenant_id: uuid.UUID | None = None, slug: str | None = None
) -> list[DeletionCertificate]:
    """The certificates of a tenant (by id, or by the slug it had), newest first."""
    cur = await conn.execute(
        _CERTIFICATE + " WHERE tenant_id = %s OR tenant_slug = %s ORDER BY issued_at DESC, id", (tenant_id, slug)
    )
    return [_certificate(row) for row in await cur.fetchall()]


async def newest(conn: AsyncConn, limit: int) -> list[DeletionCertificate]:
    cur = await conn.execute(_CERTIFICATE + " ORDER BY issued_at DESC, id LIMIT %s", (limit,))
    return [_certificate(row) for row in await cur.fetchall()]
