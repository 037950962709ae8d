"""All SQL run on the tenant servers themselves: databases, roles, privileges, backends.

Every identifier goes through ``psycopg.sql.Identifier``; every statement is idempotent so a step can
be retried after a crash. Callers pass an autocommit management connection.
"""

from __future__ import annotations

import contextlib
import re

import psycopg
from psycopg import sql

from controlplane.db import AsyncConn

#: NOLOGIN group role every tenant role belongs to; it holds the table privileges inside tenant
#: databases. Tenants are kept apart by CONNECT, which each tenant role has on its own database only.
TENANT_GROUP_ROLE = "cardvault_tenant"

#: Names the control plane gives tenant databases and roles (``t_`` + the tenant id's hex).
TENANT_NAME_PATTERN = re.compile(r"^t_[0-9a-f]{32}$")
_TENANT_NAME_LIKE = "t\\_%"

#: Names of spare databases and their roles (``cvspare_`` + the pool's tag + random hex): never ``t_*``,
#: so a spare is never taken for a tenant database. Group 1 is the tag of the control plane that made it.
SPARE_NAME_PATTERN = re.compile(r"^cvspare_([0-9a-f]{8})_[0-9a-f]{32}$")
_SPARE_NAME_LIKE = "cvspare\\_%"


async def database_exists(conn: AsyncConn, name: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    return await cur.fetchone() is not None


async def role_exists(conn: AsyncConn, name: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
    return await cur.fetchone() is not None


async def tenant_databases(conn: AsyncConn) -> set[str]:
    """Databases on the server named like tenant databases."""
    cur = await conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (_TENANT_NAME_LIKE,))
    return {r["datname"] for r in await cur.fetchall() if TENANT_NAME_PATTERN.fullmatch(r["datname"])}


async def tenant_roles(conn: AsyncConn) -> set[str]:
    """Roles on the server named like tenant roles."""
    cur = await conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (_TENANT_NAME_LIKE,))
    return {r["rolname"] for r in await cur.fetchall() if TENANT_NAME_PATTERN.fullmatch(r["rolname"])}


async def spare_objects(conn: AsyncConn) -> tuple[set[str], set[str]]:
    """Databases and roles on the server named like spares (of any control plane): one round trip."""
    cur = await conn.execute(
        "SELECT true AS is_database, datname AS name FROM pg_database WHERE datname LIKE %s"
        " UNION ALL SELECT false, rolname FROM pg_roles WHERE rolname LIKE %s",
        (_SPARE_NAME_LIKE, _SPARE_NAME_LIKE),
    )
    rows = [r for r in await cur.fetchall() if SPARE_NAME_PATTERN.fullmatch(r["name"])]
    return {r["name"] for r in rows if r["is_database"]}, {r["name"] for r in rows if not r["is_database"]}


async def rename_spare(conn: AsyncConn, spare_database: str, spare_role: str, database: str, role: str) -> None:
    """Give a spare's database and role the tenant's names, in one round trip and one transaction.

    Privileges and memberships follow the objects (they are kept by OID) and a SCRAM verifier survives a
    role rename (an MD5 one would not: PostgreSQL clears it). Done already (a retry after a crash): each
    object still under its spare name is renamed alone, and one that is under neither name is an error.

    The commit does not wait for the WAL flush (the next synchronous commit on the server flushes it: the
    first admin's seeding, a moment later). If a crash loses it, the claim is redone: by the reconciler
    finishing the provisioning, or, once the tenant is active, finding its database missing and its
    claimed spare still there under the spare's name.
    """
    rename = sql.SQL(
        "SET LOCAL synchronous_commit = off; ALTER DATABASE {} RENAME TO {}; ALTER ROLE {} RENAME TO {}"
    ).format(sql.Identifier(spare_database), sql.Identifier(database), sql.Identifier(spare_role), sql.Identifier(role))
    try:
        await conn.execute(rename)
        return
    except (psycopg.errors.InvalidCatalogName, psycopg.errors.UndefinedObject, psycopg.errors.DuplicateDatabase,
            psycopg.errors.DuplicateObject):  # fmt: skip
        pass
    for old, new, exists, kind in (
        (spare_database, database, database_exists, "DATABASE"),
        (spare_role, role, role_exists, "ROLE"),
    ):
        if await exists(conn, old):
            await conn.execute(
                sql.SQL("ALTER {} {} RENAME TO {}").format(sql.SQL(kind), sql.Identifier(old), sql.Identifier(new))
            )
        elif not await exists(conn, new):
            raise LookupError(f"{kind.lower()} {old} is gone: neither it nor {new} exists")


