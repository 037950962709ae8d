"""What the benchmarks in ``ops/bench`` share: machine CPU, ports, child processes, signals and clean-up.

Standard library only at import time (``route.py`` runs load generators and a baseline server in
subprocesses that must start light); ``drop_leftovers`` imports psycopg and the control plane when called.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

HOST = "127.0.0.1"


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """In a child: get SIGTERM if the benchmark dies (even by SIGKILL), so no server outlives it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def server_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any CARDVAULT_* setting of the caller, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARDVAULT_")}
    env.update(extra)
    return env


def drop_leftovers(
    admin: Any, server_dsn: str, control_db: str, template: str, *, drop_group_role: bool = False
) -> None:
    """Drop every tenant database and role this run made (known from its ledger), its spare databases, the
    template, the registry, and the tenants' group role if this run created it (``drop_group_role``)."""
    import psycopg
    from psycopg import sql

    from controlplane import db
    from controlplane.provisioning.catalog import TENANT_GROUP_ROLE

    exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (control_db,)).fetchone()
    if exists:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(db.with_database(server_dsn, control_db), autocommit=True) as control,
        ):
            ids = [r[0] for r in control.execute("SELECT DISTINCT tenant_id FROM tenant_operations")]
            for tenant_id in ids:
                name = sql.Identifier(f"t_{tenant_id.hex}")
                # Databases a restore replaced or made on the side: t_<hex>_<suffix>.
                pattern = f"t\\_{tenant_id.hex}\\_%"
                for (other,) in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (pattern,)):
                    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other)))
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(name))
            for spare, role in control.execute("SELECT database_name, role_name FROM spare_databases"):
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(spare)))
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (template,)).fetchone():
        admin.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(template)))
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(template)))
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(control_db)))
    if drop_group_role:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(TENANT_GROUP_ROLE)))


def stop_immediately(cluster_home: Path | None) -> None:
    """Immediate shutdown (SIGQUIT) of a throwaway cluster: no shutdown checkpoint of 1,000 fresh databases."""
    if cluster_home is None:
        return
    try:
        pid = int((cluster_home / "data" / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGQUIT)
    except (OSError, IndexError, ValueError):
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the cleanup in ``finally`` runs."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(prefix: str, dsn: str | None, bench: Callable[[str, Path], Coroutine[Any, Any, int]]) -> NoReturn:
    """Run ``bench(server_dsn, home)`` and exit with its status: against ``dsn``, or a private durable
    cluster started under a fresh ``/var/tmp/{prefix}*`` home and destroyed afterwards (also on Ctrl-C,
    SIGTERM or SIGHUP)."""
    with terminate_as_interrupt():
        started = time.perf_counter()
        home = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
        home.chmod(0o711)
        status = 1
        try:
            if dsn:
                status = asyncio.run(bench(dsn, home))
            else:
                from controlplane.localpg import LocalCluster

                cluster = LocalCluster(home / "pg")
                try:
                    status = asyncio.run(bench(cluster.ensure_running(), home))
                finally:
                    cleanup_started = time.perf_counter()
                    stop_immediately(cluster.home)
                    cluster.destroy()
                    print(
                        f"private cluster destroyed in {time.perf_counter() - cleanup_started:.1f} s", file=sys.stderr
                    )
        except KeyboardInterrupt:
            print("interrupted: cleaned up", file=sys.stderr)
            status = 130
        finally:
            shutil.rmtree(home, ignore_errors=True)
            print(f"whole run: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    sys.exit(status)


def run_clusters(prefix: str, count: int, bench: Callable[[list[Any], Path], Coroutine[Any, Any, int]]) -> NoReturn:
    """Like ``run`` with ``count`` private durable clusters (``LocalCluster`` objects, started, in order), for
    benchmarks that stop and start a server themselves: all are destroyed afterwards (also on Ctrl-C,
    SIGTERM or SIGHUP)."""
    with terminate_as_interrupt():
        started = time.perf_counter()
        home = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
        home.chmod(0o711)
        clusters: list[Any] = []
        status = 1
        try:
            from controlplane.localpg import LocalCluster

            try:
                for i in range(count):
                    clusters.append(LocalCluster(home / f"pg{i}"))
                    clusters[-1].ensure_running()
                status = asyncio.run(bench(clusters, home))
            finally:
                cleanup_started = time.perf_counter()
                for cluster in clusters:
                    stop_immediately(cluster.home)
                    cluster.destroy()
                if clusters:
                    print(
                        f"{len(clusters)} private clusters destroyed in {time.perf_counter() - cleanup_started:.1f} s",
                        file=sys.stderr,
                    )
        except KeyboardInterrupt:
            print("interrupted: cleaned up", file=sys.stderr)
            status = 130
        finally:
            shutil.rmtree(home, ignore_errors=True)
            print(f"whole run: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    sys.exit(status)
