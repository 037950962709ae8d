"""Finding PostgreSQL binaries and explaining what to install when there are none (no server started)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from psycopg import conninfo

from controlplane.errors import ConfigError
from controlplane.localpg import LocalCluster
from controlplane.localpg.binaries import BINDIR_ENV, PostgresNotFound, find_bindir, install_hint
from controlplane.localpg.system import conninfo as local_conninfo


def test_find_bindir_finds_initdb_and_pg_ctl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BINDIR_ENV, raising=False)
    bindir = find_bindir()
    assert (bindir / "initdb").is_file()
    assert (bindir / "pg_ctl").is_file()
    version = subprocess.run([bindir / "pg_ctl", "--version"], capture_output=True, text=True, check=True)
    assert "PostgreSQL" in version.stdout


def test_bindir_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BINDIR_ENV, raising=False)
    bindir = find_bindir()
    monkeypatch.setenv(BINDIR_ENV, str(bindir))
    assert find_bindir() == bindir


def test_empty_bindir_env_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(BINDIR_ENV, str(tmp_path))
    with pytest.raises(PostgresNotFound) as caught:
        find_bindir()
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError)
    assert str(tmp_path) in message
    assert install_hint() in message
    assert "install" in message
    assert caught.value.to_json()["error"] == "postgres_not_found"


def test_cluster_without_binaries_fails_before_touching_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(BINDIR_ENV, str(empty))
    cluster = LocalCluster(tmp_path / "pg")
    with pytest.raises(PostgresNotFound):
        cluster.ensure_running()
    assert not (tmp_path / "pg").exists()
    assert not cluster.is_running()
    cluster.stop()  # no cluster: nothing to do, nothing created
    assert not (tmp_path / "pg").exists()


@pytest.mark.parametrize(
    ("system", "release", "expected"),
    [
        ("Darwin", {}, "brew install postgresql@15"),
        ("Linux", {"ID": "debian"}, "apt-get install postgresql"),
        ("Linux", {"ID": "pop", "ID_LIKE": "ubuntu debian"}, "apt-get install postgresql"),
        ("Linux", {"ID": "fedora"}, "dnf install postgresql-server"),
        ("Linux", {"ID": "alpine"}, "apk add postgresql"),
        ("Linux", {}, "apt-get install postgresql"),
        ("Linux", {}, "brew install postgresql@15"),
    ],
)
def test_install_hint(system: str, release: dict[str, str], expected: str) -> None:
    assert expected in install_hint(system, release)


def test_conninfo_quotes_what_libpq_needs_quoted() -> None:
    text = local_conninfo(host="127.0.0.1", port=5999, password="a b'c\\d", dbname="")
    assert conninfo.conninfo_to_dict(text) == {
        "host": "127.0.0.1",
        "port": "5999",
        "password": "a b'c\\d",
        "dbname": "",
    }
    assert local_conninfo(user="postgres", password="Ab-_9") == "user=postgres password=Ab-_9"
