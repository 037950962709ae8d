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
``synchronous_commit`` and ``full_page_writes`` off; they keep password authentication so tests see the
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

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import platform
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from controlplane.errors import ConfigError

log = logging.getLogger(__name__)

#: Environment variable naming the directory holding ``initdb`` and ``pg_ctl``.
BINDIR_ENV = "CARDVAULT_PG_BINDIR"
#: Name of the bootstrap superuser of every local cluster.
SUPERUSER = "postgres"
#: Database created by :func:`start_local` for the control plane.
CONTROL_DATABASE = "cardvault"
#: Service users tried, in order, when running as root (the last one is created if none exists).
SERVICE_USERS = ("postgres", "cardvault")
#: Where clusters go when the service user cannot reach the requested directory (root only).
FALLBACK_BASE = Path("/var/lib/cardvault-pg")
FALLBACK_BASE_FAST = Path("/var/tmp/cardvault-pg")

HOST = "127.0.0.1"
MAX_CONNECTIONS = 300

_DATA = "data"
_PASSWORD_FILE = "superuser.password"
_STATE_FILE = "cluster.json"
_LOG_FILE = "postgres.log"
_CONF_FILE = "cardvault.conf"
_INCLUDE_LINE = f"include_if_exists = '{_CONF_FILE}'"
_TOOLS = ("initdb", "pg_ctl")
_PORT_RANGE = (20000, 32000)  # below the Linux (32768+) and macOS (49152+) ephemeral port ranges
_START_TIMEOUT = 60


class PostgresNotFound(ConfigError):
    """No PostgreSQL server binaries (``initdb``, ``pg_ctl``) on this machine."""

    code = "postgres_not_found"

    @classmethod
    def searched(cls, looked: Sequence[str]) -> PostgresNotFound:
        where = "\n".join(f"  - {place}" for place in looked)
        return cls(
            "PostgreSQL server binaries (initdb, pg_ctl) not found. Looked in:\n"
            f"{where}\n"
            f"Install them: {install_hint()}.\n"
            f"Or set {BINDIR_ENV} to the directory holding initdb and pg_ctl, "
            "or set CARDVAULT_DATABASE_URL to use an existing server.",
            looked=list(looked),
        )


class LocalClusterError(ConfigError):
    """The local cluster could not be initialised, started or stopped."""

    code = "local_postgres_failed"


def _os_release() -> dict[str, str]:
    values: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip().strip('"')
    return values


def install_hint(system: str | None = None, os_release: Mapping[str, str] | None = None) -> str:
    """The command that installs PostgreSQL on this (or the given) platform."""
    system = system or platform.system()
    if system == "Darwin":
        return "brew install postgresql@15 (Homebrew; macOS)"
    if system != "Linux":
        return "PostgreSQL 15 or newer from https://www.postgresql.org/download/"
    release = _os_release() if os_release is None else os_release
    family = {release.get("ID", ""), *release.get("ID_LIKE", "").split()}
    if family & {"debian", "ubuntu"}:
        return "apt-get install postgresql (Debian/Ubuntu)"
    if family & {"fedora", "rhel", "centos"}:
        return "dnf install postgresql-server (Fedora/RHEL)"
    if "alpine" in family:
        return "apk add postgresql (Alpine)"
    if "arch" in family:
        return "pacman -S postgresql (Arch)"
    if family & {"suse", "opensuse"}:
        return "zypper install postgresql-server (openSUSE)"
    return (
        "apt-get install postgresql (Debian/Ubuntu), dnf install postgresql-server (Fedora/RHEL) "
        "or brew install postgresql@15 (macOS)"
    )


def _has_tools(bindir: Path) -> bool:
    return all((bindir / tool).is_file() and os.access(bindir / tool, os.X_OK) for tool in _TOOLS)


def _version_key(path: str) -> tuple[int, ...]:
    digits = re.findall(r"\d+", Path(path).parent.name)
    return tuple(int(d) for d in digits)


def _newest(pattern: str) -> list[str]:
    return sorted(glob.glob(pattern), key=_version_key, reverse=True)