_ACCESS = """
    WITH d AS (SELECT oid, datdba, datacl FROM pg_database WHERE datname = %(database)s),
         r AS (SELECT * FROM pg_roles WHERE rolname = %(role)s)
    SELECT EXISTS (SELECT FROM d) AS database, EXISTS (SELECT FROM r) AS role,
           (SELECT rolcanlogin AND NOT (rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls)
              FROM r) AS plain_login,
           (SELECT pg_has_role(r.oid, %(group)s, 'MEMBER') FROM r) AS in_group,
           (SELECT has_database_privilege(r.oid, d.oid, 'CONNECT') FROM r, d) AS can_connect,
           (SELECT has_database_privilege('public', d.oid, 'CONNECT') FROM d) AS public_connect,
           (SELECT count(*) FROM d, r, aclexplode(d.datacl) a WHERE a.grantee NOT IN (d.datdba, r.oid)) AS others
"""


async def tenant_access_problems(conn: AsyncConn, role: str, database: str) -> list[str]:
    """What is wrong with a tenant's (or a spare's) role and database ACL; empty when all is as provisioned:
    a plain login role in the tenant group, with CONNECT on its database, which no one else was granted."""
    cur = await conn.execute(_ACCESS, {"database": database, "role": role, "group": TENANT_GROUP_ROLE})
    row = await cur.fetchone()
    assert row is not None
    if not row["database"] or not row["role"]:
        return [f"{what} missing" for what in ("database", "role") if not row[what]]
    problems = {
        "the role is not a plain login role": not row["plain_login"],
        f"the role is not in {TENANT_GROUP_ROLE}": not row["in_group"],
        "the role may not connect": not row["can_connect"],
        "PUBLIC may connect": row["public_connect"],
        "other roles hold privileges on the database": row["others"] > 0,
    }
    return [problem for problem, present in problems.items() if present]


async def ensure_group_role(conn: AsyncConn) -> None:
    """Create the tenants' group role if the server lacks it. Two callers at once (moves queued onto a new
    server) may both find it missing: the second CREATE fails as a duplicate, in a savepoint, and is fine."""
    if not await role_exists(conn, TENANT_GROUP_ROLE):
        with contextlib.suppress(psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            async with conn.transaction():
                await conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(TENANT_GROUP_ROLE)))


async def create_database(conn: AsyncConn, name: str, *, template: str | None = None, strategy: str = "") -> bool:
    """Create ``name`` (from ``template``); False when it already existed."""
    if await database_exists(conn, name):
        return False
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
    if strategy:
        query = sql.SQL("{} STRATEGY {}").format(query, sql.SQL(strategy.upper()))
    await conn.execute(query)
    return True


