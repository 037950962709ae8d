"""The statements of health checks and maintenance: on a tenant's database or its server's catalog.

Each function runs on the connection it is given (a check connection as the tenant's role, the
server's admin connection, or a management connection to the tenant's database).
"""

from __future__ import annotations

from typing import Any

import psycopg

from controlplane.db import AsyncConn
from controlplane.maintenance.models import Maintenance


async def ping(conn: psycopg.AsyncConnection[Any]) -> None:
    """The trivial query of a health check."""
    await conn.execute("SELECT 1")


async def stat_statements_state(conn: AsyncConn) -> tuple[bool, bool]:
    """Whether ``pg_stat_statements`` is (installed, loaded) on the server ``conn`` is connected to."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_stat_statements') AS installed,"
        " 'pg_stat_statements' = ANY(regexp_split_to_array("
        "     current_setting('shared_preload_libraries'), '\\s*,\\s*')) AS loaded"
    )
    state = await cur.fetchone()
    assert state is not None
    return bool(state["installed"]), bool(state["loaded"])


async def install_stat_statements(conn: AsyncConn) -> None:
    await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


async def top_statements(conn: AsyncConn, database_name: str, limit: int) -> list[dict[str, Any]]:
    """The statements of ``database_name`` with the most total execution time (``pg_stat_statements``)."""
    cur = await conn.execute(
        "SELECT s.query, s.calls, s.total_exec_time AS total_ms, s.mean_exec_time AS mean_ms, s.rows"
        " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
        " WHERE d.datname = %s ORDER BY s.total_exec_time DESC LIMIT %s",
        (database_name, limit),
    )
    return list(await cur.fetchall())


async def run_maintenance(conn: AsyncConn, action: Maintenance) -> None:
    """``VACUUM (ANALYZE)`` or ``ANALYZE`` of the whole database, without a statement timeout."""
    await conn.execute("SET statement_timeout = 0")
    await conn.execute("VACUUM (ANALYZE)" if action == "vacuum" else "ANALYZE")
