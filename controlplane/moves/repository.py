"""All SQL on ``tenant_moves``, the record of every tenant move. Callers own the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from controlplane.db import AsyncConn
from controlplane.moves.models import Move, MoveState

_SELECT = """
    SELECT id, tenant_id, operation_id, from_server, to_server, method, state, freeze_ms, rows_verified, error,
           requested_by, started_at, finished_at
      FROM tenant_moves
"""


def _move(row: Mapping[str, Any]) -> Move:
    return Move(**{**row, "state": MoveState(row["state"])})


async def next_id(conn: AsyncConn) -> int:
    """The id the next move gets (taken first: the plan, written before the row, names it)."""
    cur = await conn.execute("SELECT nextval(pg_get_serial_sequence('tenant_moves', 'id')) AS id")
    row = await cur.fetchone()
    assert row is not None
    return int(row["id"])


async def insert(
    conn: AsyncConn,
    *,
    move_id: int,
    tenant_id: uuid.UUID,
    operation_id: int,
    source: tuple[uuid.UUID, str],
    target: tuple[uuid.UUID, str],
    requested_by: str | None,
) -> None:
    await conn.execute(
        """
        INSERT INTO tenant_moves (id, tenant_id, operation_id, from_server_id, from_server, to_server_id, to_server,
                                  method, requested_by)
        VALUES (%s, %s, %s, %s, %s, %s, %s, 'logical', %s)
        """,
        (move_id, tenant_id, operation_id, source[0], source[1], target[0], target[1], requested_by),
    )


async def record_cutover(conn: AsyncConn, move_id: int, *, freeze_ms: float, rows: int) -> None:
    await conn.execute(
        "UPDATE tenant_moves SET freeze_ms = %s, rows_verified = %s WHERE id = %s", (freeze_ms, rows, move_id)
    )


async def finish(conn: AsyncConn, move_id: int, state: MoveState, error: str | None = None) -> None:
    await conn.execute(
        "UPDATE tenant_moves SET state = %s, error = %s, finished_at = now() WHERE id = %s AND state = 'running'",
        (state.value, error, move_id),
    )


async def get(conn: AsyncConn, move_id: int) -> Move | None:
    cur = await conn.execute(_SELECT + " WHERE id = %s", (move_id,))
    row = await cur.fetchone()
    return _move(row) if row else None


async def for_tenant(conn: AsyncConn, tenant_id: uuid.UUID, limit: int = 50) -> list[Move]:
    cur = await conn.execute(_SELECT + " WHERE tenant_id = %s ORDER BY id DESC LIMIT %s", (tenant_id, limit))
    return [_move(r) for r in await cur.fetchall()]


async def running(conn: AsyncConn) -> list[tuple[int, uuid.UUID]]:
    """``(operation id, tenant id)`` of every move operation the ledger still has ``running``."""
    cur = await conn.execute(
        "SELECT id, tenant_id FROM tenant_operations WHERE kind = 'move' AND state = 'running' ORDER BY id"
    )
    return [(int(r["id"]), r["tenant_id"]) for r in await cur.fetchall()]


async def switch_server(conn: AsyncConn, tenant_id: uuid.UUID, server_id: uuid.UUID) -> None:
    """The registry's cutover: the tenant's database is on ``server_id`` now. The row's trigger notifies
    every replica (``cardvault_tenants``), which drops its cached entry and closes the tenant's pool."""
    await conn.execute("UPDATE tenants SET server_id = %s, updated_at = now() WHERE id = %s", (server_id, tenant_id))
