"""A real PgBouncer in front of the routing benchmark's server (``route.py --pgbouncer``).

``PgBouncerInFront`` makes a directory PgBouncer may read (owned by the unprivileged user PostgreSQL runs
as when we are root: PgBouncer refuses root too), registers it for the server with the control plane's
own command (``cardvault servers pgbouncer default 127.0.0.1:PORT --dir DIR``, which writes
``pgbouncer.ini`` and ``userlist.txt`` from the registry and tells every serving process through
NOTIFY), starts the Debian ``pgbouncer`` binary on those files and waits until it listens. ``remove``
sends tenant connections straight to the server again; ``stop`` ends the process.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from harness import HOST, die_with_parent, free_port, tail


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)


class PgBouncerInFront:
    def __init__(self, home: Path, cardvault: Path, env: dict[str, str], server: str = "default") -> None:
        from controlplane.localpg.system import service_user

        binary = pgbouncer_binary()
        if binary is None:
            raise SystemExit("--pgbouncer: pgbouncer is not installed (make system-deps, or apt-get install pgbouncer)")
        self.directory = home / "pgbouncer"
        self.directory.mkdir(mode=0o700)
        self._user = service_user()
        if self._user is not None:
            os.chown(self.directory, self._user.uid, self._user.gid)
        self._binary = binary
        self._cardvault = str(cardvault)
        self._env = env
        self._server = server
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    def _command(self, *args: str) -> None:
        done = subprocess.run(
            [self._cardvault, "servers", "pgbouncer", self._server, *args], env=self._env, capture_output=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"cardvault servers pgbouncer {' '.join(args)} failed: {done.stderr.decode()}")

    def start(self) -> None:
        """Register it (the files are written) and start PgBouncer on them."""
        self._command(f"{HOST}:{self.port}", "--dir", str(self.directory))
        argv = [self._binary, str(self.directory / "pgbouncer.ini")]
        if self._user is not None:
            argv = ["runuser", "-u", self._user.name, "--", *argv]
        self._proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start:\n{tail(self.directory / 'pgbouncer.log')}") from None
                time.sleep(0.05)

    def remove(self) -> None:
        """Tenant connections go to the server directly again."""
        self._command("--remove")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
