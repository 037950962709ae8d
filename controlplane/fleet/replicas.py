"""The read replicas of a registered server: their DSNs in the registry, checked before they are stored.

A replica is a physical streaming standby of the server (``pg_basebackup -R``): it holds the same
databases and roles, so a tenant's own role and password work on it, and it shares the primary's
system identifier, which is how a DSN is proven to reach a replica *of this server*. Its DSN names host,
port, user and dbname like a server's (the user only reads replay positions: any role will do); it is
stored encrypted under the master key, and inherits the server's TLS settings (``sslmode``,
``sslrootcert``) unless it names its own. What the replicas are worth right now (lag, reachability) is
the routing layer's business (``controlplane.routing.replica_monitor``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import msgspec
from psycopg import conninfo

from controlplane import db
from controlplane.crypto import SecretBox
from controlplane.db import AsyncConn
from controlplane.errors import ServerUnavailable, ValidationFailed
from controlplane.fleet import catalog, dsns
from controlplane.fleet.service import Fleet
from controlplane.settings import DatabaseSettings

#: Replicas one server may list at most (each costs every control-plane process a connection and a
#: query per check interval).
MAX_REPLICAS = 8

#: Who connects, to which database: the tenant's own in a tenant's replica DSN.
_IDENTITY = ("user", "password", "passfile", "dbname")
#: Session settings of the tenant's connections, kept on the replica.
_SESSION = ("application_name", "options", "connect_timeout")

#: Connection parameters a replica inherits from its server's DSN when it does not name them itself.
_INHERITED = ("sslmode", "sslrootcert")


class Replica(msgspec.Struct, kw_only=True, frozen=True):
    """One registered replica (never its DSN: ``dsn_display`` has the password masked)."""

    id: uuid.UUID
    server_id: uuid.UUID
    server_name: str
    #: Its place in the server's list (0 first): reads prefer the first healthy one.
    position: int
    dsn_display: str


def _replica(row: Mapping[str, Any]) -> Replica:
    return Replica(
        id=row["id"],
        server_id=row["server_id"],
        server_name=row["server_name"],
        position=row["position"],
        dsn_display=row["dsn_display"],
    )


_SELECT = """
    SELECT r.id, r.server_id, s.name AS server_name, r.position, r.dsn_display, r.dsn_encrypted
      FROM db_server_replicas r JOIN db_servers s ON s.id = r.server_id
