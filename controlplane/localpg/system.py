"""What the local cluster needs of the operating system: free ports, the unprivileged user PostgreSQL runs as
when we are root, a clean environment for its tools, directory locks, and libpq connection strings."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from controlplane.errors import ConfigError

log = logging.getLogger("controlplane.localpg")

#: The address every local cluster listens on (TCP only).
HOST = "127.0.0.1"
#: Service users tried, in order, when running as root (the last one is created if none exists).
SERVICE_USERS = ("postgres", "cardvault")
_PORT_RANGE = (20000, 32000)  # below the Linux (32768+) and macOS (49152+) ephemeral port ranges


class LocalClusterError(ConfigError):
    """The local cluster could not be initialised, started or stopped."""

    code = "local_postgres_failed"


def conninfo(**params: object) -> str:
    """A libpq keyword/value string (values quoted when needed)."""

    def quote(value: str) -> str:
        if value and re.fullmatch(r"[A-Za-z0-9_.@:/+-]+", value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{key}={quote(str(value))}" for key, value in params.items())


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # PostgreSQL sets SO_REUSEADDR too, so connections in TIME_WAIT do not block it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    for _ in range(200):
        port = secrets.randbelow(_PORT_RANGE[1] - _PORT_RANGE[0]) + _PORT_RANGE[0]
        if port_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gid: int


def service_user() -> ServiceUser | None:
    """The user PostgreSQL runs as when we are root (created if needed); None when not root."""
    if os.geteuid() != 0:
        return None
    for name in SERVICE_USERS:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return ServiceUser(name, entry.pw_uid, entry.pw_gid)
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
    return ServiceUser(name, entry.pw_uid, entry.pw_gid)


def subprocess_env() -> dict[str, str]:
    """Our environment without libpq/server variables (PGPORT, PGDATA, ...) and with the C locale."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANGUAGE", None)
    return env


@contextlib.contextmanager
def flock(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` (serialises concurrent start/stop of one cluster)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
