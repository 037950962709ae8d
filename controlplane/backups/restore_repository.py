"""All SQL of restores and verifications on the control database: ``retired_databases``,
``backup_verifications``, which backups may be restored or are due for a verification, and the restore
operations in the ledger. Callers own the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from psycopg import sql

from controlplane.backups.restore_models import RetiredDatabase, Verification
from controlplane.db import AsyncConn

_RETIRED = "SELECT server_id, database_name, tenant_id, reason, retired_at, drop_after FROM retired_databases"
_VERIFICATION = "SELECT id, backup_id, ok, detail, seconds, at FROM backup_verifications"
#: Longest detail kept in a verification row (pg_restore's stderr can be long; its end says what went wrong).
MAX_DETAIL = 4000


def _retired(row: Mapping[str, Any]) -> RetiredDatabase:
    return RetiredDatabase(
        server_id=row["server_id"],
        database_name=row["database_name"],
        tenant_id=row["tenant_id"],
        reason=row["reason"],
        retired_at=row["retired_at"],
        drop_after=row["drop_after"],
    )


def _verification(row: Mapping[str, Any]) -> Verification:
    return Verification(
        id=row["id"],
        backup_id=row["backup_id"],
        ok=row["ok"],
        detail=row["detail"],
        seconds=row["seconds"],
        at=row["at"],
    )


# -- retired databases -----------------------------------------------------------------------------------


async def retire(
    conn: AsyncConn, *, server_id: uuid.UUID, database_name: str, tenant_id: uuid.UUID, reason: str, keep_seconds: float
) -> None:
    """Record a replaced database, dropped after ``keep_seconds`` (idempotent: a rerun keeps the first row)."""
    await conn.execute(
        """
        INSERT INTO retired_databases (server_id, database_name, tenant_id, reason, drop_after)
        VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s))
        ON CONFLICT (server_id, database_name) DO NOTHING
        """,
        (server_id, database_name, tenant_id, reason, keep_seconds),
    )


async def retired_for(conn: AsyncConn, tenant_id: uuid.UUID) -> list[RetiredDatabase]:
    """The tenant's retired databases, newest first."""
    cur = await conn.execute(_RETIRED + " WHERE tenant_id = %s ORDER BY retired_at DESC, database_name", (tenant_id,))
    return [_retired(r) for r in await cur.fetchall()]


async def due_retired(conn: AsyncConn, limit: int = 100) -> list[RetiredDatabase]:
    """Retired databases whose rollback window has passed, or whose tenant was purged (no rollback is
    possible any more), oldest first."""
    cur = await conn.execute(
        _RETIRED + " r WHERE drop_after <= now() OR NOT EXISTS (SELECT FROM tenants t WHERE t.id = r.tenant_id)"
        " ORDER BY drop_after LIMIT %s",
        (limit,),
    )
    return [_retired(r) for r in await cur.fetchall()]


async def still_due(conn: AsyncConn, server_id: uuid.UUID, database_name: str) -> bool:
    """Whether the retired database is (still) due to be dropped (see ``due_retired``)."""
    cur = await conn.execute(
        "SELECT 1 FROM retired_databases r WHERE server_id = %s AND database_name = %s"
        " AND (drop_after <= now() OR NOT EXISTS (SELECT FROM tenants t WHERE t.id = r.tenant_id))",
        (server_id, database_name),
    )
    return await cur.fetchone() is not None


async def forget_retired(conn: AsyncConn, server_id: uuid.UUID, database_name: str) -> None:
    await conn.execute(
        "DELETE FROM retired_databases WHERE server_id = %s AND database_name = %s", (server_id, database_name)
    )


# -- verifications ---------------------------------------------------------------------------------------


async def record_verification(
    conn: AsyncConn, backup_id: uuid.UUID, *, ok: bool, detail: str, seconds: float
) -> Verification:
    cur = await conn.execute(
        "INSERT INTO backup_verifications (backup_id, ok, detail, seconds) VALUES (%s, %s, %s, %s)"
        " RETURNING id, backup_id, ok, detail, seconds, at",
        (backup_id, ok, detail[-MAX_DETAIL:], seconds),
    )
    row = await cur.fetchone()
    assert row is not None
    return _verification(row)


