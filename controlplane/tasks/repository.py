"""The task queue's own SQL on the control database: what a tenant's usage task reads and its guard.

procrastinate's tables live in the ``procrastinate`` schema (migration 0023) and only procrastinate writes
them (``busy_locks`` and ``worker_count`` read them for ``migrate tenants --queue``). Callers own the
transaction.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, NamedTuple

from controlplane import db
from controlplane.db import AsyncConn
from controlplane.usage.collector import DIRECTORY
from controlplane.usage.models import BACKUPS_STORAGE_TYPE

#: The schema of procrastinate's tables, types and functions (its connections put it on their search path).
SCHEMA = "procrastinate"


class LastScan(NamedTuple):
    """What the tenant's last table scan found, and the bytes of its stored files then."""

    database_bytes: int
    scanned_at: datetime
    counters: dict[str, int]
    file_bytes: int


def usage_lock_key(tenant_id: uuid.UUID) -> int:
    """The transaction lock a tenant's usage collection writes under (one writer per tenant at a time)."""
    return db.lock_key(f"cardvault:usage:{tenant_id}")


async def lock_usage(conn: AsyncConn, tenant_id: uuid.UUID) -> None:
    """Wait for the tenant's usage lock, held until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (usage_lock_key(tenant_id),))


async def usage_recorded(conn: AsyncConn, tenant_id: uuid.UUID, cycle: datetime) -> bool:
    """Whether the tenant's collection of ``cycle`` already wrote its points (a retried task then stops)."""
    cur = await conn.execute(
        "SELECT 1 FROM tenant_usage_metrics WHERE tenant_id = %s AND metric_name = 'database_bytes'"
        " AND recorded_at = %s LIMIT 1",
        (tenant_id, cycle),
    )
    return await cur.fetchone() is not None


async def last_scan(conn: AsyncConn, tenant_id: uuid.UUID) -> LastScan | None:
    """The tenant's last scan (None if never scanned), with the bytes of its files as then measured."""
    cur = await conn.execute(
        """
        SELECT s.database_bytes, s.scanned_at, s.counters,
               (SELECT coalesce(sum(u.bytes_used), 0) FROM tenant_storage_usage u
                 WHERE u.tenant_id = s.tenant_id AND u.storage_type NOT IN (%s, %s)) AS file_bytes
          FROM tenant_usage_scans s
         WHERE s.tenant_id = %s
        """,
        (BACKUPS_STORAGE_TYPE, DIRECTORY, tenant_id),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    counters = {str(k): int(v) for k, v in (row["counters"] or {}).items()}
    return LastScan(int(row["database_bytes"]), row["scanned_at"], counters, int(row["file_bytes"]))


async def open_backups(conn: AsyncConn) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Every pending or running backup as (backup id, tenant id), oldest first."""
    cur = await conn.execute(
        "SELECT id, tenant_id FROM backups WHERE status IN ('pending', 'running') ORDER BY created_at, id"
    )
    return [(r["id"], r["tenant_id"]) for r in await cur.fetchall()]


async def round_results(conn: AsyncConn, cycle: datetime) -> tuple[set[uuid.UUID], list[datetime]]:
    """What the usage round of ``cycle`` has done so far: the tenants measured (a ``database_bytes`` point at
    ``cycle``), and the times of the scans made since it began."""
    cur = await conn.execute(
        "SELECT tenant_id FROM tenant_usage_metrics WHERE metric_name = 'database_bytes' AND recorded_at = %s",
        (cycle,),
    )
    measured = {r["tenant_id"] for r in await cur.fetchall()}
    cur = await conn.execute("SELECT scanned_at FROM tenant_usage_scans WHERE scanned_at >= %s", (cycle,))
    return measured, [r["scanned_at"] for r in await cur.fetchall()]


async def busy_locks(conn: AsyncConn, locks: list[str]) -> set[str]:
    """Which of ``locks`` have a job waiting or running (a queued run waits until none has)."""
    cur = await conn.execute(
        "SELECT DISTINCT lock FROM procrastinate.procrastinate_jobs"
        " WHERE lock = ANY(%s) AND status IN ('todo', 'doing')",
        (locks,),
    )
    return {r["lock"] for r in await cur.fetchall()}


async def worker_count(conn: AsyncConn) -> int:
    """Workers registered now (each heartbeats; a dead one is removed by the others' stalled checks)."""
    cur = await conn.execute("SELECT count(*) AS n FROM procrastinate.procrastinate_workers")
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def migration_results(conn: AsyncConn, tenant_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """The registry's last migration outcome of each tenant: ``schema_revision``, ``migration_error``,
    ``status``; a tenant gone is missing."""
    cur = await conn.execute(
        "SELECT id, schema_revision, migration_error, status FROM tenants WHERE id = ANY(%s)", (tenant_ids,)
    )
    return {r["id"]: r for r in await cur.fetchall()}
