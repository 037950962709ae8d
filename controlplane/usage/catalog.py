"""What the usage collectors read from PostgreSQL's catalogs: database sizes on a server, its client
connections, and one tenant database's tables, usage counters and files (never ``COUNT(*)``).

The statements are module constants (the collection benchmark times them one by one).
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from controlplane.db import AsyncConn
from controlplane.usage.models import StorageUsage, TableUsage

#: ``files.kind`` values; each is reported (zero when absent) so a kind emptied since the last scan drops to 0.
FILE_KINDS = ("image", "attachment", "export")

SIZES = "SELECT datname, pg_database_size(oid) AS bytes FROM pg_database WHERE datname = ANY(%s)"
SIZE = "SELECT pg_database_size(%s) AS bytes"
# Client sessions only: background workers do not take max_connections slots.
SERVER = """
    SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS connections,
           current_setting('max_connections')::int AS max_connections
"""
TABLES = """
    SELECT c.relname AS table_name, pg_total_relation_size(c.oid) AS total_bytes,
           c.reltuples::bigint AS row_estimate
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'public' AND c.relkind = 'r'
     ORDER BY c.relname
"""
OWN_SIZE = "SELECT pg_database_size(current_database()) AS bytes"
COUNTERS = "SELECT name, value FROM public.usage_counters"
FILES = "SELECT kind, count(*) AS files, coalesce(sum(bytes), 0) AS bytes FROM public.files GROUP BY kind"


async def server_connections(conn: AsyncConn) -> tuple[int, int]:
    """The server's client connections and its ``max_connections``."""
    cur = await conn.execute(SERVER)
    row = await cur.fetchone()
    assert row is not None
    return int(row["connections"]), int(row["max_connections"])


async def read_database_sizes(conn: AsyncConn, names: Sequence[str]) -> dict[str, int]:
    """``pg_database_size`` of each database in ``names`` that exists, in one query.

    Should a database be dropped while the query runs, it is retried database by database so the
    others are still measured.
    """
    if not names:
        return {}
    try:
        cur = await conn.execute(SIZES, (list(names),))
        return {row["datname"]: int(row["bytes"]) for row in await cur.fetchall()}
    except psycopg.errors.InvalidCatalogName:
        pass
    sizes: dict[str, int] = {}
    for name in names:
        try:
            cur = await conn.execute(SIZE, (name,))
        except psycopg.errors.InvalidCatalogName:
            continue
        row = await cur.fetchone()
        if row is not None:
            sizes[name] = int(row["bytes"])
    return sizes


async def scan_database(
    conn: AsyncConn,
) -> tuple[int, tuple[TableUsage, ...], dict[str, int], dict[str, StorageUsage]]:
    """Size, tables, usage counters and files by kind of the database ``conn`` is connected to.

    The size is read first: a write after it changes the size again, so the next cycle rescans.
    """
    cur = await conn.execute(OWN_SIZE)
    row = await cur.fetchone()
    assert row is not None
    size = int(row["bytes"])
    cur = await conn.execute(TABLES)
    tables = tuple(
        TableUsage(table=r["table_name"], total_bytes=int(r["total_bytes"]), row_estimate=int(r["row_estimate"]))
        for r in await cur.fetchall()
    )
    try:
        cur = await conn.execute(COUNTERS)
        counters = {r["name"]: int(r["value"]) for r in await cur.fetchall()}
    except psycopg.errors.UndefinedTable:  # a tenant schema older than usage_counters
        counters = {}
    storage = {kind: StorageUsage(bytes=0, files=0) for kind in FILE_KINDS}
    cur = await conn.execute(FILES)
    for r in await cur.fetchall():
        storage[r["kind"]] = StorageUsage(bytes=int(r["bytes"]), files=int(r["files"]))
    return size, tables, counters, storage
