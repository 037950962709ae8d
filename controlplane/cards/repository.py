"""All SQL of the CardVault tenant API: cards, players, teams, manufacturers, files, usage counters.

Runs on the request's connection to the tenant's own database; the caller owns the transaction.
Each table is described once (``Table``): which columns may be written, sorted on, filtered on and
searched. Dynamic SQL is composed with ``psycopg.sql`` from those whitelists only; every value is a
query parameter. Database errors (constraint violations) propagate for the service to translate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any

import msgspec
from psycopg import sql

from controlplane.cards.models import NO_NUL
from controlplane.db import AsyncConn
from controlplane.paging import MAX_ID

Row = dict[str, Any]

_CursorDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
_CursorInt = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
_CursorText = Annotated[str, msgspec.Meta(max_length=1000, pattern=NO_NUL)]
_CursorId = Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]


@dataclasses.dataclass(frozen=True)
class SortKey:
    """A column rows may be ordered by; ``cursor_type`` validates its value when read from a cursor."""

    column: str
    cursor_type: Any
    nullable: bool = False


_ID = SortKey("id", _CursorId)
_CREATED = SortKey("created_at", _CursorDatetime)
_UPDATED = SortKey("updated_at", _CursorDatetime)


@dataclasses.dataclass(frozen=True)
class Table:
    """What the API may do with one table; every identifier in dynamic SQL comes from here."""

    name: str
    #: Singular noun for messages ("card").
    resource: str
    writable: frozenset[str]
    sort_keys: Mapping[str, SortKey]
    filterable: frozenset[str]
    searchable: tuple[str, ...]
    #: Foreign-key constraint -> the field that names the missing row.
    references: Mapping[str, str]
    #: Unique constraint -> what must be unique, for the 409 message.
    unique: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: Output columns, over the table (or written rows) aliased ``r``.
    projection: sql.Composable = dataclasses.field(default_factory=lambda: sql.SQL("r.*"))
    joins: sql.Composable = dataclasses.field(default_factory=lambda: sql.SQL(""))

    def sort_key(self, name: str) -> SortKey:
        return self.sort_keys[name]


MANUFACTURERS = Table(
    name="manufacturers",
    resource="manufacturer",
    writable=frozenset({"name"}),
    sort_keys={"name": SortKey("name", _CursorText), "created_at": _CREATED, "updated_at": _UPDATED, "id": _ID},
    filterable=frozenset(),
    searchable=("name",),
    references={},
    unique={"manufacturers_name_key": "name"},
)

TEAMS = Table(
    name="teams",
    resource="team",
    writable=frozenset({"name", "city", "league"}),
    sort_keys={"name": SortKey("name", _CursorText), "created_at": _CREATED, "updated_at": _UPDATED, "id": _ID},
    filterable=frozenset({"league"}),
    searchable=("name", "city"),
    references={},
    unique={"teams_name_league_key": "name and league"},
)

PLAYERS = Table(
    name="players",
    resource="player",
    writable=frozenset({"first_name", "last_name", "team_id", "position"}),
    sort_keys={
        "last_name": SortKey("last_name", _CursorText),
        "created_at": _CREATED,
        "updated_at": _UPDATED,
        "id": _ID,
    },
    filterable=frozenset({"team_id"}),
    searchable=("first_name", "last_name"),
    references={"players_team_id_fkey": "team_id"},
)

CARDS = Table(
    name="cards",
    resource="card",
    writable=frozenset(
        {"cardnumber", "player_id", "team_id", "manufacturer_id", "year", "condition", "notes", "created_by"}
    ),
    sort_keys={
        "created_at": _CREATED,
        "updated_at": _UPDATED,
        "year": SortKey("year", _CursorInt, nullable=True),
        "cardnumber": SortKey("cardnumber", _CursorText),
        "id": _ID,
    },
    filterable=frozenset({"player_id", "team_id", "manufacturer_id", "condition", "year"}),
    searchable=("cardnumber", "notes"),
    references={
        "cards_player_id_fkey": "player_id",
        "cards_team_id_fkey": "team_id",
        "cards_manufacturer_id_fkey": "manufacturer_id",
        "cards_created_by_fkey": "created_by",
    },
    projection=sql.SQL(
        """r.id, r.cardnumber, r.player_id, r.team_id, r.manufacturer_id, r.year, r.condition, r.notes,
           r.created_by, r.created_at, r.updated_at,
           CASE WHEN f.id IS NULL THEN NULL
                ELSE json_build_object('content_type', f.content_type, 'bytes', f.bytes, 'sha256', f.sha256)
           END AS image"""
    ),
    joins=sql.SQL("LEFT JOIN files f ON f.key = r.image"),
)

#: Foreign key -> the table whose rows hold it (to say what still uses a row that cannot be deleted).
REFERENCING_TABLE = {constraint: table.name for table in (PLAYERS, CARDS) for constraint in table.references}


def _col(column: str) -> sql.Identifier:
    return sql.Identifier("r", column)


def _checked(allowed: Iterable[str], columns: Iterable[str]) -> list[str]:
    allowed = set(allowed)
    names = list(columns)
    if unknown := [c for c in names if c not in allowed]:
        raise ValueError(f"columns not allowed here: {unknown}")  # a programming error, never user input
    return names


def _select(table: Table) -> sql.Composed:
    return sql.SQL("SELECT {} FROM {} r {}").format(table.projection, sql.Identifier(table.name), table.joins)


def _returning(table: Table, write: sql.Composable) -> sql.Composed:
    """``write ... RETURNING *`` projected like a read, so writes answer with the same shape."""
    return sql.SQL("WITH r AS ({} RETURNING *) SELECT {} FROM r {}").format(write, table.projection, table.joins)


def _by_id(table: Table) -> sql.Composed:
    return sql.SQL("{} WHERE r.id = %s").format(_select(table))


#: ``_by_id`` of the API's tables, rendered once: composing it again for every read was a few percent of
#: a hot read's CPU. (Identifiers need no connection to be quoted; the databases are all UTF-8.)
_BY_ID = {t.name: (t, _by_id(t).as_bytes(None)) for t in (MANUFACTURERS, TEAMS, PLAYERS, CARDS)}


async def get(conn: AsyncConn, table: Table, row_id: int) -> Row | None:
    rendered = _BY_ID.get(table.name)
    query = rendered[1] if rendered is not None and rendered[0] is table else _by_id(table)
    cur = await conn.execute(query, (row_id,))
    return await cur.fetchone()


async def insert(conn: AsyncConn, table: Table, values: Mapping[str, Any]) -> Row:
    columns = _checked(table.writable, values)
    write = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table.name),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )
    cur = await conn.execute(_returning(table, write), [values[c] for c in columns])
    row = await cur.fetchone()
    assert row is not None
    return row


async def update(conn: AsyncConn, table: Table, row_id: int, values: Mapping[str, Any]) -> Row | None:
    """Set ``values`` on the row (an empty change still counts as a write and stamps ``updated_at``)."""
    columns = _checked(table.writable, values)
    assignments: list[sql.Composable] = [sql.SQL("{} = %s").format(sql.Identifier(c)) for c in columns]
    write = sql.SQL("UPDATE {} SET {} WHERE id = %s").format(
        sql.Identifier(table.name), sql.SQL(", ").join(assignments or [sql.SQL("updated_at = now()")])
    )
    cur = await conn.execute(_returning(table, write), [*(values[c] for c in columns), row_id])
    return await cur.fetchone()


async def delete(conn: AsyncConn, table: Table, row_id: int) -> bool:
    cur = await conn.execute(
        sql.SQL("DELETE FROM {} WHERE id = %s RETURNING id").format(sql.Identifier(table.name)), (row_id,)
    )
    return await cur.fetchone() is not None


def _after(key: SortKey, descending: bool, value: Any, last_id: int) -> tuple[sql.Composable, list[Any]]:
    """Rows strictly after (``value``, ``last_id``) in ``ORDER BY key, id`` (both the same direction).

    Ascending puts NULLs last and descending first (PostgreSQL's defaults, so the B-tree index serves
    both directions); a nullable key therefore needs the NULL band handled on its own.
    """
    rid, op = _col("id"), sql.SQL("<" if descending else ">")
    if key.column == "id":
        return sql.SQL("{} {} %s").format(rid, op), [last_id]
    col = _col(key.column)
    if not key.nullable or (value is not None and descending):
        return sql.SQL("({}, {}) {} (%s, %s)").format(col, rid, op), [value, last_id]
    if value is None and not descending:
        return sql.SQL("({} IS NULL AND {} > %s)").format(col, rid), [last_id]
    if value is None:  # descending: the rest of the NULL band, then every non-NULL row
        return sql.SQL("(({} IS NULL AND {} < %s) OR {} IS NOT NULL)").format(col, rid, col), [last_id]
    return sql.SQL("(({}, {}) > (%s, %s) OR {} IS NULL)").format(col, rid, col), [value, last_id]


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def page_query(
    table: Table,
    *,
    sort: str,
    descending: bool,
    after: tuple[Any, int] | None,
    limit: int,
    q: str | None = None,
    equals: Mapping[str, Any] | None = None,
    at_least: Mapping[str, Any] | None = None,
    at_most: Mapping[str, Any] | None = None,
) -> tuple[sql.Composed, list[Any]]:
    """The query of ``select_page`` and its parameters."""
    key = table.sort_key(sort)
    where: list[sql.Composable] = []
    params: list[Any] = []
    for op, filters in (("=", equals), (">=", at_least), ("<=", at_most)):
        for column in _checked(table.filterable, (filters or {}).keys()):
            where.append(sql.SQL("{} {} %s").format(_col(column), sql.SQL(op)))
            params.append((filters or {})[column])
    if q:
        # One ILIKE per column, ORed: each can use its own trigram index (cards: tenant_schema 0004).
        pattern = f"%{_escape_like(q)}%"
        where.append(
            sql.SQL("({})").format(
                sql.SQL(" OR ").join(sql.SQL("{} ILIKE %s").format(_col(c)) for c in table.searchable)
            )
        )
        params.extend(pattern for _ in table.searchable)
    if after is not None:
        condition, values = _after(key, descending, *after)
        where.append(condition)
        params.extend(values)
    direction = sql.SQL("DESC NULLS FIRST" if descending else "ASC NULLS LAST")
    query = sql.SQL("{} {} ORDER BY {} {}, {} {} LIMIT %s").format(
        _select(table),
        sql.SQL("WHERE {}").format(sql.SQL(" AND ").join(where)) if where else sql.SQL(""),
        _col(key.column),
        direction,
        _col("id"),
        direction,
    )
    return query, [*params, limit]


async def select_page(
    conn: AsyncConn,
    table: Table,
    *,
    sort: str,
    descending: bool,
    after: tuple[Any, int] | None,
    limit: int,
    q: str | None = None,
    equals: Mapping[str, Any] | None = None,
    at_least: Mapping[str, Any] | None = None,
    at_most: Mapping[str, Any] | None = None,
) -> list[Row]:
    """Up to ``limit`` rows matching every filter, in ``sort`` order (ties by id), after the cursor."""
    query, params = page_query(
        table,
        sort=sort,
        descending=descending,
        after=after,
        limit=limit,
        q=q,
        equals=equals,
        at_least=at_least,
        at_most=at_most,
    )
    # A search is never a server-side prepared statement: a generic plan cannot see the term, so it
    # would walk the sort index filtering every row instead of using the trigram indexes for a rare
    # term. Unprepared, each search is planned for its own term.
    cur = await conn.execute(query, params, prepare=False if q else None)
    return await cur.fetchall()


# -- cards and their files -----------------------------------------------------------------------


async def lock_card(conn: AsyncConn, card_id: int) -> Row | None:
    """Lock the card row; with its current image (``key``, ``bytes``) when it has one."""
    cur = await conn.execute(
        """
        SELECT c.id, c.created_by, f.key, f.bytes
        FROM cards c LEFT JOIN files f ON f.key = c.image
        WHERE c.id = %s
        FOR UPDATE OF c
        """,
        (card_id,),
    )
    return await cur.fetchone()


async def card_image(conn: AsyncConn, card_id: int) -> Row | None:
    """The card's image file (``key``, ``content_type``, ``bytes``, ``sha256``); None if it has none."""
    cur = await conn.execute(
        """
        SELECT f.key, f.content_type, f.bytes, f.sha256
        FROM cards c JOIN files f ON f.key = c.image
        WHERE c.id = %s
        """,
        (card_id,),
    )
    return await cur.fetchone()