async def verifications(conn: AsyncConn, backup_id: uuid.UUID, limit: int = 20) -> list[Verification]:
    """The backup's verifications, newest first."""
    cur = await conn.execute(
        _VERIFICATION + " WHERE backup_id = %s ORDER BY at DESC, id DESC LIMIT %s", (backup_id, limit)
    )
    return [_verification(r) for r in await cur.fetchall()]


#: A backup that may be restored: succeeded, retained, and not found corrupted by its last verification.
_RESTORABLE = sql.SQL(
    """
    b.status = 'succeeded' AND b.deleted_at IS NULL AND (b.expires_at IS NULL OR b.expires_at > now())
    AND NOT COALESCE((SELECT NOT v.ok FROM backup_verifications v WHERE v.backup_id = b.id
                       ORDER BY v.at DESC, v.id DESC LIMIT 1), false)
    """
)


async def restorable(conn: AsyncConn, backup_id: uuid.UUID) -> bool:
    """Succeeded, retained, and not found corrupted by its last verification."""
    cur = await conn.execute(
        sql.SQL("SELECT {} AS ok FROM backups b WHERE b.id = %s").format(_RESTORABLE), (backup_id,)
    )
    row = await cur.fetchone()
    return bool(row and row["ok"])


async def latest_restorable(conn: AsyncConn, tenant_id: uuid.UUID) -> uuid.UUID | None:
    """The tenant's newest backup that may be restored."""
    query = sql.SQL(
        "SELECT b.id FROM backups b WHERE b.tenant_id = %s AND {}"
        " ORDER BY b.finished_at DESC NULLS LAST, b.created_at DESC LIMIT 1"
    ).format(_RESTORABLE)
    cur = await conn.execute(query, (tenant_id,))
    row = await cur.fetchone()
    return row["id"] if row else None


async def due_for_verification(conn: AsyncConn, limit: int, not_within_seconds: float) -> list[uuid.UUID]:
    """Up to ``limit`` retained succeeded backups not verified in the last ``not_within_seconds``: never
    verified ones first, then the longest unverified; newest backups first among equals."""
    cur = await conn.execute(
        """
        SELECT b.id FROM backups b
          LEFT JOIN LATERAL (SELECT max(v.at) AS at FROM backup_verifications v WHERE v.backup_id = b.id) last
               ON true
         WHERE b.status = 'succeeded' AND b.deleted_at IS NULL AND (b.expires_at IS NULL OR b.expires_at > now())
           AND (last.at IS NULL OR last.at < now() - make_interval(secs => %s))
         ORDER BY last.at NULLS FIRST, b.created_at DESC
         LIMIT %s
        """,
        (not_within_seconds, limit),
    )
    return [r["id"] for r in await cur.fetchall()]


# -- the tenant, for a restore ---------------------------------------------------------------------------


async def notify_tenant_changed(conn: AsyncConn, tenant_id: uuid.UUID) -> None:
    """Tell every replica the tenant's database changed under the same name (the registry row's trigger
    does not fire: nothing it watches changed), so each closes the tenant's pool and forgets its entry."""
    await conn.execute("SELECT pg_notify('cardvault_tenants', %s)", (str(tenant_id),))


async def last_known_tier(conn: AsyncConn, tenant_id: uuid.UUID) -> str | None:
    """The tier the ledger last recorded for a tenant (its provisioning, a tier change, a re-creation)."""
    cur = await conn.execute(
        "SELECT params ->> 'tier' AS tier FROM tenant_operations"
        " WHERE tenant_id = %s AND params ->> 'tier' IS NOT NULL ORDER BY id DESC LIMIT 1",
        (tenant_id,),
    )
    row = await cur.fetchone()
    return str(row["tier"]) if row else None


async def running_restores(conn: AsyncConn) -> list[tuple[int, uuid.UUID]]:
    """(operation id, tenant id) of every restore operation still ``running``."""
    cur = await conn.execute(
        "SELECT id, tenant_id FROM tenant_operations WHERE kind = 'restore' AND state = 'running' ORDER BY id"
    )
    return [(r["id"], r["tenant_id"]) for r in await cur.fetchall()]
