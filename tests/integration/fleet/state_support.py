"""What the fleet looks like, read straight from the control database and the servers (never through the
code under test): the ledger's running operations, every tenant's placement against the ``t_*`` databases
and roles each server holds, and which process is the scheduler leader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psycopg

from tests.integration.fleet.fleet_support import Fleet, ServeProcess
from tests.integration.move_support import replication_leftovers

LEADER_APPLICATION = "cardvault-controlplane-leader"


def query(dsn: str, text: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(text, params).fetchall()


def running_operations(control_dsn: str) -> list[tuple[str, str, str | None]]:
    """``(kind, slug, step)`` of every ledger operation still ``running``."""
    rows = query(control_dsn, "SELECT kind, tenant_slug, step FROM tenant_operations WHERE state = 'running'")
    return [(str(kind), str(slug), step) for kind, slug, step in rows]


def move_records(control_dsn: str) -> dict[int, tuple[str, str, str, str]]:
    """``operation id -> (tenant slug, from server, to server, state)`` of every move."""
    rows = query(
        control_dsn,
        "SELECT m.operation_id, t.slug, m.from_server, m.to_server, m.state FROM tenant_moves m"
        " JOIN tenants t ON t.id = m.tenant_id",
    )
    return {int(op): (slug, source, target, state) for op, slug, source, target, state in rows}


@dataclass(frozen=True)
class Placement:
    slug: str
    id: str
    status: str
    server: str
    database: str
    role: str


def placements(control_dsn: str) -> dict[str, Placement]:
    rows = query(
        control_dsn,
        "SELECT t.slug, t.id::text, t.status, s.name, t.database_name, t.role_name FROM tenants t"
        " JOIN db_servers s ON s.id = t.server_id",
    )
    return {row[0]: Placement(*row) for row in rows}


def tenant_objects(server_dsn: str) -> tuple[set[str], set[str]]:
    """The ``t_*`` databases and roles on a server."""
    databases = {r[0] for r in query(server_dsn, "SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'")}
    roles = {r[0] for r in query(server_dsn, "SELECT rolname FROM pg_roles WHERE rolname LIKE 't\\_%'")}
    return databases, roles


def disagreements(fleet: Fleet) -> list[str]:
    """Everything that is not as a converged fleet has it, [] when all is well:

    - a tenant that is not active, or whose database or role is missing on its server;
    - a ``t_*`` database on a server that is neither a tenant's database there nor a database retired there
      (kept for the rollback window: listed in ``retired_databases``), e.g. a move's copy or a half
      provisioning; a ``t_*`` role on a server that no tenant placed there owns;
    - a replication slot, subscription or publication left on either server;
    - a ledger operation or a move still ``running``.
    """
    found: list[str] = []
    tenants = placements(fleet.control_dsn)
    retired = {
        (server, name)
        for server, name in query(
            fleet.control_dsn,
            "SELECT s.name, r.database_name FROM retired_databases r JOIN db_servers s ON s.id = r.server_id",
        )
    }
    for server, dsn in fleet.servers.items():
        databases, roles = tenant_objects(dsn)
        here = [t for t in tenants.values() if t.server == server]
        for tenant in here:
            if tenant.status != "active":
                found.append(f"{tenant.slug} is {tenant.status}")
            if tenant.database not in databases:
                found.append(f"{tenant.slug}'s database is missing on {server}")
            if tenant.role not in roles:
                found.append(f"{tenant.slug}'s role is missing on {server}")
        expected = {t.database for t in here} | {name for where, name in retired if where == server}
        found += [f"orphan database {name} on {server}" for name in sorted(databases - expected)]
        found += [f"orphan role {name} on {server}" for name in sorted(roles - {t.role for t in here})]
        found += [f"{what} on {server}" for what in replication_leftovers(dsn)]
    found += [
        f"{kind} of {slug} still running (step {step})" for kind, slug, step in running_operations(fleet.control_dsn)
    ]
    states = query(fleet.control_dsn, "SELECT id FROM tenant_moves WHERE state = 'running'")
    found += [f"move #{r[0]} still running" for r in states]
    return found


def _socket_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets whose local port is ``port`` (the client end of a connection)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except FileNotFoundError:
            continue
    return inodes


def owner_of(port: int, processes: list[ServeProcess]) -> ServeProcess | None:
    """The process with a socket on local TCP port ``port`` (Linux ``/proc``)."""
    targets = {f"socket:[{inode}]" for inode in _socket_inodes(port)}
    for process in processes:
        fd_dir = f"/proc/{process.pid}/fd"
        try:
            links = {os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)}
        except (FileNotFoundError, ProcessLookupError):
            continue
        if links & targets:
            return process
    return None


def leader(fleet: Fleet) -> ServeProcess | None:
    """The process whose session holds the scheduler leader's lock on the control database, if any."""
    rows = query(
        fleet.control_dsn,
        "SELECT a.client_port FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory'"
        " WHERE l.granted AND a.application_name = %s AND a.datname = current_database()",
        (LEADER_APPLICATION,),
    )
    for (port,) in rows:
        if port is not None and port > 0:
            found = owner_of(int(port), [p for p in fleet.processes if p.alive()])
            if found is not None:
                return found
    return None
