"""SQL of a legacy import in the tenant's database (a management connection; the caller's transaction).

The import holds, for its whole transaction:

1. the ``usage_counters`` rows (``FOR UPDATE``, storage before cards before users: the order card
   deletes and image uploads take them in), so no create passes a quota meanwhile;
2. ``SHARE ROW EXCLUSIVE`` on the tables it writes: reads go on, writes wait until the import ends,
   so ids cannot be taken under it. Waiting for either gives up after ``LOCK_TIMEOUT``.

Rows go in with ``COPY`` (one statement per table; the counters' statement triggers run once each).
Identity sequences are moved past the imported ids last (``setval`` is not transactional).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from psycopg import sql

from controlplane.db import AsyncConn
from controlplane.importer.plan import (
    CARD_COLUMNS,
    CARD_IMAGE,
    MANUFACTURER_COLUMNS,
    PLAYER_COLUMNS,
    TEAM_COLUMNS,
    USER_COLUMNS,
    Plan,
    TableState,
    TargetState,
)
from controlplane.importer.uploads import StoredImage

#: The tables an import writes ids into, in the order their rows go in (referenced before referencing).
TABLES = ("users", "manufacturers", "teams", "players", "cards")
#: How long the import waits for the counters and the tables before it gives up (``lock_not_available``).
LOCK_TIMEOUT = "10s"
_FILE_COLUMNS = ("key", "content_type", "bytes", "sha256", "kind", "card_id")


async def prepare(conn: AsyncConn, *, statement_timeout: float) -> None:
    """Timeouts of this transaction: a big file may take long; a busy tenant must not stall it forever."""
    await conn.execute(
        "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)",
        (f"{int(statement_timeout * 1000)}ms", LOCK_TIMEOUT),
    )


async def lock(conn: AsyncConn) -> dict[str, int]:
    """Lock the usage counters, then the tables (see the module doc); the counters' values."""
    cur = await conn.execute(
        "SELECT name, value FROM public.usage_counters"
        " ORDER BY CASE name WHEN 'storage_bytes' THEN 0 WHEN 'cards' THEN 1 ELSE 2 END FOR UPDATE"
    )
    counters = {str(r["name"]): int(r["value"]) for r in await cur.fetchall()}
    await conn.execute("LOCK TABLE users, manufacturers, teams, players, cards, files IN SHARE ROW EXCLUSIVE MODE")
    return counters


async def target_state(conn: AsyncConn) -> TargetState:
    """What is in the tenant already: ids per table, emails, manufacturer names, teams, and ``now()``."""
    parts = [
        sql.SQL(
            "SELECT {name} AS t, (SELECT max(id) FROM {table}) AS max_id,"
            " pg_sequence_last_value(pg_get_serial_sequence({name}, 'id')::regclass) AS last_value"
        ).format(name=sql.Literal(table), table=sql.Identifier(table))
        for table in TABLES
    ]
    cur = await conn.execute(sql.SQL(" UNION ALL ").join(parts))
    tables = {str(r["t"]): TableState(r["max_id"], r["last_value"]) for r in await cur.fetchall()}
    cur = await conn.execute("SELECT lower(email) AS k, id FROM users")
    users = {str(r["k"]): int(r["id"]) for r in await cur.fetchall()}
    cur = await conn.execute("SELECT name, id FROM manufacturers")
    makers = {str(r["name"]): int(r["id"]) for r in await cur.fetchall()}
    cur = await conn.execute("SELECT name, league, id FROM teams")
    teams = {(str(r["name"]), r["league"]): int(r["id"]) for r in await cur.fetchall()}
    cur = await conn.execute("SELECT now() AS now")
    row = await cur.fetchone()
    assert row is not None
    return TargetState(tables=tables, users=users, manufacturers=makers, teams=teams, now=row["now"])


async def lowered(conn: AsyncConn, emails: Sequence[str]) -> list[str]:
    """``lower(email)`` of each, as this database computes it (its unique index on users does the same)."""
    if not emails:
        return []
    cur = await conn.execute(
        "SELECT lower(e) AS k FROM unnest(%s::text[]) WITH ORDINALITY AS t(e, n) ORDER BY n", (list(emails),)
    )
    return [str(r["k"]) for r in await cur.fetchall()]


async def _copy(conn: AsyncConn, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    query = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    async with conn.cursor() as cur, cur.copy(query) as copy:
        for row in rows:
            await copy.write_row(row)


async def write(conn: AsyncConn, plan: Plan, images: Sequence[StoredImage]) -> None:
    """Every row of the plan, with the ids it chose (no sequence is used); cards point at their image's key."""
    keys = {image.card_id: image.key for image in images}

    def cards() -> Iterable[list[Any]]:
        for row in plan.cards:
            row[CARD_IMAGE] = keys.get(row[0])
            yield row

    await _copy(conn, "users", USER_COLUMNS, plan.users)
    await _copy(conn, "manufacturers", MANUFACTURER_COLUMNS, plan.manufacturers)
    await _copy(conn, "teams", TEAM_COLUMNS, plan.teams)
    await _copy(conn, "players", PLAYER_COLUMNS, plan.players)
    await _copy(conn, "cards", CARD_COLUMNS, cards())


async def write_files(conn: AsyncConn, images: Sequence[StoredImage]) -> None:
    """The stored images' ``files`` rows (their ids come from the sequence: a dry run stops before)."""
    rows = ((i.key, i.content_type, i.size, i.sha256, "image", i.card_id) for i in images)
    await _copy(conn, "files", _FILE_COLUMNS, rows)


async def catch_up_sequences(conn: AsyncConn) -> None:
    """Move each identity sequence past the highest id of its table (never backwards), so the next row
    made through the API gets the next id. Not transactional: the import's last statement."""
    for table in TABLES:
        await conn.execute(
            sql.SQL(
                "SELECT setval(s.seq, greatest(m.max_id, coalesce(pg_sequence_last_value(s.seq), 0)))"
                " FROM (SELECT pg_get_serial_sequence({name}, 'id')::regclass AS seq) s,"
                " (SELECT max(id) AS max_id FROM {table}) m WHERE m.max_id IS NOT NULL"
            ).format(name=sql.Literal(table), table=sql.Identifier(table))
        )
