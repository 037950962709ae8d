"""SQL run on a fleet server about the server itself: what it is, what our user may do, who may connect.

Tenant roles are kept apart by CONNECT: each has it on its own database only. PostgreSQL gives PUBLIC
CONNECT on every new database, so a server that joins the fleet has PUBLIC's CONNECT revoked on every
database that allows connections (``postgres``, ``template1``, the control database, anything else);
tenant databases get theirs revoked when they are provisioned. The server's management user keeps
its way in: a superuser needs no privilege, anyone else is granted CONNECT explicitly first.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
import psycopg
from psycopg import sql

from controlplane.db import AsyncConn
from controlplane.fleet.models import ServerIdentity

_FACTS = """
    SELECT r.rolsuper, r.rolcreatedb, r.rolcreaterole, pg_is_in_recovery() AS in_recovery,
           c.system_identifier, current_setting('port')::int AS port
      FROM pg_roles r, pg_control_system() c
     WHERE r.rolname = current_user
"""

#: Databases PUBLIC may connect to (``template0`` and others that refuse connections do not count),
#: with their owner and whether the current user can change their privileges.
_OPEN_DATABASES = """
    SELECT d.datname, pg_get_userbyid(d.datdba) AS owner,
           (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
           OR pg_has_role(current_user, d.datdba, 'USAGE') AS manageable
      FROM pg_database d
     WHERE d.datallowconn AND has_database_privilege('public', d.oid, 'CONNECT')
     ORDER BY d.datname
"""


async def ping(conn: AsyncConn) -> None:
    """A round trip: the server answers."""
    await conn.execute("SELECT 1")


class ServerFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What a management connection learns about its server and its own user."""

    superuser: bool
    createdb: bool
    createrole: bool
    in_recovery: bool
    identity: ServerIdentity

    @property
    def can_manage_tenants(self) -> bool:
        return self.superuser or (self.createdb and self.createrole)


class OpenDatabase(msgspec.Struct, frozen=True, kw_only=True):
    """A database every role (PUBLIC) may connect to."""

    name: str
    owner: str
    #: The current user may revoke PUBLIC's CONNECT (superuser, or has the owner's privileges).
    manageable: bool


async def facts(conn: AsyncConn) -> ServerFacts:
    cur = await conn.execute(_FACTS)
    row = await cur.fetchone()
    if row is None:  # current_user always has a pg_roles row; a dropped-under-us role is the only way
        raise RuntimeError("the management user has no pg_roles row")
    return ServerFacts(
        superuser=bool(row["rolsuper"]),
        createdb=bool(row["rolcreatedb"]),
        createrole=bool(row["rolcreaterole"]),
        in_recovery=bool(row["in_recovery"]),
        identity=ServerIdentity(int(row["system_identifier"]), int(row["port"])),
    )


async def identity(conn: AsyncConn) -> ServerIdentity:
    cur = await conn.execute("SELECT system_identifier, current_setting('port')::int AS port FROM pg_control_system()")
    row = await cur.fetchone()
    assert row is not None
    return ServerIdentity(int(row["system_identifier"]), int(row["port"]))


async def open_databases(conn: AsyncConn) -> list[OpenDatabase]:
    cur = await conn.execute(_OPEN_DATABASES)
    return [
        OpenDatabase(name=r["datname"], owner=r["owner"], manageable=bool(r["manageable"]))
        for r in await cur.fetchall()
    ]


async def lock_down(conn: AsyncConn, databases: Iterable[str]) -> list[str]:
    """Revoke PUBLIC's CONNECT on ``databases``; the current user keeps CONNECT. Returns those still open.

    A user that is not superuser is granted CONNECT before PUBLIC loses it, so it never locks itself
    out of its maintenance database. Databases it cannot change (owned by someone whose privileges it
    lacks) are left as they are: PostgreSQL only warns, so what is still open is read back.
    """
    names = list(databases)
    if not names:
        return []
    cur = await conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    row = await cur.fetchone()
    superuser = bool(row and row["rolsuper"])
    for name in names:
        ident = sql.Identifier(name)
        grant = (
            sql.SQL("GRANT CONNECT ON DATABASE {} TO CURRENT_USER; ").format(ident) if not superuser else sql.SQL("")
        )
        try:
            # One transaction: the user never loses its way in between the two.
            await conn.execute(sql.SQL("{}REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(grant, ident))
        except psycopg.errors.InvalidCatalogName:
            continue  # dropped meanwhile: nothing left to close
    still = {d.name for d in await open_databases(conn)}
    return [name for name in names if name in still]


def unmanageable_detail(databases: Iterable[OpenDatabase]) -> str:
    """Why the server's user cannot lock these databases down, and what an operator does about it."""
    listed = ", ".join(f"{d.name} (owner {d.owner})" for d in databases)
    return (
        f"every role may connect to {listed}, and the DSN's user cannot change that; as the owner or a "
        "superuser run REVOKE CONNECT ON DATABASE <name> FROM PUBLIC (and GRANT CONNECT to the roles that "
        "need it, this user included), or use a superuser DSN"
    )
