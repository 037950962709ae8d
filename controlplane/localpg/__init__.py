"""A private PostgreSQL cluster for local runs (``make run``) and tests.

``LocalCluster(root)`` owns one cluster in the directory ``root`` (for ``make run``:
``<data_dir>/postgres``), built with the PostgreSQL binaries found on the machine
(:func:`find_bindir`). :meth:`LocalCluster.ensure_running` initialises the cluster when it is missing,
starts it when it is stopped, reuses it when it is running, and returns a superuser libpq DSN. It is
idempotent and cheap, so it is safe to call on every start of the service.

Layout of the cluster directory::

    root/
      data/                PGDATA (initdb -E UTF8 --locale=C); data/cardvault.conf holds our settings
      superuser.password   generated password of the ``postgres`` superuser (mode 0600)
      cluster.json         persisted port (chosen free on first start unless given)
      postgres.log         server log (pg_ctl -l)

The server listens on 127.0.0.1 over TCP only (``unix_socket_directories = ''``, so deep directories
never hit the 107-byte socket path limit) with scram-sha-256 password authentication and
``max_connections = 300``. ``fast=True`` clusters (tests) also run with ``fsync``,
``synchronous_commit``, ``full_page_writes`` and ``autovacuum`` off; they keep password authentication so tests see the
same authentication behaviour as production.

PostgreSQL refuses to run as root. When this module runs as root it runs ``initdb`` and ``pg_ctl``
as an unprivileged user through ``runuser -u USER --``: the existing ``postgres`` user, or else a system
user ``cardvault`` created with ``useradd``; every file of the cluster is owned by that user. When
that user cannot reach ``root`` (a parent directory such as ``/root`` is mode 700; checked with
``runuser -u USER -- test -x``), the cluster lives in
``/var/lib/cardvault-pg/<sha256 of the resolved root path>[:16]`` (``/var/tmp/cardvault-pg/...`` for
``fast`` clusters) and ``root`` becomes a symlink to it, so the next run finds it again. Persistent
clusters avoid ``/var/tmp`` because systemd-tmpfiles ages out files there. :meth:`LocalCluster.destroy`
removes both the symlink and its target. A non-root user runs everything directly.

Nothing happens at import time; the module uses only the standard library (psycopg is imported by
:func:`start_local` alone), so ``python3 -m controlplane.localpg stop`` works without the virtualenv.

Shell use::

    python -m controlplane.localpg start|stop|status|destroy --data-dir D [--fast]

``start`` prints the DSN of the ``cardvault`` database on stdout (diagnostics go to stderr).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from controlplane.localpg.binaries import BINDIR_ENV, has_tools
from controlplane.localpg.home import DATA, FALLBACK_BASE, FALLBACK_BASE_FAST, PASSWORD_FILE, STATE_FILE, ClusterHome
from controlplane.localpg.system import (
    HOST,
    LocalClusterError,
    ServiceUser,
    conninfo,
    flock,
    free_port,
    port_free,
)

log = logging.getLogger(__name__)

#: Name of the bootstrap superuser of every local cluster.
SUPERUSER = "postgres"
#: Database created by :func:`start_local` for the control plane.
CONTROLDATABASE = "cardvault"

MAX_CONNECTIONS = 300

_LOG_FILE = "postgres.log"
_CONF_FILE = "cardvault.conf"
_INCLUDE_LINE = f"include_if_exists = '{_CONF_FILE}'"
#: Seconds ``pg_ctl start -w`` waits for the server to accept connections. After a crash (or ``stop
#: immediate``) the server first fsyncs the whole data directory and replays the WAL: with ~1,000 databases
#: that takes minutes, well past pg_ctl's default 60 s.
_START_TIMEOUT = 600


class LocalCluster(ClusterHome):
    """One private PostgreSQL cluster in the directory ``root`` (see the module docstring)."""

    def __init__(self, root: Path, *, fast: bool = False, port: int | None = None, bindir: Path | None = None) -> None:
        self.root = Path(os.path.abspath(root))
        self.fast = fast
        self.requested_port = port
        self._bindir = bindir
        self._user: ServiceUser | None = None
        self._user_resolved = False

    def __repr__(self) -> str:
        return f"LocalCluster({str(self.root)!r}, fast={self.fast})"

    # ----------------------------------------------------------------------------------------- public

    def ensure_running(self) -> str:
        """Initialise (if missing) and start (if stopped) the cluster; return a superuser DSN."""
        self._bin("pg_ctl")  # no binaries: fail before touching the filesystem
        home = self._prepare_home()
        with flock(home):
            if not self._initialised(home):
                self._initdb(home)
            self._check_version(home)
            if self._status(home):
                return self._dsn(home, self._running_port(home))
            for attempt in range(3):
                port = self._choose_port(home, fresh=attempt > 0)
                self._write_config(home, port)
                ok, detail = self._start(home)
                if ok:
                    log.info("local PostgreSQL running on %s:%d (%s)", HOST, port, home)
                    return self._dsn(home, port)
                port_taken = "already in use" in detail or "could not bind" in detail
                if not (port_taken and self.requested_port is None):
                    break
            raise LocalClusterError(f"could not start PostgreSQL in {home / DATA}:\n{detail}")

    def is_running(self) -> bool:
        """Whether the cluster's postmaster is running."""
        home = self._existing_home()
        return home is not None and self._initialised(home) and self._status(home)

    def stop(self, *, immediate: bool = False) -> None:
        """Stop the server (``pg_ctl stop -m fast``; ``immediate``: ``-m immediate``, every backend exits on
        the spot, as in a crash); a no-op when it is not running."""
        home = self._existing_home()
        if home is None or not self._initialised(home):
            return
        with flock(home):
            self._stop(home, immediate=immediate)

    def destroy(self) -> None:
        """Stop the server and remove every file of the cluster (and the fallback symlink)."""
        home = self._existing_home()
        if home is not None:
            if not self._looks_like_cluster(home):
                raise LocalClusterError(f"refusing to delete {home}: not a local cluster directory")
            with flock(home):
                if self._initialised(home):
                    self._stop(home, force=True)
                shutil.rmtree(home)
            if home.parent in (FALLBACK_BASE, FALLBACK_BASE_FAST):
                with contextlib.suppress(OSError):
                    home.parent.rmdir()  # only when empty
        if self.root.is_symlink():
            self.root.unlink()

    def port(self) -> int:
        """The port the server listens on (or will, once started); the cluster must exist."""
        home = self._existing_home()
        if home is None or "port" not in self._state(home):
            raise LocalClusterError(f"no local cluster in {self.root}")
        return self._running_port(home) if self._status(home) else self._state(home)["port"]

    def dsn(self, dbname: str = "postgres") -> str:
        """The superuser DSN for ``dbname`` (the cluster must exist)."""
        port = self.port()
        home = self._existing_home()
        assert home is not None
        return self._dsn(home, port, dbname)

    @property
    def home(self) -> Path | None:
        """The real cluster directory (``root`` or the target of its fallback symlink), if it exists."""
        return self._existing_home()

    def _pg_ctl(self, home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self._run([self._bin("pg_ctl"), "-D", str(home / DATA), *args], cwd=home, timeout=timeout)

    # ------------------------------------------------------------------------------------- cluster

    @staticmethod
    def _initialised(home: Path) -> bool:
        return (home / DATA / "PG_VERSION").is_file()

    def _state(self, home: Path) -> dict[str, int]:
        try:
            data = json.loads((home / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return {key: int(value) for key, value in data.items() if isinstance(value, int)}

    def _initdb(self, home: Path) -> None:
        data = home / DATA
        if data.exists():  # left over by an interrupted initdb
            shutil.rmtree(data)
        password_file = home / PASSWORD_FILE
        if not password_file.exists():
            self._write(password_file, secrets.token_urlsafe(24) + "\n")
        cmd = [self._bin("initdb"), "-D", str(data), "-U", SUPERUSER, f"--pwfile={password_file}"]
        cmd += ["-E", "UTF8", "--locale=C", "--auth-local=scram-sha-256", "--auth-host=scram-sha-256"]
        if self.fast:
            cmd.append("--no-sync")
        log.info("initialising a PostgreSQL cluster in %s", data)
        result = self._run(cmd, cwd=home, timeout=600)
        if result.returncode != 0:
            with contextlib.suppress(OSError):
                shutil.rmtree(data)
            raise LocalClusterError(f"initdb failed in {data}:\n{result.stdout.strip()}")
        conf = data / "postgresql.conf"
        with conf.open("a") as fh:  # appending keeps the owner (the service user)
            fh.write("\n# Settings managed by controlplane.localpg (rewritten on every start).\n")
            fh.write(_INCLUDE_LINE + "\n")

    def _check_version(self, home: Path) -> None:
        """Use binaries matching the cluster's major version (after an upgrade of the default)."""
        major = (home / DATA / "PG_VERSION").read_text().strip()
        version = self._run([self._bin("pg_ctl"), "--version"], cwd=home).stdout
        match = re.search(r"\(PostgreSQL\)\s+(\d+)", version)
        if match is None or match.group(1) == major:
            return
        alternative = Path(f"/usr/lib/postgresql/{major}/bin")
        if has_tools(alternative):
            self._bindir = alternative
            return
        raise LocalClusterError(
            f"the cluster in {home} was created by PostgreSQL {major} but the binaries in "
            f"{self._bindir} are PostgreSQL {match.group(1)}; install PostgreSQL {major}, point "
            f"{BINDIR_ENV} at its binaries, or remove the cluster (python -m controlplane.localpg destroy)"
        )

    def _choose_port(self, home: Path, *, fresh: bool) -> int:
        state = self._state(home)
        if self.requested_port is not None:
            port = self.requested_port
            if not port_free(port):
                raise LocalClusterError(f"cannot start the local cluster in {home}: {HOST}:{port} is in use")
        elif not fresh and "port" in state and port_free(state["port"]):
            port = state["port"]
        else:
            port = free_port()
            if "port" in state:
                log.warning("port %d is taken; the local cluster in %s moves to port %d", state["port"], home, port)
        if state.get("port") != port:
            self._write(home / STATE_FILE, json.dumps({"port": port}) + "\n", 0o644)
        return port

    def _write_config(self, home: Path, port: int) -> None:
        settings: dict[str, str] = {
            "listen_addresses": f"'{HOST}'",
            "port": str(port),
            "unix_socket_directories": "''",
            "max_connections": str(MAX_CONNECTIONS),
            "shared_buffers": "'128MB'" if self.fast else "'256MB'",
            "password_encryption": "'scram-sha-256'",
            "timezone": "'UTC'",
            "log_timezone": "'UTC'",
            # Tenant moves copy a database by logical replication, and read replicas stream from here.
            "wal_level": "logical",
            "max_wal_senders": "20",
            "max_replication_slots": "20",
        }
        if self.fast:
            # autovacuum off too: a worker's first visit to a database writes its relation cache init
            # file and so changes the database's size at a random moment, which tests of size-based
            # change detection cannot tell from a real change (they ANALYZE explicitly instead).
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "autovacuum": "off"}
        if (Path(self._bin("postgres")).parent.parent / "lib" / "pg_stat_statements.so").is_file():
            # Slow queries per tenant for the admin API (the extension itself is created on first use).
            settings["shared_preload_libraries"] = "'pg_stat_statements'"
        text = "# Written by controlplane.localpg on every start; use ALTER SYSTEM for local changes.\n"
        text += "".join(f"{key} = {value}\n" for key, value in settings.items())
        path = home / DATA / _CONF_FILE
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                return
        self._write(path, text)

    def _status(self, home: Path) -> bool:
        return self._pg_ctl(home, "status", timeout=30).returncode == 0

    def _running_port(self, home: Path) -> int:
        with contextlib.suppress(OSError, IndexError, ValueError):
            return int((home / DATA / "postmaster.pid").read_text().splitlines()[3])
        return int(self._state(home)["port"])

    def _start(self, home: Path) -> tuple[bool, str]:
        log_path = home / _LOG_FILE
        offset = log_path.stat().st_size if log_path.exists() else 0
        result = self._pg_ctl(
            home, "start", "-w", "-t", str(_START_TIMEOUT), "-s", "-l", str(log_path),
            timeout=_START_TIMEOUT + 30,
        )  # fmt: skip
        if result.returncode == 0:
            return True, ""
        tail = ""
        with contextlib.suppress(OSError), log_path.open(errors="replace") as fh:
            fh.seek(offset)
            tail = "\n".join(fh.read().splitlines()[-20:])
        return False, f"{result.stdout.strip()}\n{tail}".strip()

    def _stop(self, home: Path, *, force: bool = False, immediate: bool = False) -> None:
        if not self._status(home):
            return
        if not immediate:
            result = self._pg_ctl(home, "stop", "-m", "fast", "-w", "-t", "60", "-s")
            if result.returncode == 0:
                return
        result = self._pg_ctl(home, "stop", "-m", "immediate", "-w", "-t", "30", "-s")
        if result.returncode == 0 or not self._status(home):
            return
        if force:
            self._kill_postmaster(home)
            return
        raise LocalClusterError(f"could not stop PostgreSQL in {home / DATA}: {result.stdout.strip()}")

    def _kill_postmaster(self, home: Path) -> None:
        with contextlib.suppress(OSError, IndexError, ValueError):
            pid = int((home / DATA / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except OSError as exc:
                    if exc.errno == errno.ESRCH:
                        return
                time.sleep(0.05)

    def _dsn(self, home: Path, port: int, dbname: str = "postgres") -> str:
        password = (home / PASSWORD_FILE).read_text().strip()
        return conninfo(host=HOST, port=port, user=SUPERUSER, password=password, dbname=dbname)


def _ensure_database(admin_dsn: str, name: str) -> None:
    import psycopg
    from psycopg import errors, sql

    try:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return
            with contextlib.suppress(errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                log.info("created database %s", name)
    except psycopg.OperationalError as exc:
        raise LocalClusterError(f"cannot connect to the local cluster: {str(exc).strip()}") from exc


def start_local(data_dir: Path, *, fast: bool = False) -> str:
    """Ensure the cluster in ``data_dir/postgres`` runs and has a ``cardvault`` database; its DSN."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(data_dir / "postgres", fast=fast)
    _ensure_database(cluster.ensure_running(), CONTROLDATABASE)
    return cluster.dsn(CONTROLDATABASE)