async def insert_file(
    conn: AsyncConn, *, key: str, content_type: str, size: int, sha256: str, card_id: int, kind: str = "image"
) -> None:
    await conn.execute(
        "INSERT INTO files (key, content_type, bytes, sha256, kind, card_id) VALUES (%s, %s, %s, %s, %s, %s)",
        (key, content_type, size, sha256, kind, card_id),
    )


async def delete_file(conn: AsyncConn, key: str) -> None:
    await conn.execute("DELETE FROM files WHERE key = %s", (key,))


async def delete_card_files(conn: AsyncConn, card_id: int) -> list[str]:
    """Forget every file of the card; the keys of the objects to remove from storage."""
    cur = await conn.execute("DELETE FROM files WHERE card_id = %s RETURNING key", (card_id,))
    return [r["key"] for r in await cur.fetchall()]


async def set_card_image(conn: AsyncConn, card_id: int, key: str | None) -> None:
    """Point the card at its image file (or at none); stamps ``updated_at`` like any other write."""
    await conn.execute("UPDATE cards SET image = %s WHERE id = %s", (key, card_id))


# -- usage counters ------------------------------------------------------------------------------


async def lock_counter(conn: AsyncConn, name: str) -> int:
    """The counter's value, locked until the transaction ends: concurrent creates queue here."""
    cur = await conn.execute("SELECT value FROM public.usage_counters WHERE name = %s FOR UPDATE", (name,))
    row = await cur.fetchone()
    if row is None:
        raise LookupError(f"usage counter {name!r} is missing (tenant schema older than 0002?)")
    return int(row["value"])


async def counters(conn: AsyncConn) -> dict[str, int]:
    """Every usage counter (cards, users, storage_bytes) as it stands."""
    cur = await conn.execute("SELECT name, value FROM public.usage_counters")
    return {r["name"]: int(r["value"]) for r in await cur.fetchall()}
