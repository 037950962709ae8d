"""A real PgBouncer for tests: its directory (owned by the unprivileged user PostgreSQL runs as, like
localpg's clusters), started on a free port once the control plane has written its files, stopped at
teardown; and its admin console."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from controlplane.fleet.pgbouncer_config import INI_FILE
from controlplane.fleet.pgbouncer_models import ADMIN_USER
from controlplane.localpg.system import service_user, subprocess_env
from tests.harness import make_temp_dir, remove_temp_dir
from tests.processes import die_with_parent, free_port, stop, track


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    assert found is not None, "pgbouncer is not installed (make system-deps)"
    return found


class PgBouncerProcess:
    """One PgBouncer: ``directory`` (for ``--pgbouncer-dir``), ``address`` (for ``--pgbouncer``)."""

    def __init__(self, root: Path) -> None:
        self.directory = root / "pgbouncer"
        self.directory.mkdir(mode=0o700)
        user = service_user()
        self._user = user
        if user is not None:  # root: PgBouncer runs as the unprivileged user and owns its directory
            os.chown(self.directory, user.uid, user.gid)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start on the files the control plane wrote; wait until it listens."""
        cmd = [pgbouncer_binary(), str(self.directory / INI_FILE)]
        if self._user is not None:
            cmd = ["runuser", "-u", self._user.name, "--", *cmd]
        self._proc = track(
            subprocess.Popen(
                cmd, env=subprocess_env(), preexec_fn=die_with_parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"pgbouncer did not start: {self.log()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            stop(self._proc)
            self._proc = None

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text() if path.exists() else "(no log)"

    def dsn(self, user: str, password: str, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=self.port, user=user, password=password, dbname=dbname, connect_timeout=5
        )

    def show(self, admin_password: str, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console (simple query protocol: a client-side cursor)."""
        with psycopg.connect(
            self.dsn(ADMIN_USER, admin_password, "pgbouncer"),
            autocommit=True,
            cursor_factory=psycopg.ClientCursor,
            row_factory=psycopg.rows.dict_row,
        ) as conn:
            return conn.execute(f"SHOW {what}").fetchall()


@contextmanager
def pgbouncer() -> Iterator[PgBouncerProcess]:
    root = make_temp_dir()
    bouncer = PgBouncerProcess(root)
    try:
        yield bouncer
    finally:
        bouncer.stop()
        remove_temp_dir(root)
