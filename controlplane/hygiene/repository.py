"""All SQL of storage hygiene on the control database: the tenants to look at, ``quarantined_files`` and
``missing_files``. Callers own the transaction (the control pool is in autocommit)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import msgspec
from psycopg import sql

from controlplane.db import AsyncConn
from controlplane.hygiene.models import MissingFile, QuarantinedFile, Resolution

#: Tenant statuses whose database exists and may be compared with their storage area.
SCANNED_STATUSES = ("active", "suspended", "deleting")


class Target(NamedTuple):
    """A registered tenant: whether it has a database to compare with, and whether an operation runs."""

    tenant_id: uuid.UUID
    slug: str
    status: str
    server_id: uuid.UUID
    database_name: str
    #: A ``running`` row in the operations ledger.
    running: bool


class NewQuarantined(NamedTuple):
    key: str
    bytes: int


class NewMissing(NamedTuple):
    key: str
    card_id: int | None
    bytes: int


async def db_now(conn: AsyncConn) -> datetime:
    cur = await conn.execute("SELECT now() AS now")
    row = await cur.fetchone()
    assert row is not None
    now: datetime = row["now"]
    return now


async def targets(conn: AsyncConn, slug: str | None = None) -> list[Target]:
    """Every registered tenant (or the one with ``slug``), in slug order."""
    cur = await conn.execute(
        """
        SELECT t.id, t.slug, t.status, t.server_id, t.database_name,
               EXISTS (SELECT 1 FROM tenant_operations o WHERE o.tenant_id = t.id AND o.state = 'running') AS running
          FROM tenants t
         WHERE %(slug)s::text IS NULL OR t.slug = %(slug)s
         ORDER BY t.slug
        """,
        {"slug": slug},
    )
    return [
        Target(r["id"], r["slug"], r["status"], r["server_id"], r["database_name"], r["running"])
        for r in await cur.fetchall()
    ]


async def held_advisory_locks(conn: AsyncConn) -> set[int]:
    """Keys of the 64-bit advisory locks held on the control database right now."""
    cur = await conn.execute(
        """
        SELECT (l.classid::bigint << 32) | l.objid::bigint AS key
          FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """
    )
    return {int(r["key"]) for r in await cur.fetchall()}


async def unknown_areas(conn: AsyncConn, tenant_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Those of ``tenant_ids`` with no registry row and no running operation: areas left behind."""
    cur = await conn.execute(
        """
        SELECT v.id FROM unnest(%s::uuid[]) AS v (id)
         WHERE NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = v.id)
           AND NOT EXISTS (SELECT 1 FROM tenant_operations o WHERE o.tenant_id = v.id AND o.state = 'running')
        """,
        (list(tenant_ids),),
    )
    return [r["id"] for r in await cur.fetchall()]


# -- quarantined_files ------------------------------------------------------------------------------

_QUARANTINED = sql.SQL(
    "id, tenant_id, tenant_slug, key, bytes, reason, found_at, delete_after, deleted_at, restored_at"
)
#: An entry still in quarantine.
_OPEN = sql.SQL("deleted_at IS NULL AND restored_at IS NULL")


def _quarantined(rows: Iterable[dict[str, Any]]) -> list[QuarantinedFile]:
    return [msgspec.convert(r, QuarantinedFile) for r in rows]


async def open_quarantined(conn: AsyncConn, tenant_id: uuid.UUID) -> list[QuarantinedFile]:
    query = sql.SQL("SELECT {} FROM quarantined_files WHERE tenant_id = %s AND {} ORDER BY id")
    cur = await conn.execute(query.format(_QUARANTINED, _OPEN), (tenant_id,))
    return _quarantined(await cur.fetchall())


async def gone_tenants_quarantined(conn: AsyncConn) -> list[QuarantinedFile]:
    """Open entries of tenants the registry no longer knows (nothing can claim them back but a restore
    of the tenant, which makes it known again)."""
    query = sql.SQL(
        "SELECT {} FROM quarantined_files q"
        " WHERE {} AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = q.tenant_id) ORDER BY id"
    )
    cur = await conn.execute(query.format(_QUARANTINED, _OPEN))
    return _quarantined(await cur.fetchall())


