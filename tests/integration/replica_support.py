"""A real streaming replica for the read-replica tests: ``pg_basebackup -R`` of a throwaway primary.

``StreamingReplica`` is a ``LocalCluster`` whose data directory comes from ``pg_basebackup`` instead of
``initdb``: the same service user runs it (PostgreSQL refuses root), the same start/stop code, its own
free port (``cardvault.conf`` is rewritten on start), and the same superuser password as its primary
(roles are replicated). It lives inside the primary's test directory, so destroying the primary's
handle (the fixture's teardown, or the harness reaping a dead session) destroys the replica too.
"""

from __future__ import annotations

import psycopg
from psycopg import conninfo

from controlplane.localpg import LocalCluster
from controlplane.localpg.home import DATA, PASSWORD_FILE
from controlplane.localpg.system import LocalClusterError, flock
from tests.harness import LocalClusterHandle


class StreamingReplica(LocalCluster):
    """A hot standby streaming from ``primary`` (started by ``create``)."""

    def __init__(self, primary: LocalClusterHandle) -> None:
        super().__init__(primary.directory / "replica", fast=True)
        self.primary = primary

    def create(self) -> str:
        """Copy the primary with ``pg_basebackup -R`` (WAL streamed along), start the standby; its DSN."""
        home = self._prepare_home()
        with flock(home):
            password = conninfo.conninfo_to_dict(self.primary.dsn)["password"]
            self._write(home / PASSWORD_FILE, f"{password}\n")
            result = self._run(
                [self._bin("pg_basebackup"), "-D", str(home / DATA), "-R", "-X", "stream", "-c", "fast",
                 "-d", self.primary.dsn],
                cwd=home,
                timeout=120,
            )  # fmt: skip
            if result.returncode != 0:
                raise LocalClusterError(f"pg_basebackup failed:\n{result.stdout.strip()}")
        return self.ensure_running()


def superuser(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(dsn, autocommit=True)


def tenant_backends(dsn: str, role: str) -> int:
    """Client connections of ``role`` on the server ``dsn`` reaches (``pg_stat_activity``)."""
    with superuser(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND backend_type = 'client backend'", (role,)
        ).fetchone()
    assert row is not None
    return int(str(row[0]))


def replay_paused(dsn: str, paused: bool) -> None:
    """Pause (or resume) WAL replay on the standby ``dsn`` reaches."""
    with superuser(dsn) as conn:
        conn.execute("SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()")


def count_on(dsn: str, dbname: str, query: str) -> int:
    """``query``'s single number, in database ``dbname`` of the server ``dsn`` reaches (as its superuser)."""
    with psycopg.connect(conninfo.make_conninfo(dsn, dbname=dbname), autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(str(row[0]))


def rows_of(dsn: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query).fetchall()
