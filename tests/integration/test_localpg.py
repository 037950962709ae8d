"""Private PostgreSQL clusters for real: init, reuse, restart, authentication, fallback, CLI, fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import LiteralString

import psycopg
import pytest
from psycopg import conninfo

from controlplane.localpg import LocalCluster, home, start_local, system
from tests.harness import LocalClusterHandle, make_temp_dir, remove_temp_dir

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    """A temporary directory the PostgreSQL user can reach; its clusters are destroyed afterwards."""
    path = make_temp_dir()
    try:
        yield path
    finally:
        remove_temp_dir(path)
    assert not path.exists()


@pytest.fixture
def no_ambient_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """libpq must not find a password anywhere but in the DSN."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))


def query(dsn: str, sql: LiteralString) -> object:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]


def without(dsn: str, key: str, **changes: str) -> str:
    params = conninfo.conninfo_to_dict(dsn)
    params.pop(key, None)
    params.update(changes)
    return conninfo.make_conninfo("", **params)


def test_ensure_running_reuses_the_running_cluster(cluster_dir: Path) -> None:
    cluster = LocalCluster(cluster_dir / "pg", fast=True)
    dsn = cluster.ensure_running()
    started = query(dsn, "SELECT pg_postmaster_start_time()")
    port = cluster.port()

    again = LocalCluster(cluster_dir / "pg", fast=True)  # as a second `make run` would
    assert again.ensure_running() == dsn
    assert again.port() == port
    assert query(dsn, "SELECT pg_postmaster_start_time()") == started
    assert conninfo.conninfo_to_dict(dsn)["host"] == "127.0.0.1"
    assert conninfo.conninfo_to_dict(dsn)["dbname"] == "postgres"
    assert query(dsn, "SHOW max_connections") == "300"
    assert query(dsn, "SHOW fsync") == "off"
    assert query(dsn, "SHOW synchronous_commit") == "off"
    assert query(dsn, "SHOW full_page_writes") == "off"
    assert query(dsn, "SHOW listen_addresses") == "127.0.0.1"
    assert query(dsn, "SHOW unix_socket_directories") == ""
    assert query(dsn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is True


def test_stop_then_ensure_running_restarts_on_the_same_port(cluster_dir: Path) -> None:
    cluster = LocalCluster(cluster_dir / "pg", fast=True)
    dsn = cluster.ensure_running()
    started = query(dsn, "SELECT pg_postmaster_start_time()")
    assert cluster.is_running()

    cluster.stop()
    assert not cluster.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    cluster.stop()  # already stopped: no-op

    assert cluster.ensure_running() == dsn
    assert cluster.is_running()
    assert query(dsn, "SELECT pg_postmaster_start_time()") != started


@pytest.mark.usefixtures("no_ambient_password")
def test_persistent_cluster_requires_a_password_over_tcp(cluster_dir: Path) -> None:
    cluster = LocalCluster(cluster_dir / "pg")
    dsn = cluster.ensure_running()
    assert query(dsn, "SELECT current_user") == "postgres"
    assert query(dsn, "SHOW fsync") == "on"
    assert query(dsn, "SHOW max_connections") == "300"

    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(without(dsn, "password"), connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(without(dsn, "password", password="wrong"), connect_timeout=5)

    home = cluster.home
    assert home is not None
    password_file = home / "superuser.password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert password_file.read_text().strip() == conninfo.conninfo_to_dict(dsn)["password"]
    if os.geteuid() == 0:  # files belong to the unprivileged user PostgreSQL runs as
        owner = system.service_user()
        assert owner is not None
        assert {p.stat().st_uid for p in [home, *home.iterdir()]} == {owner.uid}
        assert query(dsn, "SELECT pg_catalog.current_setting('data_directory')") == str(home / "data")


def test_destroy_removes_the_cluster(cluster_dir: Path) -> None:
    cluster = LocalCluster(cluster_dir / "pg", fast=True)
    dsn = cluster.ensure_running()
    cluster.destroy()
    assert not cluster.is_running()
    assert not (cluster_dir / "pg").exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    cluster.destroy()  # idempotent


def test_unreachable_directory_falls_back_to_a_reachable_one(cluster_dir: Path) -> None:
    """As root the cluster runs as an unprivileged user, who cannot traverse a 0700 directory: the
    cluster goes to the fallback location behind a symlink. Anyone else runs it in place."""
    private = cluster_dir / "private"
    private.mkdir(mode=0o700)  # the postgres user cannot traverse it
    cluster = LocalCluster(private / "pg", fast=True)
    dsn = cluster.ensure_running()
    assert query(dsn, "SELECT 1") == 1
    link = private / "pg"
    if os.geteuid() != 0:
        assert not link.is_symlink()  # our own directory: no fallback needed
        cluster.destroy()
        return

    assert link.is_symlink()
    target = Path(os.readlink(link))
    assert target.parent == home.FALLBACK_BASE_FAST
    assert cluster.home == target
    assert LocalCluster(private / "pg", fast=True).ensure_running() == dsn  # the next run finds it

    cluster.destroy()
    assert not link.exists() and not link.is_symlink()
    assert not target.exists()


@pytest.mark.usefixtures("no_ambient_password")
def test_start_local_creates_the_cardvault_database(cluster_dir: Path) -> None:
    data_dir = cluster_dir / "data"
    dsn = start_local(data_dir, fast=True)
    assert conninfo.conninfo_to_dict(dsn)["dbname"] == "cardvault"
    assert query(dsn, "SELECT current_database()") == "cardvault"
    assert start_local(data_dir, fast=True) == dsn  # second run: reuses cluster and database
    assert (data_dir / "postgres").exists()


def test_cli_start_status_stop_destroy(cluster_dir: Path) -> None:
    data_dir = cluster_dir / "data"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controlplane.localpg", *args, "--data-dir", str(data_dir), "--fast"],
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )

    started = cli("start")
    assert started.returncode == 0, started.stderr
    dsn = started.stdout.strip()
    assert "\n" not in dsn
    assert query(dsn, "SELECT current_database()") == "cardvault"
    assert cli("start").stdout.strip() == dsn

    assert cli("status").returncode == 0
    assert cli("stop").returncode == 0
    stopped = cli("status")
    assert (stopped.returncode, stopped.stdout.split()[0]) == (3, "stopped")
    assert cli("destroy").returncode == 0
    absent = cli("status")
    assert (absent.returncode, absent.stdout.split()[0]) == (3, "absent")
    assert not (data_dir / "postgres").exists()


def test_pg_admin_dsn_is_a_superuser(pg_admin_dsn: str) -> None:
    assert query(pg_admin_dsn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is True


def test_extra_cluster_survives_an_outage(pg_admin_dsn: str, extra_cluster: Callable[[], LocalClusterHandle]) -> None:
    other = extra_cluster()
    assert other.dsn != pg_admin_dsn
    assert query(other.dsn, "SELECT 1") == 1

    other.stop()
    assert not other.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(other.dsn, connect_timeout=2)

    assert other.start() == other.dsn
    assert query(other.dsn, "SELECT 1") == 1
