"""The tenant API's side of read replicas: which requests may read from one, and read-your-writes.

- Only routers that opt in (``opt=REPLICA_READS``: the tenant API routers, not the web pages) send
  ``GET``/``HEAD`` requests to a replica, and only when ``ReplicaReads`` finds a usable one. A ``GET``
  handler there that writes to the tenant database opts out (``opt=PRIMARY_ONLY``): a standby refuses
  every write. Today that is only the export download (its audit row).
- A write to a tenant whose server has replicas answers ``X-CardVault-LSN``: the primary's WAL position
  after its commit. A client that sends it back as ``X-CardVault-Min-LSN`` is read from a replica only
  once that replica has replayed that far (else from the primary): it always sees its own writes.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from litestar import Request

from controlplane.db import AsyncConn
from controlplane.errors import ValidationFailed
from controlplane.routing.replica_monitor import parse_lsn
from controlplane.routing.replica_reads import ReplicaReads

#: ``app.state`` key of the ``ReplicaReads`` (absent: no replica reads at all).
REPLICA_READS_STATE_KEY = "replica_reads"
#: ``opt`` key of the routers whose reads may go to a replica.
REPLICA_READS_OPT = "replica_reads"
#: Router ``opt`` turning replica reads on.
REPLICA_READS: dict[str, Any] = {REPLICA_READS_OPT: True}
#: Handler ``opt`` of a ``GET`` that writes (say, an audit row) in such a router: always the primary.
PRIMARY_ONLY: dict[str, Any] = {REPLICA_READS_OPT: False}

#: Response header of a write: the primary's WAL position after the commit.
LSN_HEADER = "X-CardVault-LSN"
#: Request header of a read: serve it from a replica only if it has replayed this far.
MIN_LSN_HEADER = "x-cardvault-min-lsn"


def replica_reads(request: Request[Any, Any, Any]) -> ReplicaReads | None:
    """The app's ``ReplicaReads`` if this route may use replicas, else None."""
    if not request.route_handler.opt.get(REPLICA_READS_OPT):
        return None
    reads: ReplicaReads | None = request.app.state.get(REPLICA_READS_STATE_KEY)
    return reads


def min_lsn(request: Request[Any, Any, Any]) -> int | None:
    """The client's read-your-writes token (``X-CardVault-Min-LSN``), or None; 400 when malformed.

    Read only for tenants whose server has replicas (elsewhere the primary serves every read anyway)."""
    raw = request.headers.get(MIN_LSN_HEADER)
    if raw is None:
        return None
    try:
        return parse_lsn(raw)
    except ValueError:
        raise ValidationFailed(
            f"{MIN_LSN_HEADER} must be a WAL position as {LSN_HEADER} gives it (like 0/16B3748)",
            header=MIN_LSN_HEADER,
        ) from None


async def committed_lsn(conn: AsyncConn) -> str:
    """Commit the request's transaction, then the primary's WAL position (which covers that commit).

    The insert position, not the write position: with ``synchronous_commit = off`` the commit record may
    not be written yet, and a replica that has replayed up to the insert position has replayed it. The
    connection is left in autocommit, so the lease has nothing more to commit: one extra round
    trip per write, paid only by tenants whose server has replicas.
    """
    await conn.commit()
    await conn.set_autocommit(True)
    cur = await conn.execute("SELECT pg_current_wal_insert_lsn()::text AS lsn")
    row = await cur.fetchone()
    assert row is not None
    return str(row["lsn"])


def peer_closed(conn: AsyncConn) -> bool:
    """Whether the server has closed this idle connection: its socket is readable (end of file, or the
    FATAL message of a shutdown). An idle tenant connection is sent nothing else: no round trip needed.
    """
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)
