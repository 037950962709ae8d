"""All SQL on ``tenant_operations``, the ledger of lifecycle operations. Callers own the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from psycopg.types.json import Jsonb

from controlplane.db import AsyncConn
from controlplane.provisioning.models import Operation, OperationKind, OperationState


def _operation(row: Mapping[str, Any]) -> Operation:
    return Operation(
        id=row["id"],
        tenant_id=row["tenant_id"],
        tenant_slug=row["tenant_slug"],
        kind=OperationKind(row["kind"]),
        state=OperationState(row["state"]),
        step=row["step"],
        attempts=row["attempts"],
        error=row["error"],
        params=row["params"],
        steps=row["steps"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


_SELECT = """
    SELECT id, tenant_id, tenant_slug, kind, state, step, attempts, error, params, steps, started_at, finished_at
      FROM tenant_operations
"""


async def start(
    conn: AsyncConn, tenant_id: uuid.UUID, slug: str, kind: OperationKind, params: Mapping[str, Any] | None = None
) -> int:
    cur = await conn.execute(
        """
        INSERT INTO tenant_operations (tenant_id, tenant_slug, kind, state, params)
        VALUES (%s, %s, %s, 'running', %s) RETURNING id
        """,
        (tenant_id, slug, kind.value, Jsonb(dict(params or {}))),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["id"])


async def retry(conn: AsyncConn, op_id: int) -> None:
    """Count another attempt at an interrupted operation."""
    await conn.execute(
        "UPDATE tenant_operations SET attempts = attempts + 1, updated_at = now() WHERE id = %s", (op_id,)
    )


async def finish(
    conn: AsyncConn,
    op_id: int,
    state: OperationState,
    *,
    steps: list[dict[str, Any]],
    step: str | None = None,
    error: str | None = None,
) -> None:
    """Close the operation with its outcome and the timing of every step it ran."""
    await conn.execute(
        """
        UPDATE tenant_operations
           SET state = %s, step = %s, error = %s, steps = steps || %s, updated_at = now(), finished_at = now()
         WHERE id = %s
        """,
        (state.value, step, error, Jsonb(steps), op_id),
    )


async def record_finished(
    conn: AsyncConn,
    rows: Iterable[tuple[uuid.UUID, str, OperationKind, OperationState, str | None, dict[str, Any]]],
) -> None:
    """Insert already-finished operations in one batch (tenant migrations report this way)."""
    await conn.cursor().executemany(
        """
        INSERT INTO tenant_operations (tenant_id, tenant_slug, kind, state, error, params, finished_at)
        VALUES (%s, %s, %s, %s, %s, %s, now())
        """,
        [(tid, slug, kind.value, state.value, error, Jsonb(params)) for tid, slug, kind, state, error, params in rows],
    )


async def running(conn: AsyncConn) -> list[Operation]:
    cur = await conn.execute(_SELECT + " WHERE state = 'running' ORDER BY id")
    return [_operation(r) for r in await cur.fetchall()]


async def get(conn: AsyncConn, op_id: int) -> Operation | None:
    cur = await conn.execute(_SELECT + " WHERE id = %s", (op_id,))
    row = await cur.fetchone()
    return _operation(row) if row else None


async def for_tenant(conn: AsyncConn, tenant_id: uuid.UUID, limit: int = 50) -> list[Operation]:
    cur = await conn.execute(
        _SELECT + " WHERE tenant_id = %s ORDER BY id DESC LIMIT %s",
        (tenant_id, limit),
    )
    return [_operation(r) for r in await cur.fetchall()]


async def known_tenant_ids(conn: AsyncConn, tenant_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``tenant_ids`` this control plane ever operated on (so their leftovers are its own)."""
    cur = await conn.execute(
        "SELECT DISTINCT tenant_id FROM tenant_operations WHERE tenant_id = ANY(%s)", (list(tenant_ids),)
    )
    return {r["tenant_id"] for r in await cur.fetchall()}


async def spare_claims(conn: AsyncConn, names: Iterable[str]) -> set[str]:
    """Which of the spare ``names`` a provisioning claimed that is still running or whose tenant is registered
    (renamed already, or about to be, or to be renamed again by the reconciler): none of them is an orphan."""
    cur = await conn.execute(
        """
        SELECT params -> 'spare' ->> 'name' AS name FROM tenant_operations o
         WHERE kind = 'provision' AND params -> 'spare' ->> 'name' = ANY(%s)
           AND (state = 'running' OR EXISTS (SELECT FROM tenants t WHERE t.id = o.tenant_id))
        """,
        (list(names),),
    )
    return {r["name"] for r in await cur.fetchall()}


async def claimed_spare(conn: AsyncConn, tenant_id: uuid.UUID) -> str | None:
    """The spare the tenant's provisioning claimed, if it claimed one."""
    cur = await conn.execute(
        "SELECT params -> 'spare' ->> 'name' AS name FROM tenant_operations"
        " WHERE tenant_id = %s AND kind = 'provision' AND params ? 'spare' ORDER BY id DESC LIMIT 1",
        (tenant_id,),
    )
    row = await cur.fetchone()
    return str(row["name"]) if row else None