"""


async def list_replicas(conn: AsyncConn, server_id: uuid.UUID | None = None) -> list[Replica]:
    """Every registered replica (of ``server_id`` only, when given), by server name and position."""
    where = "" if server_id is None else " WHERE r.server_id = %s"
    cur = await conn.execute(
        _SELECT + where + " ORDER BY s.name, r.position", () if server_id is None else (server_id,)
    )
    return [_replica(row) for row in await cur.fetchall()]


class ReplicaTarget(msgspec.Struct, frozen=True):
    """A replica with the DSN to reach it (decrypted, TLS settings inherited): for the monitor only."""

    replica: Replica
    dsn: str


class Replicas:
    """Registering a server's replicas (``set``) and reading them back with their DSNs (``targets``)."""

    def __init__(self, fleet: Fleet, box: SecretBox, settings: DatabaseSettings) -> None:
        self._fleet = fleet
        self._box = box
        self._settings = settings

    async def set(self, conn: AsyncConn, server_name: str, replica_dsns: list[str]) -> list[Replica]:
        """Replace the server's replicas with ``replica_dsns`` (empty: none); each is checked first.

        A DSN must name host, port, user and dbname, connect, reach a server in recovery, and that
        server must be a copy of this one (same system identifier). Nothing is stored unless all pass.
        The registry's trigger tells every control-plane process.
        """
        server = await self._fleet.get(conn, server_name)
        if len(replica_dsns) > MAX_REPLICAS:
            raise ValidationFailed(f"a server may list at most {MAX_REPLICAS} replicas", name=server_name)
        if len(set(replica_dsns)) != len(replica_dsns):
            raise ValidationFailed("the same replica DSN is given twice", name=server_name)
        primary_dsn = await self._fleet.dsn(conn, server.id)
        primary_identity = server.identity
        if primary_identity is None and replica_dsns:
            async with self._fleet.admin(conn, server.id) as admin:
                primary_identity = await catalog.identity(admin)
        rows: list[tuple[uuid.UUID, str, str]] = []
        for position, dsn in enumerate(replica_dsns):
            dsns.explicit(dsn)
            reached = await self._check(inherit_tls(dsn, primary_dsn), position)
            if primary_identity is not None and reached != primary_identity.system_identifier:
                raise ValidationFailed(
                    f"replica {position + 1} is not a copy of server {server_name!r} "
                    f"(system identifier {reached}, the server's is {primary_identity.system_identifier})",
                    name=server_name,
                )
            rows.append((uuid.uuid4(), self._box.encrypt(dsn), db.redact(dsn)))
        async with conn.transaction():
            await conn.execute("DELETE FROM db_server_replicas WHERE server_id = %s", (server.id,))
            for position, (replica_id, encrypted, display) in enumerate(rows):
                await conn.execute(
                    "INSERT INTO db_server_replicas (id, server_id, position, dsn_encrypted, dsn_display)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (replica_id, server.id, position, encrypted, display),
                )
        return await list_replicas(conn, server.id)

    async def _check(self, dsn: str, position: int) -> int:
        """The system identifier of the standby ``dsn`` reaches (``ValidationFailed`` if it is none)."""
        try:
            async with db.connect(dsn, self._settings, role="check") as replica:
                cur = await replica.execute(
                    "SELECT pg_is_in_recovery() AS in_recovery, system_identifier FROM pg_control_system()"
                )
                row = await cur.fetchone()
        except ServerUnavailable as exc:
            raise ValidationFailed(f"cannot connect to replica {position + 1}: {exc.detail}") from None
        assert row is not None
        if not row["in_recovery"]:
            raise ValidationFailed(f"replica {position + 1} is not in recovery: a primary is no read replica")
        return int(row["system_identifier"])

    async def targets(self, conn: AsyncConn) -> list[ReplicaTarget]:
        """Every replica with its DSN (decrypted, with its server's TLS settings unless it names its own)."""
        cur = await conn.execute(_SELECT + " ORDER BY s.name, r.position")
        found: list[ReplicaTarget] = []
        for row in await cur.fetchall():
            primary_dsn = await self._fleet.dsn(conn, row["server_id"])
            dsn = inherit_tls(self._box.decrypt(row["dsn_encrypted"]), primary_dsn)
            found.append(ReplicaTarget(_replica(row), dsn))
        return found


def inherit_tls(dsn: str, server_dsn: str) -> str:
    """``dsn`` with the server DSN's TLS parameters where it names none itself."""
    own = conninfo.conninfo_to_dict(dsn)
    server = conninfo.conninfo_to_dict(server_dsn)
    inherited = {key: server[key] for key in _INHERITED if key in server and key not in own}
    return conninfo.make_conninfo(dsn, **inherited) if inherited else dsn


def tenant_dsn(tenant: str, replica_dsn: str) -> str:
    """The tenant's DSN (its role, password and database) pointed at the replica: where to connect and
    how (host, port, TLS) from the replica's DSN, who and which database from the tenant's. Nothing of
    the tenant DSN's address survives (a ``hostaddr`` or a PgBouncer's port would lead to the primary)."""
    own = conninfo.conninfo_to_dict(tenant)
    params = {key: value for key, value in own.items() if key in _IDENTITY or key in _SESSION}
    params |= {
        key: value
        for key, value in conninfo.conninfo_to_dict(replica_dsn).items()
        if key not in _IDENTITY and key not in _SESSION
    }
    return conninfo.make_conninfo("", **params)