def find_bindir() -> Path:
    """The directory holding PostgreSQL's ``initdb`` and ``pg_ctl``.

    Order: ``$CARDVAULT_PG_BINDIR`` (authoritative when set), ``pg_config --bindir``, the newest
    ``/usr/lib/postgresql/*/bin``, ``/usr/local/pgsql/bin``, ``PATH``, then the usual
    PGDG/Homebrew locations. Raises :class:`PostgresNotFound` saying what to install.
    """
    env = os.environ.get(BINDIR_ENV, "").strip()
    if env:
        bindir = Path(env).expanduser()
        if _has_tools(bindir):
            return bindir
        raise PostgresNotFound.searched([f"{bindir} (from {BINDIR_ENV}; no initdb/pg_ctl there)"])

    looked: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        looked.append("pg_config --bindir (pg_config not on PATH)")
    else:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and _has_tools(Path(out)):
            return Path(out)
        looked.append(f"{out or '?'} (from {pg_config} --bindir)")

    candidates = [*_newest("/usr/lib/postgresql/*/bin"), "/usr/local/pgsql/bin"]
    for candidate in candidates:
        if _has_tools(Path(candidate)):
            return Path(candidate)
    looked += ["/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin"]

    initdb = shutil.which("initdb")
    if initdb is not None and _has_tools(Path(initdb).parent):
        return Path(initdb).parent
    looked.append("PATH")

    extra = [
        *_newest("/usr/pgsql-*/bin"),
        *_newest("/opt/homebrew/opt/postgresql@*/bin"),
        *_newest("/usr/local/opt/postgresql@*/bin"),
    ]
    for candidate in extra:
        if _has_tools(Path(candidate)):
            return Path(candidate)
    looked += ["/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin", "/usr/local/opt/postgresql@*/bin"]
    raise PostgresNotFound.searched(looked)


