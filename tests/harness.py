"""pytest plugin: PostgreSQL servers for the test suite (``pytest_plugins = ["tests.harness"]``).

Fixtures:

- ``pg_admin_dsn`` (session): superuser DSN (``dbname=postgres``) of the server the tests use.
  ``CARDVAULT_TEST_DATABASE_URL`` when set (the harness then touches no database at all: tests create
  and drop their own, uniquely named ones); otherwise a throwaway ``fast`` :class:`LocalCluster`
  started for the session and destroyed at its end.
- ``extra_cluster`` (function): a callable starting another throwaway server, for tests that need a
  second PostgreSQL server; each returns a :class:`LocalClusterHandle` whose ``stop()`` and ``start()``
  simulate an outage (the server comes back on the same port). All are destroyed at teardown.

Clusters are never left running: every one is destroyed by a finalizer, by an ``atexit`` hook as a
safety net, on SIGTERM (turned into KeyboardInterrupt so pytest tears down), and clusters of earlier
sessions that died without cleaning up (SIGKILL) are reaped when the next session starts.

Temporary directories come from :func:`make_temp_dir`: under ``/var/tmp`` and mode 0711 when running as
root, so the unprivileged user PostgreSQL runs as can reach them whatever the checkout's location.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest

from controlplane.localpg import LocalCluster
from controlplane.localpg.binaries import PostgresNotFound, find_bindir

TEST_URL_ENV = "CARDVAULT_TEST_DATABASE_URL"
TEMP_PREFIX = "cardvault-test-"
_OWNER_FILE = ".cardvault-test-owner"


def temp_base() -> Path:
    """Where test directories go: ``/var/tmp`` for root (reachable by the postgres user), else $TMPDIR."""
    return Path("/var/tmp") if os.geteuid() == 0 else Path(tempfile.gettempdir())


def make_temp_dir(prefix: str = TEMP_PREFIX) -> Path:
    """A new directory the PostgreSQL service user can traverse, tagged with this process as owner."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=temp_base()))
    if os.geteuid() == 0:
        path.chmod(0o711)
    owner = {"pid": os.getpid(), "host": socket.gethostname()}
    (path / _OWNER_FILE).write_text(json.dumps(owner))
    return path


def _is_cluster_root(path: Path) -> bool:
    if path.is_symlink():  # LocalCluster's fallback link (root cannot reach the directory)
        return True
    return any((path / name).exists() for name in ("cluster.json", "superuser.password", "data/PG_VERSION"))


def _cluster_roots(directory: Path, depth: int = 3) -> Iterator[Path]:
    """Cluster directories (``root`` of a LocalCluster) at most ``depth`` levels below ``directory``."""
    for child in directory.iterdir():
        if _is_cluster_root(child):
            yield child
        elif depth > 1 and child.is_dir():
            yield from _cluster_roots(child, depth - 1)


def remove_temp_dir(path: Path) -> None:
    """Destroy every local cluster under ``path`` (made by :func:`make_temp_dir`), then ``path``."""
    errors: list[str] = []
    roots = list(_cluster_roots(path)) if path.is_dir() and not path.is_symlink() else []
    for root in roots:
        try:
            LocalCluster(root).destroy()
        except Exception as exc:
            errors.append(f"{root}: {exc}")
    shutil.rmtree(path, ignore_errors=True)
    if errors:
        raise RuntimeError("could not destroy test clusters: " + "; ".join(errors))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_temp_dirs() -> None:
    """Remove test directories (and clusters) left by sessions on this host whose process is gone."""
    with contextlib.suppress(OSError):
        for path in temp_base().glob(f"{TEMP_PREFIX}*"):
            try:
                owner = json.loads((path / _OWNER_FILE).read_text())
                if path.stat().st_uid != os.geteuid() or owner.get("host") != socket.gethostname():
                    continue
                if _pid_alive(int(owner["pid"])):
                    continue
            except (OSError, ValueError, KeyError, TypeError):
                continue
            with contextlib.suppress(Exception):
                remove_temp_dir(path)


class LocalClusterHandle:
    """A throwaway fast cluster in its own temporary directory."""

    def __init__(self) -> None:
        self.directory = make_temp_dir()
        self.cluster = LocalCluster(self.directory / "pg", fast=True)
        self.port: int | None = None
        self._dsn = ""
        _LIVE.add(self)

    @property
    def dsn(self) -> str:
        """Superuser DSN (``dbname=postgres``)."""
        if not self._dsn:
            raise RuntimeError("cluster not started")
        return self._dsn

    def start(self) -> str:
        """Start (or restart after :meth:`stop`) the server, on the same port as before."""
        dsn = self.cluster.ensure_running()
        port = self.cluster.port()
        if self.port is not None and port != self.port:
            raise RuntimeError(f"cluster restarted on port {port}, expected {self.port} (port taken?)")
        self.port, self._dsn = port, dsn
        return dsn

    def stop(self, *, immediate: bool = False) -> None:
        """Stop the server (``pg_ctl stop -m fast``, or ``-m immediate``: every backend exits on the spot,
        none finishes its query); connections fail until :meth:`start`."""
        self.cluster.stop(immediate=immediate)

    def is_running(self) -> bool:
        return self.cluster.is_running()

    def destroy(self) -> None:
        """Stop the server and remove its files (idempotent)."""
        _LIVE.discard(self)
        if self.directory.exists():
            remove_temp_dir(self.directory)

    def __repr__(self) -> str:
        return f"<LocalClusterHandle {self.directory} port={self.port}>"


_LIVE: set[LocalClusterHandle] = set()


@atexit.register
def _destroy_leftovers() -> None:
    for handle in list(_LIVE):
        with contextlib.suppress(Exception):
            handle.destroy()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionstart(session: pytest.Session) -> None:
    reap_stale_temp_dirs()
    in_main = threading.current_thread() is threading.main_thread()
    if in_main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupt)  # so teardown (and cluster cleanup) runs


def new_cluster() -> LocalClusterHandle:
    """A started throwaway cluster; the caller destroys it (fixtures below do)."""
    handle = LocalClusterHandle()
    try:
        handle.start()
    except BaseException:
        handle.destroy()
        raise
    return handle


@pytest.fixture(scope="session")
def pg_admin_dsn(request: pytest.FixtureRequest) -> str:
    """Superuser DSN (dbname=postgres) of the test server."""
    url = os.environ.get(TEST_URL_ENV, "").strip()
    if url:
        return url
    handle = LocalClusterHandle()
    request.addfinalizer(handle.destroy)
    return handle.start()


@pytest.fixture
def extra_cluster() -> Iterator[Callable[[], LocalClusterHandle]]:
    """``start()`` -> a new running throwaway server; all are destroyed at teardown."""
    handles: list[LocalClusterHandle] = []

    def start() -> LocalClusterHandle:
        if os.environ.get(TEST_URL_ENV, "").strip():
            try:
                find_bindir()
            except PostgresNotFound as exc:
                pytest.fail(f"a second server needs local PostgreSQL binaries: {exc.detail}")
        handle = LocalClusterHandle()
        handles.append(handle)
        handle.start()
        return handle

    try:
        yield start
    finally:
        errors: list[str] = []
        for handle in reversed(handles):
            try:
                handle.destroy()
            except Exception as exc:
                errors.append(str(exc))
        if errors:
            raise RuntimeError("; ".join(errors))
