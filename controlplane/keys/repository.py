"""All SQL of the master-key rotation: finding the secret columns, reading them in key order, swapping.

Every column of the control database's schema whose name ends in ``_encrypted`` holds values encrypted
with the master key (a rule for every table, present and future), plus the values inside jsonb listed in
``JSONB_SECRETS``. Tables and columns come from the catalog; identifiers are always quoted with
``sql.Identifier``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from psycopg import sql

from controlplane.db import AsyncConn
from controlplane.keys.models import SecretColumn

#: Values encrypted with the master key inside jsonb columns: (table, column, path).
JSONB_SECRETS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # The first admin's password hash, kept so the reconciler can finish an interrupted provisioning.
    ("tenant_operations", "params", ("admin", "password_hash")),
)

#: ``%`` and ``\_`` as SQL text: the query runs without parameters, so nothing is read as a placeholder.
_ENCRYPTED_COLUMNS = """
    SELECT c.table_name, c.column_name
      FROM information_schema.columns c
      JOIN information_schema.tables t ON (t.table_schema, t.table_name) = (c.table_schema, c.table_name)
     WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
       AND c.column_name LIKE '%\\_encrypted' AND c.data_type IN ('text', 'character varying')
     ORDER BY c.table_name, c.column_name
"""

_PRIMARY_KEY = """
    SELECT a.attname
      FROM pg_index i
      JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) ON true
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = to_regclass(quote_ident(current_schema()) || '.' || quote_ident(%s)) AND i.indisprimary
     ORDER BY k.position
"""

_JSONB_COLUMN = """
    SELECT 1 FROM information_schema.columns
     WHERE table_schema = current_schema() AND table_name = %s AND column_name = %s AND data_type = 'jsonb'
"""


class StoredValue(NamedTuple):
    """One encrypted value and the key of its row."""

    key: tuple[Any, ...]
    value: str


class Swap(NamedTuple):
    """Replace ``old`` by ``new`` in the row with ``key``, unless the row no longer holds ``old``."""

    key: tuple[Any, ...]
    old: str
    new: str


async def secret_columns(conn: AsyncConn) -> list[SecretColumn]:
    """Every ``*_encrypted`` column of the schema, then every known jsonb secret, with their row keys."""
    cur = await conn.execute(_ENCRYPTED_COLUMNS)
    places: list[tuple[str, str, tuple[str, ...]]] = [
        (str(r["table_name"]), str(r["column_name"]), ()) for r in await cur.fetchall()
    ]
    for table, column, path in JSONB_SECRETS:
        cur = await conn.execute(_JSONB_COLUMN, (table, column))
        if await cur.fetchone() is not None:
            places.append((table, column, path))
    found = []
    for table, column, path in places:
        cur = await conn.execute(_PRIMARY_KEY, (table,))
        key = tuple(str(r["attname"]) for r in await cur.fetchall()) or ("ctid",)
        found.append(SecretColumn(table=table, column=column, path=path, key=key))
    return found


def _value(column: SecretColumn) -> sql.Composable:
    if column.path:
        return sql.SQL("{} #>> {}").format(sql.Identifier(column.column), sql.Literal(list(column.path)))
    return sql.Identifier(column.column)


def _key(column: SecretColumn) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(k) for k in column.key))


def _key_params(column: SecretColumn) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() for _ in column.key))


async def read_batch(
    conn: AsyncConn, column: SecretColumn, after: tuple[Any, ...] | None, limit: int
) -> list[StoredValue]:
    """Up to ``limit`` non-NULL values of ``column`` in key order, after the row with key ``after``."""
    value = _value(column)
    where = sql.SQL("{} IS NOT NULL").format(value)
    params: list[Any] = []
    if after is not None:
        where = sql.SQL("{} AND {} > {}").format(where, _key(column), _key_params(column))
        params.extend(after)
    query = sql.SQL("SELECT {}, {} AS value FROM {} WHERE {} ORDER BY {} LIMIT {}").format(
        sql.SQL(", ").join(sql.Identifier(k) for k in column.key),
        value,
        sql.Identifier(column.table),
        where,
        sql.SQL(", ").join(sql.Identifier(k) for k in column.key),
        sql.Literal(limit),
    )
    cur = await conn.execute(query, params)
    return [StoredValue(tuple(row[k] for k in column.key), str(row["value"])) for row in await cur.fetchall()]


async def swap(conn: AsyncConn, column: SecretColumn, swaps: Sequence[Swap]) -> int:
    """Compare-and-swap each value; how many rows still held their old value and got the new one.

    Run it in a transaction. The change notifications of the registry's triggers stay silent for it
    (``cardvault.reencrypt``): the plaintext is the same, so no cache or pool needs to know.
    """
    await conn.execute("SET LOCAL cardvault.reencrypt = 'on'")
    target = sql.Identifier(column.column)
    new_value: sql.Composable
    if column.path:
        new_value = sql.SQL("jsonb_set({}, {}, to_jsonb({}::text))").format(
            target, sql.Literal(list(column.path)), sql.Placeholder()
        )
    else:
        new_value = sql.Placeholder()
    query = sql.SQL("UPDATE {} SET {} = {} WHERE {} = {} AND {} = {}").format(
        sql.Identifier(column.table),
        target,
        new_value,
        _key(column),
        _key_params(column),
        _value(column),
        sql.Placeholder(),
    )
    async with conn.cursor() as cur:
        await cur.executemany(query, [(s.new, *s.key, s.old) for s in swaps])
        return max(cur.rowcount, 0)
