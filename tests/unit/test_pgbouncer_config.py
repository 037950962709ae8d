"""PgBouncer's files as the control plane renders and writes them (no PgBouncer needed: the real one runs in
``tests/integration/test_pgbouncer.py``)."""

from __future__ import annotations

import configparser
import stat
from pathlib import Path

import pytest

from controlplane.crypto import new_password, tenant_role_verifier
from controlplane.errors import ValidationFailed
from controlplane.fleet import pgbouncer_config as files
from controlplane.fleet.pgbouncer_models import ADMIN_USER, PgBouncerAddress
from controlplane.fleet.tls import ServerTls
from controlplane.settings import PoolSettings

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def parsed(text: str) -> configparser.ConfigParser:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(text)
    return ini


def test_addresses_are_host_and_port() -> None:
    assert PgBouncerAddress.parse("127.0.0.1:6432") == ("127.0.0.1", 6432)
    assert PgBouncerAddress.parse("[::1]:6432") == ("::1", 6432)
    assert str(PgBouncerAddress("::1", 6432)) == "[::1]:6432"
    for wrong in ("127.0.0.1", ":6432", "h:0", "h:70000", "h:port", "a b:1", "h'x:1"):
        with pytest.raises(ValidationFailed):
            PgBouncerAddress.parse(wrong)


def test_the_ini_has_one_transaction_mode_entry_per_tenant_database_on_the_server(tmp_path: Path) -> None:
    text = files.render_ini(
        address=PgBouncerAddress("127.0.0.1", 6432),
        config_dir=tmp_path,
        server_dsn="host=db.internal port=5433 user=admin password=secret dbname=postgres",
        tls=ServerTls(sslmode="verify-full", root_cert=PEM),
        databases=["t_b", "t_a", "bad name; x"],
        pools=PoolSettings(per_tenant_max=3, connection_budget=50, idle_timeout=60.0),
        statement_timeout=30.0,
    )
    assert text.startswith(files.HEADER)
    ini = parsed(text)
    assert list(ini["databases"]) == ["t_a", "t_b"]  # a name that is no plain identifier is left out
    assert ini["databases"]["t_a"] == (
        "host=db.internal port=5433 dbname=t_a connect_query='SET statement_timeout = 30000'"
    )
    settings = ini["pgbouncer"]
    assert (settings["listen_addr"], settings["listen_port"], settings["pool_mode"]) == (
        "127.0.0.1",
        "6432",
        "transaction",
    )
    assert settings["auth_type"] == "scram-sha-256" and settings["admin_users"] == ADMIN_USER
    assert settings["auth_file"] == str(tmp_path / files.USERLIST_FILE)
    assert (settings["default_pool_size"], settings["max_db_connections"]) == ("3", "3")
    assert settings["server_tls_sslmode"] == "verify-full"
    assert settings["server_tls_ca_file"] == str(tmp_path / files.ROOT_CERT_FILE)
    assert "secret" not in text and "admin" not in ini["databases"]["t_a"]


@pytest.mark.parametrize(
    ("databases", "expected"),
    [(0, 3), (2, 3), (16, 3), (17, 2), (25, 2), (26, 1), (50, 1), (10_000, 1)],
)
def test_pgbouncer_keeps_all_tenant_databases_within_the_budget_while_it_can(databases: int, expected: int) -> None:
    pools = PoolSettings(per_tenant_max=3, connection_budget=50)
    size = files.server_pool_size(pools, databases)
    assert size == expected
    assert databases * size <= pools.connection_budget or size == 1  # past the budget: one connection each


def test_the_rendered_pool_size_follows_the_number_of_tenant_databases(tmp_path: Path) -> None:
    def pool_size(count: int) -> tuple[str, str]:
        text = files.render_ini(
            address=PgBouncerAddress("127.0.0.1", 6432),
            config_dir=tmp_path,
            server_dsn="host=db.internal port=5433 dbname=postgres",
            tls=ServerTls(),
            databases=[f"t_{i}" for i in range(count)],
            pools=PoolSettings(per_tenant_max=2, connection_budget=10, idle_timeout=60.0),
            statement_timeout=30.0,
        )
        settings = parsed(text)["pgbouncer"]
        return settings["default_pool_size"], settings["max_db_connections"]

    assert pool_size(4) == ("2", "2")
    assert pool_size(6) == ("1", "1")


def test_the_userlist_has_the_servers_own_verifiers_and_no_password() -> None:
    admin, first, second = new_password(), new_password(), new_password()
    text = files.render_userlist(admin, [("t_b", second), ("t_a", first)])
    lines = text.splitlines()
    assert lines[0].startswith(f'"{ADMIN_USER}" "SCRAM-SHA-256$4096:')
    assert lines[1:] == [f'"t_a" "{tenant_role_verifier(first)}"', f'"t_b" "{tenant_role_verifier(second)}"']
    assert not any(secret in text for secret in (admin, first, second))
    # The same registry renders the same bytes: an unchanged configuration is neither written nor reloaded.
    assert files.render_userlist(admin, [("t_a", first), ("t_b", second)]) == text


def test_tenant_role_verifiers_are_the_same_for_the_same_password_only() -> None:
    password = new_password()
    assert tenant_role_verifier(password) == tenant_role_verifier(password)
    salts = {tenant_role_verifier(p).split("$")[1].split(":")[1] for p in (password, new_password())}
    assert len(salts) == 2


def test_files_are_written_private_and_only_when_they_change(tmp_path: Path) -> None:
    path = tmp_path / files.INI_FILE
    assert files.write_private(path, "one") is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "one"
    assert files.write_private(path, "one") is False
    path.chmod(0o644)
    assert files.write_private(path, "one") is True and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert files.write_private(path, "two") is True and path.read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == [files.INI_FILE]  # no temporary file left


def test_only_an_empty_directory_or_one_written_here_is_used(tmp_path: Path) -> None:
    assert files.usable_directory(tmp_path)
    assert not files.usable_directory(tmp_path / "missing")
    (tmp_path / "other.conf").write_text("x")
    assert not files.usable_directory(tmp_path)
    (tmp_path / files.INI_FILE).write_text("[pgbouncer]\n")
    assert not files.usable_directory(tmp_path)
    (tmp_path / files.INI_FILE).write_text(files.HEADER + "\n[databases]\n")
    assert files.usable_directory(tmp_path)
