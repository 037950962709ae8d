"""PostgreSQL connection helpers shared by every domain.

Management connections always carry ``connect_timeout``, ``statement_timeout`` and an
``application_name`` so a hung server never hangs the control plane and every session is visible in
``pg_stat_activity``.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import conninfo, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from controlplane.errors import ServerUnavailable
from controlplane.settings import DatabaseSettings

APPLICATION_NAME = "cardvault-controlplane"

AsyncConn = psycopg.AsyncConnection[dict[str, Any]]


def management_conninfo(dsn: str, db: DatabaseSettings, *, dbname: str | None = None, role: str = "") -> str:
    """``dsn`` with timeouts and application name set, optionally pointed at another database."""
    params: dict[str, Any] = {
        "connect_timeout": max(1, int(db.connect_timeout)),
        "application_name": f"{APPLICATION_NAME}{'-' + role if role else ''}",
        "options": f"-c statement_timeout={int(db.statement_timeout * 1000)}",
    }
    if dbname is not None:
        params["dbname"] = dbname
    return conninfo.make_conninfo(dsn, **params)


def with_database(dsn: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    return conninfo.make_conninfo(dsn, dbname=dbname)


def redact(dsn: str) -> str:
    """``dsn`` without its password, for logs and listings."""
    params = conninfo.conninfo_to_dict(dsn)
    for secret in ("password", "sslpassword"):
        if secret in params:
            params[secret] = "***"
    return conninfo.make_conninfo("", **params)


@asynccontextmanager
async def connect(
    dsn: str, db: DatabaseSettings, *, dbname: str | None = None, autocommit: bool = True, role: str = ""
) -> AsyncIterator[AsyncConn]:
    """A short-lived management connection; unreachable servers raise ``ServerUnavailable``."""
    info = management_conninfo(dsn, db, dbname=dbname, role=role)
    try:
        conn = await psycopg.AsyncConnection.connect(info, autocommit=autocommit, row_factory=dict_row)
    except psycopg.OperationalError as exc:
        raise ServerUnavailable(f"cannot connect to {redact(dsn)}: {str(exc).strip()}") from exc
    try:
        yield conn
    finally:
        await conn.close()


def control_pool(dsn: str, db: DatabaseSettings, *, min_size: int = 1) -> AsyncConnectionPool[AsyncConn]:
    """The control-database pool: autocommit, so every multi-statement write names its transaction.

    Created closed; open it in a lifespan and ``wait()``.
    """
    return AsyncConnectionPool(
        management_conninfo(dsn, db, role="control"),
        min_size=min_size,
        max_size=max(min_size, db.control_pool_size),
        open=False,
        timeout=db.connect_timeout + 5,
        kwargs={"row_factory": dict_row, "autocommit": True},
        name="control",
    )


def lock_key(name: str) -> int:
    """A stable 64-bit advisory-lock key for ``name`` (``cardvault:<what>``)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


async def try_advisory_lock(conn: AsyncConn, key: int, *, shared: bool = False) -> bool:
    """Session-level advisory lock on ``conn``; False when another session holds it."""
    fn = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    cur = await conn.execute(sql.SQL("SELECT {}(%s) AS ok").format(sql.Identifier(fn)), (key,))
    row = await cur.fetchone()
    return bool(row and row["ok"])


async def advisory_lock(conn: AsyncConn, key: int, *, shared: bool = False) -> None:
    fn = "pg_advisory_lock_shared" if shared else "pg_advisory_lock"
    await conn.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(fn)), (key,))


async def advisory_unlock(conn: AsyncConn, key: int, *, shared: bool = False) -> None:
    fn = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
    await conn.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(fn)), (key,))


async def commit_without_flush(conn: AsyncConn) -> None:
    """Inside a transaction: its commit does not wait for the WAL flush (``synchronous_commit = off``).

    Only for writes that the reconciler would redo if a crash lost them.
    """
    await conn.execute("SET LOCAL synchronous_commit = off")