async def drop_database(conn: AsyncConn, name: str) -> None:
    """Drop ``name``, ending any session still connected to it."""
    await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def create_tenant_role(conn: AsyncConn, role: str, database: str, password_verifier: str) -> None:
    """The tenant's login role, with CONNECT on its own database and nothing else.

    One round trip and one transaction (a multi-statement simple query): the role, its password and
    the database's ACL appear together or not at all. A role left by an interrupted attempt gets its
    password and grants set again. The commit does not wait for the WAL flush: if a crash loses it,
    the reconciler finds the role missing (or the provisioning unfinished) and creates it again.
    """
    ident_role, ident_db = sql.Identifier(role), sql.Identifier(database)
    grants = sql.SQL("GRANT {group} TO {role}; REVOKE ALL ON DATABASE {db} FROM PUBLIC; "
                     "GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}").format(
        group=sql.Identifier(TENANT_GROUP_ROLE), role=ident_role, db=ident_db
    )  # fmt: skip
    create = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
        ident_role, sql.Literal(password_verifier), sql.Identifier(TENANT_GROUP_ROLE)
    )
    try:
        await conn.execute(sql.SQL("SET LOCAL synchronous_commit = off; {}; {}").format(create, grants))
    except psycopg.errors.DuplicateObject:
        alter = sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(ident_role, sql.Literal(password_verifier))
        await conn.execute(sql.SQL("SET LOCAL synchronous_commit = off; {}; {}").format(alter, grants))
    await _end_foreign_sessions(conn, database)


async def _end_foreign_sessions(conn: AsyncConn, database: str) -> None:
    """End every session of another role on ``database``, once its REVOKE from PUBLIC is committed.

    A new database is open to PUBLIC from its clone until that REVOKE: a session another tenant's role
    opened in the window would outlive it and read the tenant's data later. Normally there is none.
    """
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND usename <> current_user",
        (database,),
    )


async def set_role_verifier(conn: AsyncConn, role: str, password_verifier: str) -> bool:
    """Store a new verifier of the role's (unchanged) password; False if there is no such role.

    Neither LOGIN nor any grant changes, and sessions already open are not affected.
    """
    if not await role_exists(conn, role):
        return False
    await conn.execute(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password_verifier))
    )
    return True


async def set_role_login(conn: AsyncConn, role: str, database: str, *, allowed: bool) -> None:
    """Let the tenant role log in to its database again, or lock it out and end its sessions."""
    if not await role_exists(conn, role):
        return
    ident_role, ident_db = sql.Identifier(role), sql.Identifier(database)
    async with conn.transaction():
        if allowed:
            await conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(ident_role))
            await conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(ident_db, ident_role))
        else:
            await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(ident_role))
            await conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(ident_db, ident_role))
    if not allowed:
        await terminate_role_sessions(conn, role)


async def terminate_role_sessions(conn: AsyncConn, role: str) -> int:
    cur = await conn.execute(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity WHERE usename = %s", (role,)
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def drop_role(conn: AsyncConn, role: str) -> None:
    if await role_exists(conn, role):
        await terminate_role_sessions(conn, role)
        await conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


async def role_can_login(conn: AsyncConn, role: str) -> bool:
    cur = await conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,))
    row = await cur.fetchone()
    return bool(row and row["rolcanlogin"])


async def mark_template(conn: AsyncConn, name: str) -> None:
    """Flag ``name`` as a template that tenant roles cannot connect to."""
    ident = sql.Identifier(name)
    await conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))
    await conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE true").format(ident))


async def drop_template(conn: AsyncConn, name: str) -> None:
    if await database_exists(conn, name):
        await conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(name)))
        await drop_database(conn, name)


def schema_privilege_statements(version_table: str) -> list[sql.SQL | sql.Composed]:
    """Inside a tenant (or template) database: table privileges for the tenant group role.

    Run after every migration; the version table stays out of the tenants' reach.
    """
    group = sql.Identifier(TENANT_GROUP_ROLE)
    return [
        sql.SQL("REVOKE ALL ON SCHEMA public FROM PUBLIC"),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(group),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(group),
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(group),
        sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.Identifier(version_table), group),
    ]


async def grant_schema_privileges(conn: AsyncConn, version_table: str) -> None:
    async with conn.transaction():
        for statement in schema_privilege_statements(version_table):
            await conn.execute(statement)
