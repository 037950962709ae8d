"""The SQL that reads a tenant database for an export: which tables and columns, and their rows as CSV
and JSON streams.

A ``Dataset`` is one table's exportable columns, optionally narrowed to one user's rows. Credentials and
what derives from them (password hashes, invitation and refresh-token hashes, session seeds, API-key
hashes) are never selected, whatever the table (``SECRET_COLUMNS`` and ``_SECRET_NAME``); internal tables
(the schema version, the quota counters) are not exported. Rows are streamed with ``COPY ... TO STDOUT``:
CSV as PostgreSQL writes it (with a header), JSON as one ``row_to_json`` object per row in an array.
All reads of one export run in one REPEATABLE READ transaction of the caller, so every table comes from
the same snapshot.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from psycopg import sql

from controlplane.db import AsyncConn
from controlplane.schemas.alembic_runner import TENANT_VERSION_TABLE

#: Tables of the tenant schema that are bookkeeping, not the tenant's data.
INTERNAL_TABLES = frozenset({TENANT_VERSION_TABLE, "alembic_version", "usage_counters"})
#: Columns never exported, per table.
SECRET_COLUMNS: dict[str, frozenset[str]] = {
    "users": frozenset({"password_hash", "invite_hash"}),
    "auth_sessions": frozenset({"refresh_hash", "refresh_seed", "previous_hash"}),
    "api_keys": frozenset({"key_hash"}),
}
#: Column names that look like a credential in any table (a table added later is covered too).
_SECRET_NAME = re.compile(r"password|secret|token|_hash$|_seed$|_encrypted$")
#: Bytes of CSV or JSON collected before they are handed on.
_CHUNK = 256 * 1024


class Dataset(msgspec.Struct, frozen=True, kw_only=True):
    """One table's rows as an export takes them."""

    table: str
    columns: tuple[str, ...]
    #: ``column = value`` narrowing the rows to one user's (None: every row).
    where: tuple[str, Any] | None = None

    def select(self) -> sql.Composed:
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in self.columns), sql.Identifier(self.table)
        )
        if self.where is not None:
            query = sql.SQL("{} WHERE {} = {}").format(query, sql.Identifier(self.where[0]), sql.Literal(self.where[1]))
        return sql.SQL("{} ORDER BY 1").format(query)


def exportable(table: str, column: str) -> bool:
    return column not in SECRET_COLUMNS.get(table, frozenset()) and not _SECRET_NAME.search(column)


async def tables(conn: AsyncConn) -> dict[str, tuple[str, ...]]:
    """Every table of the tenant schema with its exportable columns (in column order), internal ones left out."""
    cur = await conn.execute(
        """
        SELECT c.relname AS table, array_agg(a.attname::text ORDER BY a.attnum) AS columns
          FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
         GROUP BY c.relname
         ORDER BY c.relname
        """
    )
    out: dict[str, tuple[str, ...]] = {}
    for row in await cur.fetchall():
        if row["table"] in INTERNAL_TABLES:
            continue
        columns = tuple(c for c in row["columns"] if exportable(row["table"], c))
        if columns:
            out[row["table"]] = columns
    return out


async def tenant_datasets(conn: AsyncConn) -> list[Dataset]:
    """Every table, whole."""
    return [Dataset(table=t, columns=cols) for t, cols in (await tables(conn)).items()]


async def user_datasets(conn: AsyncConn, user_id: int) -> list[Dataset]:
    """One user's data: their row, their sessions and API keys, the audit entries they are the actor of,
    the cards they created (tables the schema does not have are left out)."""
    found = await tables(conn)
    wanted = (
        ("users", ("id", user_id)),
        ("auth_sessions", ("user_id", user_id)),
        ("api_keys", ("created_by", user_id)),
        ("audit_log", ("actor", f"user:{user_id}")),
        ("cards", ("created_by", user_id)),
    )
    return [Dataset(table=t, columns=found[t], where=w) for t, w in wanted if t in found and w[0] in found[t]]


async def schema_revision(conn: AsyncConn) -> str | None:
    cur = await conn.execute(sql.SQL("SELECT version_num FROM {}").format(sql.Identifier(TENANT_VERSION_TABLE)))
    row = await cur.fetchone()
    return str(row["version_num"]) if row else None


async def csv_rows(conn: AsyncConn, dataset: Dataset) -> AsyncIterator[bytes]:
    """The dataset as CSV with a header line."""
    statement = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(dataset.select())
    buffer = bytearray()
    async with conn.cursor().copy(statement) as copy:
        async for data in copy:
            buffer += data
            if len(buffer) >= _CHUNK:
                yield bytes(buffer)
                buffer.clear()
    yield bytes(buffer)


async def json_rows(conn: AsyncConn, dataset: Dataset, counts: dict[str, int]) -> AsyncIterator[bytes]:
    """The dataset as a JSON array of objects (one per row, one per line); its row count goes to ``counts``."""
    statement = sql.SQL("COPY (SELECT row_to_json(x)::text FROM ({}) x) TO STDOUT (FORMAT binary)").format(
        dataset.select()
    )
    buffer = bytearray(b"[")
    rows = 0
    async with conn.cursor().copy(statement) as copy:
        copy.set_types(["text"])
        async for (line,) in copy.rows():
            buffer += b"\n" if rows == 0 else b",\n"
            buffer += str(line).encode()
            rows += 1
            if len(buffer) >= _CHUNK:
                yield bytes(buffer)
                buffer.clear()
    buffer += b"\n]\n" if rows else b"]\n"
    counts[dataset.table] = rows
    yield bytes(buffer)


async def stored_files(conn: AsyncConn) -> list[dict[str, Any]]:
    """The ``files`` rows (key, sha256, bytes), in id order."""
    cur = await conn.execute("SELECT id, key, sha256, bytes FROM files ORDER BY id")
    return list(await cur.fetchall())
