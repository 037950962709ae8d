"""All SQL a restore runs on the tenant servers: staging databases, the switch, and the checks of a
restored database.

Every identifier goes through ``psycopg.sql.Identifier``. Callers pass an autocommit management
connection (to the server's maintenance database, or to the restored database for the checks).
"""

from __future__ import annotations

import uuid

from psycopg import sql

from controlplane.db import AsyncConn
from controlplane.provisioning import catalog


def staging_name(tenant_id: uuid.UUID, short: str) -> str:
    """Where a restore loads the backup: ``t_<id hex>_r<short>`` (not a tenant name: the reconciler's
    ``t_<32 hex>`` pattern does not match it, so it never takes it for an orphan or a tenant's database)."""
    return f"t_{tenant_id.hex}_r{short}"


def retired_name(tenant_id: uuid.UUID, short: str) -> str:
    """What a replaced live database is renamed to: ``t_<id hex>_p<short>`` (previous)."""
    return f"t_{tenant_id.hex}_p{short}"


async def existing(conn: AsyncConn, names: list[str]) -> dict[str, bool]:
    """Which of ``names`` exist, each with whether it accepts connections."""
    cur = await conn.execute("SELECT datname, datallowconn FROM pg_database WHERE datname = ANY(%s)", (names,))
    return {r["datname"]: bool(r["datallowconn"]) for r in await cur.fetchall()}


async def create_closed_database(conn: AsyncConn, name: str) -> None:
    """An empty database (from ``template0``) nobody but the server's user may connect to.

    PostgreSQL lets PUBLIC connect to a new database: that is revoked at once, and any session another
    role opened in between is ended (as provisioning does for a new tenant database).
    """
    await catalog.create_database(conn, name, template="template0")
    await conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND usename <> current_user",
        (name,),
    )


async def close_database(conn: AsyncConn, name: str) -> None:
    """No new connection to ``name`` (by anyone), and every session on it ended: the tenant is in
    maintenance until the switch (its requests get 503) and the rename finds no one connected."""
    await conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
    await terminate_sessions(conn, name)


async def reopen_database(conn: AsyncConn, name: str) -> None:
    """Undo ``close_database`` (a no-op when ``name`` does not exist or is open)."""
    state = await existing(conn, [name])
    if state.get(name) is False:
        await conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(name)))


async def terminate_sessions(conn: AsyncConn, name: str) -> int:
    cur = await conn.execute(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity WHERE datname = %s"
        " AND pid <> pg_backend_pid()",
        (name,),
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def switch(
    conn: AsyncConn, *, live: str, source: str, retired: str | None, role: str, login: bool, role_exists: bool
) -> None:
    """Make ``source`` the tenant's database ``live``, in one transaction: the live one (if ``retired``)
    becomes ``retired`` (closed, the tenant role's privileges on it revoked), ``source`` takes its name,
    is open to connections, closed to PUBLIC, and the tenant role gets CONNECT on it (and LOGIN) when
    ``login``. Either all of it happens or none.

    Sessions still on the live database are ended first; ``ALTER DATABASE ... RENAME`` waits (up to 5 s)
    for them to go, and new ones are refused (the live database was closed before).
    """
    live_id, source_id = sql.Identifier(live), sql.Identifier(source)
    role_id = sql.Identifier(role)
    async with conn.transaction():
        if retired is not None:
            await terminate_sessions(conn, live)
            await conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(live_id, sql.Identifier(retired)))
            if role_exists:
                await conn.execute(
                    sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(retired), role_id)
                )
        await conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(source_id, live_id))
        await conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(live_id))
        await conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(live_id))
        if role_exists and login:
            await conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(role_id))
            await conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(live_id, role_id))
        elif role_exists:  # suspended: locked out as suspend leaves it
            await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role_id))
            await conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(live_id, role_id))


async def server_version(conn: AsyncConn) -> int:
    cur = await conn.execute("SELECT current_setting('server_version_num')::int AS v")
    row = await cur.fetchone()
    assert row is not None
    return int(row["v"])


async def list_databases(conn: AsyncConn, prefix: str) -> list[str]:
    """Databases whose name starts with ``prefix`` (a literal prefix: ``_`` and ``%`` are escaped)."""
    like = prefix.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "%"
    cur = await conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", (like,))
    return [r["datname"] for r in await cur.fetchall()]


# -- inside a restored database -------------------------------------------------------------------------


async def schema_revision(conn: AsyncConn, version_table: str) -> str | None:
    """The tenant schema revision recorded in the database, as a backup's manifest records it (``dump``):
    the version rows joined by ``,``; None when there is no version table or no row."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL AS present", (f"public.{version_table}",))
    row = await cur.fetchone()
    if not row or not row["present"]:
        return None
    cur = await conn.execute(
        sql.SQL("SELECT string_agg(version_num, ',' ORDER BY version_num) AS rev FROM {}").format(
            sql.Identifier("public", version_table)
        )
    )
    row = await cur.fetchone()
    return str(row["rev"]) if row and row["rev"] is not None else None