def _conninfo(**params: object) -> str:
    """A libpq keyword/value string (values quoted when needed)."""

    def quote(value: str) -> str:
        if value and re.fullmatch(r"[A-Za-z0-9_.@:/+-]+", value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{key}={quote(str(value))}" for key, value in params.items())


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # PostgreSQL sets SO_REUSEADDR too, so connections in TIME_WAIT do not block it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    for _ in range(200):
        port = secrets.randbelow(_PORT_RANGE[1] - _PORT_RANGE[0]) + _PORT_RANGE[0]
        if _port_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class _ServiceUser:
    name: str
    uid: int
    gid: int


def _service_user() -> _ServiceUser | None:
    """The user PostgreSQL runs as when we are root (created if needed); None when not root."""
    if os.geteuid() != 0:
        return None
    for name in SERVICE_USERS:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return _ServiceUser(name, entry.pw_uid, entry.pw_gid)
    name = SERVICE_USERS[-1]
    useradd = shutil.which("useradd")
    if useradd is None:
        raise LocalClusterError(
            "PostgreSQL refuses to run as root and there is no 'postgres' user to run it as; "
            f"create one (e.g. 'adduser --system {name}') or run as a non-root user"
        )
    shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
    cmd = [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
    cmd += ["--shell", shell, "--comment", "CardVault local PostgreSQL", name]
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if result.returncode not in (0, 9):  # 9: the user exists (created concurrently)
        raise LocalClusterError(f"could not create system user {name!r}: {result.stderr.strip()}")
    log.info("created system user %s to run the local PostgreSQL", name)
    entry = pwd.getpwnam(name)
    return _ServiceUser(name, entry.pw_uid, entry.pw_gid)


def _subprocess_env() -> dict[str, str]:
    """Our environment without libpq/server variables (PGPORT, PGDATA, ...) and with the C locale."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANGUAGE", None)
    return env


@contextlib.contextmanager
def _flock(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` (serialises concurrent start/stop of one cluster)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class LocalCluster:
    """One private PostgreSQL cluster in the directory ``root`` (see the module docstring)."""

    def __init__(self, root: Path, *, fast: bool = False, port: int | None = None, bindir: Path | None = None) -> None:
        self.root = Path(os.path.abspath(root))
        self.fast = fast
        self.requested_port = port
        self._bindir = bindir
        self._user: _ServiceUser | None = None
        self._user_resolved = False

    def __repr__(self) -> str:
        return f"LocalCluster({str(self.root)!r}, fast={self.fast})"

    # ----------------------------------------------------------------------------------------- public

    def ensure_running(self) -> str:
        """Initialise (if missing) and start (if stopped) the cluster; return a superuser DSN."""
        self._bin("pg_ctl")  # no binaries: fail before touching the filesystem
        home = self._prepare_home()
        with _flock(home):
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
            raise LocalClusterError(f"could not start PostgreSQL in {home / _DATA}:\n{detail}")

    def is_running(self) -> bool:
        """Whether the cluster's postmaster is running."""
        home = self._existing_home()
        return home is not None and self._initialised(home) and self._status(home)

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``); a no-op when it is not running."""
        home = self._existing_home()
        if home is None or not self._initialised(home):
            return
        with _flock(home):
            self._stop(home)

    def destroy(self) -> None:
        """Stop the server and remove every file of the cluster (and the fallback symlink)."""
        home = self._existing_home()
        if home is not None:
            if not self._looks_like_cluster(home):
                raise LocalClusterError(f"refusing to delete {home}: not a local cluster directory")
            with _flock(home):
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

    # ------------------------------------------------------------------------------ directory + user

    def _service_user(self) -> _ServiceUser | None:
        if not self._user_resolved:
            self._user = _service_user()
            self._user_resolved = True
        return self._user

    def _existing_home(self) -> Path | None:
        if self.root.is_symlink():
            target = Path(os.path.realpath(self.root))
            return target if target.is_dir() else None
        return self.root if self.root.is_dir() else None

    @staticmethod
    def _looks_like_cluster(home: Path) -> bool:
        names = {p.name for p in home.iterdir()}
        return not names or bool(names & {_STATE_FILE, _PASSWORD_FILE, _DATA})

    def _prepare_home(self) -> Path:
        user = self._service_user()
        if self.root.is_symlink():
            home = Path(os.path.realpath(self.root))
            home.mkdir(mode=0o700, parents=True, exist_ok=True)  # e.g. the target was cleaned away
        else:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            home = self.root
        if user is None:
            return home
        self._adopt(home, user)
        if self._user_can_reach(home, user):
            return home
        if home != self.root or any(self.root.iterdir()):
            raise LocalClusterError(
                f"user {user.name!r} (PostgreSQL refuses to run as root) cannot reach {home}; "
                "make its parent directories traversable (chmod o+x) or use another data directory"
            )
        self.root.rmdir()
        target = self._fallback_dir()
        try:
            target.mkdir(mode=0o700, exist_ok=True)
        except FileNotFoundError:  # a concurrent destroy() removed the empty base directory
            target = self._fallback_dir()
            target.mkdir(mode=0o700, exist_ok=True)
        self._adopt(target, user)
        try:
            self.root.symlink_to(target, target_is_directory=True)
        except FileExistsError:  # a concurrent call won the race
            if Path(os.path.realpath(self.root)) != target:
                raise
        log.info("%s cannot reach %s; the cluster lives in %s (symlinked)", user.name, self.root, target)
        return target

    def _fallback_dir(self) -> Path:
        base = FALLBACK_BASE_FAST if self.fast else FALLBACK_BASE
        base.mkdir(mode=0o755, parents=True, exist_ok=True)
        st = base.lstat()
        if not base.is_dir() or base.is_symlink() or st.st_uid != 0 or st.st_mode & 0o022:
            raise LocalClusterError(f"{base} must be a directory owned by root and not writable by others")
        resolved = Path(os.path.realpath(self.root.parent)) / self.root.name
        return base / hashlib.sha256(str(resolved).encode()).hexdigest()[:16]

    @staticmethod
    def _adopt(home: Path, user: _ServiceUser) -> None:
        """Make ``home`` (recursively, if it is not already) owned by ``user``, mode 0700."""
        if home.stat().st_uid != user.uid:
            for dirpath, dirnames, filenames in os.walk(home):
                for name in [*dirnames, *filenames]:
                    os.chown(os.path.join(dirpath, name), user.uid, user.gid, follow_symlinks=False)
            os.chown(home, user.uid, user.gid)
        home.chmod(0o700)

    def _user_can_reach(self, home: Path, user: _ServiceUser) -> bool:
        return self._run(["test", "-x", str(home), "-a", "-w", str(home)], cwd=Path("/")).returncode == 0

    def _write(self, path: Path, text: str, mode: int = 0o600) -> None:
        """Atomically write ``path`` owned by the service user."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.chmod(tmp, mode)
            user = self._service_user()
            if user is not None:
                os.chown(tmp, user.uid, user.gid)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # --------------------------------------------------------------------------------- subprocesses

    def _bin(self, tool: str) -> str:
        if self._bindir is None:
            self._bindir = find_bindir()
        return str(self._bindir / tool)

    def _run(self, args: Sequence[str], *, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``args`` as the service user (or directly), output collected through a file.

        A file rather than a pipe: the postmaster that ``pg_ctl start`` leaves behind must not hold
        our pipe open.
        """
        user = self._service_user()
        cmd = list(args)
        switch_in_child = False  # no runuser (e.g. macOS): let subprocess switch user itself
        if user is not None:
            runuser = shutil.which("runuser")
            if runuser is not None:
                cmd = [runuser, "-u", user.name, "--", *cmd]
            else:
                switch_in_child = True
        with tempfile.TemporaryFile(mode="w+") as out:
            try:
                result = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=_subprocess_env(),
                    timeout=timeout,
                    check=False,
                    user=user.uid if user is not None and switch_in_child else None,
                    group=user.gid if user is not None and switch_in_child else None,
                    extra_groups=[] if switch_in_child else None,
                )
            except FileNotFoundError as exc:
                raise LocalClusterError(f"cannot run {cmd[0]}: {exc}") from exc
            except subprocess.TimeoutExpired as exc:
                raise LocalClusterError(f"{' '.join(cmd)} timed out after {timeout:.0f}s") from exc
            out.seek(0)
            output = out.read()
        return subprocess.CompletedProcess(cmd, int(result.returncode), output, "")

    def _pg_ctl(self, home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self._run([self._bin("pg_ctl"), "-D", str(home / _DATA), *args], cwd=home, timeout=timeout)

    # ------------------------------------------------------------------------------------- cluster

    @staticmethod
    def _initialised(home: Path) -> bool:
        return (home / _DATA / "PG_VERSION").is_file()

    def _state(self, home: Path) -> dict[str, int]:
        try:
            data = json.loads((home / _STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return {key: int(value) for key, value in data.items() if isinstance(value, int)}

    def _initdb(self, home: Path) -> None:
        data = home / _DATA
        if data.exists():  # left over by an interrupted initdb
            shutil.rmtree(data)
        password_file = home / _PASSWORD_FILE
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
        major = (home / _DATA / "PG_VERSION").read_text().strip()
        version = self._run([self._bin("pg_ctl"), "--version"], cwd=home).stdout
        match = re.search(r"\(PostgreSQL\)\s+(\d+)", version)
        if match is None or match.group(1) == major:
            return
        alternative = Path(f"/usr/lib/postgresql/{major}/bin")
        if _has_tools(alternative):
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
            if not _port_free(port):
                raise LocalClusterError(f"cannot start the local cluster in {home}: {HOST}:{port} is in use")
        elif not fresh and "port" in state and _port_free(state["port"]):
            port = state["port"]
        else:
            port = _free_port()
            if "port" in state:
                log.warning("port %d is taken; the local cluster in %s moves to port %d", state["port"], home, port)
        if state.get("port") != port:
            self._write(home / _STATE_FILE, json.dumps({"port": port}) + "\n", 0o644)
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
        }
        if self.fast:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        if (Path(self._bin("postgres")).parent.parent / "lib" / "pg_stat_statements.so").is_file():
            # Slow queries per tenant for the admin API (the extension itself is created on first use).
            settings["shared_preload_libraries"] = "'pg_stat_statements'"
        text = "# Written by controlplane.localpg on every start; use ALTER SYSTEM for local changes.\n"
        text += "".join(f"{key} = {value}\n" for key, value in settings.items())
        path = home / _DATA / _CONF_FILE
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                return
        self._write(path, text)

    def _status(self, home: Path) -> bool:
        return self._pg_ctl(home, "status", timeout=30).returncode == 0

    def _running_port(self, home: Path) -> int:
        with contextlib.suppress(OSError, IndexError, ValueError):
            return int((home / _DATA / "postmaster.pid").read_text().splitlines()[3])
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

    def _stop(self, home: Path, *, force: bool = False) -> None:
        if not self._status(home):
            return
        result = self._pg_ctl(home, "stop", "-m", "fast", "-w", "-t", "60", "-s")
        if result.returncode == 0:
            return
        result = self._pg_ctl(home, "stop", "-m", "immediate", "-w", "-t", "30", "-s")
        if result.returncode == 0 or not self._status(home):
            return
        if force:
            self._kill_postmaster(home)
            return
        raise LocalClusterError(f"could not stop PostgreSQL in {home / _DATA}: {result.stdout.strip()}")

    def _kill_postmaster(self, home: Path) -> None:
        with contextlib.suppress(OSError, IndexError, ValueError):
            pid = int((home / _DATA / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except OSError as exc:
                    if exc.errno == errno.ESRCH:
                        return
                time.sleep(0.05)

    def _dsn(self, home: Path, port: int, dbname: str = "postgres") -> str:
        password = (home / _PASSWORD_FILE).read_text().strip()
        return _conninfo(host=HOST, port=port, user=SUPERUSER, password=password, dbname=dbname)


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
    _ensure_database(cluster.ensure_running(), CONTROL_DATABASE)
    return cluster.dsn(CONTROL_DATABASE)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m controlplane.localpg start|stop|status|destroy --data-dir D [--fast]``."""
    parser = argparse.ArgumentParser(prog="python -m controlplane.localpg", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "destroy"])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CARDVAULT_DATA_DIR") or ".cardvault"),
        help="the cluster lives in DATA_DIR/postgres (default: $CARDVAULT_DATA_DIR or .cardvault)",
    )
    parser.add_argument("--fast", action="store_true", help="test settings: fsync, synchronous_commit off")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="localpg: %(message)s", stream=sys.stderr)
    cluster = LocalCluster(args.data_dir / "postgres", fast=args.fast)
    try:
        if args.command == "start":
            print(start_local(args.data_dir, fast=args.fast))
        elif args.command == "stop":
            cluster.stop()
        elif args.command == "destroy":
            cluster.destroy()
        elif cluster.is_running():
            port = cluster.port()
            print(f"running on {HOST}:{port} ({cluster.home})")
        else:
            print(f"stopped ({cluster.root})" if cluster.home is not None else f"absent ({cluster.root})")
            return 3
    except ConfigError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