async def add_quarantined(
    conn: AsyncConn,
    tenant_id: uuid.UUID,
    slug: str | None,
    reason: str,
    files: Sequence[NewQuarantined],
    grace: timedelta,
) -> int:
    """Record objects just moved to quarantine (an entry already open for a key is kept); the number new."""
    if not files:
        return 0
    cur = await conn.execute(
        """
        INSERT INTO quarantined_files (tenant_id, tenant_slug, key, bytes, reason, delete_after)
        SELECT %s, %s, v.key, v.bytes, %s, now() + %s
          FROM unnest(%s::text[], %s::bigint[]) AS v (key, bytes)
        ON CONFLICT (tenant_id, key) WHERE deleted_at IS NULL AND restored_at IS NULL DO NOTHING
        """,
        (tenant_id, slug, reason, grace, [f.key for f in files], [f.bytes for f in files]),
    )
    return cur.rowcount


async def close_quarantined(conn: AsyncConn, ids: Sequence[int], *, restored: bool) -> None:
    """Mark entries restored (their row came back) or deleted (the grace period ended)."""
    if ids:
        column = sql.Identifier("restored_at" if restored else "deleted_at")
        query = sql.SQL("UPDATE quarantined_files SET {} = now() WHERE id = ANY(%s) AND {}")
        await conn.execute(query.format(column, _OPEN), (list(ids),))


# -- missing_files ----------------------------------------------------------------------------------

_MISSING = sql.SQL(
    "id, tenant_id, tenant_slug, key, card_id, bytes, found_at, last_seen_at, resolve_after, resolved_at, resolution"
)


def _missing(rows: Iterable[dict[str, Any]]) -> list[MissingFile]:
    return [msgspec.convert(r, MissingFile) for r in rows]


async def open_missing(conn: AsyncConn, tenant_id: uuid.UUID) -> list[MissingFile]:
    query = sql.SQL("SELECT {} FROM missing_files WHERE tenant_id = %s AND resolved_at IS NULL ORDER BY id")
    cur = await conn.execute(query.format(_MISSING), (tenant_id,))
    return _missing(await cur.fetchall())


async def add_missing(
    conn: AsyncConn, tenant_id: uuid.UUID, slug: str, files: Sequence[NewMissing], grace: timedelta
) -> int:
    """Record rows found without their object (an open finding for a key is kept); the number new."""
    if not files:
        return 0
    cur = await conn.execute(
        """
        INSERT INTO missing_files (tenant_id, tenant_slug, key, card_id, bytes, resolve_after)
        SELECT %s, %s, v.key, v.card_id, v.bytes, now() + %s
          FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS v (key, card_id, bytes)
        ON CONFLICT (tenant_id, key) WHERE resolved_at IS NULL DO NOTHING
        """,
        (tenant_id, slug, grace, [f.key for f in files], [f.card_id for f in files], [f.bytes for f in files]),
    )
    return cur.rowcount


async def seen_missing(conn: AsyncConn, ids: Sequence[int]) -> None:
    if ids:
        await conn.execute("UPDATE missing_files SET last_seen_at = now() WHERE id = ANY(%s)", (list(ids),))


async def resolve_missing(conn: AsyncConn, ids: Sequence[int], resolution: Resolution) -> None:
    if ids:
        await conn.execute(
            "UPDATE missing_files SET resolved_at = now(), resolution = %s WHERE id = ANY(%s) AND resolved_at IS NULL",
            (resolution, list(ids)),
        )


# -- reports ----------------------------------------------------------------------------------------


async def totals(conn: AsyncConn) -> tuple[int, int, int]:
    """Open entries fleet-wide: (files in quarantine, their bytes, rows with no object)."""
    cur = await conn.execute(
        """
        SELECT count(*) AS files, coalesce(sum(bytes), 0) AS bytes,
               (SELECT count(*) FROM missing_files WHERE resolved_at IS NULL) AS missing
          FROM quarantined_files WHERE deleted_at IS NULL AND restored_at IS NULL
        """
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["files"]), int(row["bytes"]), int(row["missing"])


async def list_open(
    conn: AsyncConn, tenant_id: uuid.UUID | None, limit: int
) -> tuple[list[QuarantinedFile], list[MissingFile]]:
    """Open findings (of one tenant, or all), newest first, at most ``limit`` of each kind."""
    params = {"tenant": tenant_id, "limit": limit}
    of_tenant = sql.SQL("(%(tenant)s::uuid IS NULL OR tenant_id = %(tenant)s)")
    query = sql.SQL("SELECT {} FROM quarantined_files WHERE {} AND {} ORDER BY id DESC LIMIT %(limit)s")
    cur = await conn.execute(query.format(_QUARANTINED, _OPEN, of_tenant), params)
    quarantined = _quarantined(await cur.fetchall())
    query = sql.SQL("SELECT {} FROM missing_files WHERE resolved_at IS NULL AND {} ORDER BY id DESC LIMIT %(limit)s")
    cur = await conn.execute(query.format(_MISSING, of_tenant), params)
    return quarantined, _missing(await cur.fetchall())
