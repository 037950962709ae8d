"""All SQL a move runs on the tenant servers: logical replication (publication on the source database,
subscription on the target's copy), the catch-up checks, sequences, and the cleanup of every object a move
makes.

Every identifier goes through ``psycopg.sql.Identifier``. Callers pass autocommit management connections:
to a server's maintenance database (``admin``) or to one database (``source_db`` / ``target_db``).
"""

from __future__ import annotations

import asyncio

from psycopg import sql

from controlplane.db import AsyncConn

#: Seconds between two looks at a subscription's progress (initial sync, catch-up).
POLL_INTERVAL = 0.02


async def wal_level(conn: AsyncConn) -> str:
    cur = await conn.execute("SELECT current_setting('wal_level') AS level")
    row = await cur.fetchone()
    assert row is not None
    return str(row["level"])


async def database_size(conn: AsyncConn, name: str) -> int:
    cur = await conn.execute("SELECT pg_database_size(%s) AS size", (name,))
    row = await cur.fetchone()
    return int(row["size"]) if row else 0


# -- source: publication, WAL position, slots --------------------------------------------------------------


async def create_publication(source_db: AsyncConn, name: str) -> None:
    """Every table of the database, now and later (idempotent: a resumed move finds it made)."""
    cur = await source_db.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,))
    if await cur.fetchone() is None:
        await source_db.execute(sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES").format(sql.Identifier(name)))


async def drop_publication(source_db: AsyncConn, name: str) -> None:
    await source_db.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))


async def flushed_lsn(admin: AsyncConn) -> str:
    """A WAL position every commit made before this call is below, once it is on disk: a transactional
    logical message committed with ``synchronous_commit = on`` flushes the WAL up to it (the walsender only
    sends flushed WAL; waiting for the WAL writer would lengthen the write freeze). The message is in the
    maintenance database, so no tenant's subscription receives it."""
    async with admin.transaction():
        await admin.execute("SET LOCAL synchronous_commit = on")
        await admin.execute("SELECT pg_logical_emit_message(true, 'cardvault-move', 'flush')")
    cur = await admin.execute("SELECT pg_current_wal_flush_lsn()::text AS lsn")
    row = await cur.fetchone()
    assert row is not None
    return str(row["lsn"])


async def role_sessions(admin: AsyncConn, role: str) -> int:
    """Backends of ``role`` still alive (a terminated one may still be finishing a commit)."""
    cur = await admin.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE usename = %s", (role,))
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def drop_slots(admin: AsyncConn, database: str) -> int:
    """Drop every replication slot of ``database`` (the move's slot and the table-sync slots an
    interrupted initial copy leaves), ending the WAL senders still using them; how many were dropped.

    Only a move makes slots in a tenant database, so each one there is a move's.
    """
    dropped = 0
    for _ in range(50):
        cur = await admin.execute(
            "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s", (database,)
        )
        slots = await cur.fetchall()
        if not slots:
            return dropped
        for slot in slots:
            if slot["active_pid"] is not None:
                await admin.execute("SELECT pg_terminate_backend(%s)", (slot["active_pid"],))
                continue
            cur = await admin.execute(
                "SELECT count(pg_drop_replication_slot(slot_name)) AS n FROM pg_replication_slots"
                " WHERE slot_name = %s AND active_pid IS NULL",
                (slot["slot_name"],),
            )
            row = await cur.fetchone()
            dropped += int(row["n"]) if row else 0
        await asyncio.sleep(POLL_INTERVAL)
    raise RuntimeError(f"replication slots of {database} are still in use")


# -- target: subscription --------------------------------------------------------------------------------


async def create_slot(source_db: AsyncConn, name: str) -> None:
    """The subscription's logical replication slot ``name`` on the source database, made before the
    subscription (which is created with ``create_slot = false``). Idempotent.

    Made by ``CREATE SUBSCRIPTION`` itself, the slot would wait for every transaction running on the source
    server while the subscription's own transaction on the target is open: two moves in opposite
    directions between the same two servers then wait for each other until the statement timeout.
    """
    cur = await source_db.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (name,))
    if await cur.fetchone() is None:
        await source_db.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))


async def create_subscription(target_db: AsyncConn, name: str, source_conninfo: str) -> None:
    """Subscribe the target's copy to the source's publication ``name`` through the slot of the same name
    (``create_slot``): the initial copy of every table starts at once, then changes stream. Idempotent."""
    cur = await target_db.execute(
        "SELECT 1 FROM pg_subscription WHERE subname = %s AND subdbid ="
        " (SELECT oid FROM pg_database WHERE datname = current_database())",
        (name,),
    )
    if await cur.fetchone() is None:
        ident = sql.Identifier(name)
        await target_db.execute(
            sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (create_slot = false)").format(
                ident, sql.Literal(source_conninfo), ident
            )
        )


async def drop_subscription(target_db: AsyncConn, name: str) -> None:
    """Remove the subscription without reaching the source (its slots are dropped there by
    ``drop_slots``): the target works the same whether or not the source still answers."""
    cur = await target_db.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", (name,))
    if await cur.fetchone() is None:
        return
    ident = sql.Identifier(name)
    await target_db.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
    await target_db.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
    await target_db.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))


async def initial_copy_done(target_db: AsyncConn, name: str) -> bool:
    """Every table of the subscription has finished its initial copy (state ``r``: ready)."""
    cur = await target_db.execute(
        """
        SELECT count(*) AS tables, count(*) FILTER (WHERE r.srsubstate <> 'r') AS pending
          FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
         WHERE s.subname = %s
        """,
        (name,),
    )
    row = await cur.fetchone()
    return bool(row and row["tables"] > 0 and row["pending"] == 0)


async def received_at_least(target_db: AsyncConn, name: str, lsn: str) -> bool:
    """The subscription's apply worker has received (and so applied: it applies in order, as it reads)
    the source's WAL up to ``lsn``."""
    cur = await target_db.execute(
        "SELECT received_lsn >= %s::pg_lsn AS done FROM pg_stat_subscription WHERE subname = %s AND relid IS NULL",
        (lsn, name),
    )
    row = await cur.fetchone()
    return bool(row and row["done"])


# -- sequences -------------------------------------------------------------------------------------------


async def sequence_values(conn: AsyncConn) -> dict[str, int]:
    """``schema.sequence`` -> last value, of every sequence that was used (logical replication does not
    carry sequence values: the target's are set from these at the cutover)."""
    cur = await conn.execute(
        "SELECT format('%I.%I', schemaname, sequencename) AS name, last_value FROM pg_sequences"
        " WHERE last_value IS NOT NULL AND schemaname NOT IN ('pg_catalog', 'information_schema')"
    )
    return {r["name"]: int(r["last_value"]) for r in await cur.fetchall()}


async def set_sequences(conn: AsyncConn, values: dict[str, int]) -> None:
    for name, value in values.items():
        await conn.execute("SELECT setval(%s::regclass, %s, true)", (name, value))


# -- databases ---------------------------------------------------------------------------------------------


async def rename_database(admin: AsyncConn, old: str, new: str) -> None:
    """Rename ``old`` to ``new`` once nobody is connected to it (a no-op when ``old`` is gone)."""
    cur = await admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (old,))
    if await cur.fetchone() is None:
        return
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (old,),
    )
    await admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))


async def tenant_database_sizes(admin: AsyncConn) -> dict[str, int]:
    """Bytes of every tenant-named database on the server (``t_<id hex>``), by name."""
    cur = await admin.execute(
        "SELECT datname, pg_database_size(oid) AS size FROM pg_database WHERE datname ~ '^t_[0-9a-f]{32}$'"
    )
    return {r["datname"]: int(r["size"]) for r in await cur.fetchall()}
