"""Fleet registration says exactly which server, and a server is registered once.

A DSN must name host, port, user and database (nothing is left to libpq defaults, which would reach
whatever listens on this machine's port 5432 as the process's own user). A server is identified by
``pg_control_system()``'s system identifier and its port, so the same server under another name,
address or user is refused, a DSN that comes to reach another server is noticed, and servers
registered before identities were recorded get theirs from the reconciler. ``db_servers.status`` holds
only what the code knows: ``disabled`` is refused, and old ``disabled`` rows became ``draining``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg import conninfo

from controlplane.platform import Platform
from controlplane.schemas.alembic_runner import registry_scripts
from controlplane.settings import ProvisioningSettings
from tests.conftest import make_settings
from tests.harness import LocalClusterHandle
from tests.integration.admin_support import assert_error, registry_snapshot
from tests.integration.cli_support import cli_env, run_cli
from tests.integration.tenant_support import create_database, drop_database, execute, fetch, reconcile

Client = AsyncTestClient[Any]
StartCluster = Callable[[], LocalClusterHandle]


def without(dsn: str, key: str) -> str:
    params = conninfo.conninfo_to_dict(dsn)
    del params[key]
    return conninfo.make_conninfo("", **params)


#: libpq's defaults pointed nowhere, so that even if the check regressed, a DSN leaning on them could
#: not reach this machine's own PostgreSQL (port 5432, the default socket directory).
NOWHERE = {"PGHOST": "/nonexistent-cardvault-test", "PGPORT": "1"}


@pytest.fixture
def libpq_defaults_lead_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in NOWHERE.items():
        monkeypatch.setenv(key, value)


async def test_a_dsn_must_name_host_port_user_and_database(
    libpq_defaults_lead_nowhere: None, client: Client, control_dsn: str, pg_admin_dsn: str
) -> None:
    before = registry_snapshot(control_dsn)
    # Each left to a libpq default. Without dbname, libpq would use the user's name (postgres here, a
    # database that exists): it used to register this very server again.
    for key in ("dbname", "user", "port", "host"):
        body = assert_error(
            await client.post("/admin/servers", json={"name": "other", "dsn": without(pg_admin_dsn, key)}),
            400,
            "validation_failed",
        )
        assert body["missing"] == [key] and key in body["detail"], body
    for dsn, missing in (
        ("", ["host", "port", "user", "dbname"]),
        ("host=127.0.0.1", ["port", "user", "dbname"]),
        ("postgresql://", ["host", "port", "user", "dbname"]),
        ("postgresql://127.0.0.1:1/postgres", ["user"]),
    ):
        body = assert_error(
            await client.post("/admin/servers", json={"name": "other", "dsn": dsn}), 400, "validation_failed"
        )
        assert body["missing"] == missing, (dsn, body)
    params = conninfo.conninfo_to_dict(pg_admin_dsn)
    port = params["port"]
    for dsn in (
        conninfo.make_conninfo(pg_admin_dsn, host="127.0.0.1,127.0.0.1", port=f"{port},{port}"),
        conninfo.make_conninfo(pg_admin_dsn, port="0"),
        conninfo.make_conninfo(pg_admin_dsn, port="65536"),
        conninfo.make_conninfo(pg_admin_dsn, port="fivefour"),
    ):
        assert_error(await client.post("/admin/servers", json={"name": "other", "dsn": dsn}), 400, "validation_failed")
    # Not a connection string: the error does not quote it (it may hold a password).
    body = assert_error(
        await client.post("/admin/servers", json={"name": "other", "dsn": "host=x password='hunter2-secret"}),
        400,
        "validation_failed",
    )
    assert "hunter2" not in body["detail"]
    assert registry_snapshot(control_dsn) == before


def test_the_cli_refuses_a_dsn_that_leans_on_defaults(
    control_dsn: str, pg_admin_dsn: str, tenant_template_name: str, tmp_path: Path
) -> None:
    env = cli_env(control_dsn, tenant_template_name, tmp_path / "data") | NOWHERE
    assert run_cli(env, "servers", "list").code == 0  # the first run registers the default server
    before = registry_snapshot(control_dsn)
    for dsn in ("", "host=127.0.0.1", without(pg_admin_dsn, "port"), without(pg_admin_dsn, "dbname")):
        result = run_cli(env, "servers", "add", "other", dsn)
        assert result.code == 1 and result.error()["error"] == "validation_failed", result.stderr
    assert registry_snapshot(control_dsn) == before


async def test_the_same_server_is_refused_under_another_name_address_or_user(
    client: Client, control_dsn: str, pg_admin_dsn: str, extra_cluster: StartCluster
) -> None:
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        role = f"cvtest_admin_{uuid.uuid4().hex[:8]}"
        conn.execute(f"CREATE ROLE {role} SUPERUSER LOGIN PASSWORD 'twin-pw'")
    try:
        before = registry_snapshot(control_dsn)
        for dsn in (
            pg_admin_dsn,
            conninfo.make_conninfo(pg_admin_dsn, host="localhost"),
            conninfo.make_conninfo(pg_admin_dsn, user=role, password="twin-pw"),
            conninfo.make_conninfo(pg_admin_dsn, dbname="template1"),
        ):
            body = assert_error(
                await client.post("/admin/servers", json={"name": "again", "dsn": dsn}), 409, "server_exists"
            )
            assert "already registered as 'default'" in body["detail"], body
        assert registry_snapshot(control_dsn) == before
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")

    second = extra_cluster()
    response = await client.post("/admin/servers", json={"name": "second", "dsn": second.dsn})
    assert response.status_code == 201, response.text
    again = conninfo.make_conninfo(second.dsn, host="localhost")
    body = assert_error(await client.post("/admin/servers", json={"name": "third", "dsn": again}), 409, "server_exists")
    assert "already registered as 'second'" in body["detail"]

    servers = {s["name"]: s for s in (await client.get("/admin/servers")).json()}
    assert servers["default"]["port"] == int(conninfo.conninfo_to_dict(pg_admin_dsn)["port"])
    assert servers["second"]["port"] == second.port
    identities = {(s["system_identifier"], s["port"]) for s in servers.values()}
    assert len(identities) == 2 and all(sid and sid.isdigit() for sid, _ in identities)
    # The registry itself refuses one server under two rows.
    with pytest.raises(psycopg.errors.UniqueViolation):
        await execute(
            control_dsn,
            "UPDATE db_servers SET system_identifier = d.system_identifier, port = d.port"
            " FROM db_servers d WHERE d.name = 'default' AND db_servers.name = 'second'",
        )


async def test_a_dsn_that_comes_to_reach_another_server_is_noticed(
    platform: Platform, control_dsn: str, pg_admin_dsn: str, extra_cluster: StartCluster
) -> None:
    second = extra_cluster()
    async with platform.control.connection() as conn:
        server = await platform.fleet.register(conn, "second", second.dsn)
    # The registered DSN now leads to the default server (an address reused, a wrong edit).
    await execute(
        control_dsn,
        "UPDATE db_servers SET dsn_encrypted = %s WHERE id = %s",
        (platform.box.encrypt(pg_admin_dsn), server.id),
    )
    platform.fleet.forget(server.id)
    report = await reconcile(platform, fix=True)
    (finding,) = [f for f in report.findings if f.server == "second"]
    assert finding.kind == "server_unreachable" and "another PostgreSQL server" in finding.detail, finding


async def test_servers_registered_before_identities_get_them_from_the_reconciler(
    platform: Platform, control_dsn: str, pg_admin_dsn: str
) -> None:
    (default,) = await fetch(control_dsn, "SELECT * FROM db_servers")
    await execute(control_dsn, "UPDATE db_servers SET system_identifier = NULL, port = NULL")
    # What fuzzing once did: the same server registered again under another name, before identities.
    await execute(
        control_dsn,
        "INSERT INTO db_servers (id, name, dsn_encrypted, dsn_display, status)"
        " SELECT %s, 'twin', dsn_encrypted, dsn_display, 'draining' FROM db_servers WHERE name = 'default'",
        (uuid.uuid4(),),
    )

    def identity_findings(findings: list[Any]) -> list[tuple[str, str]]:
        return [(f.server, f.action) for f in findings if f.kind == "server_identity"]

    assert identity_findings((await reconcile(platform, fix=False)).findings) == [
        ("default", "reported"),
        ("twin", "reported"),
    ]
    report = await reconcile(platform, fix=True)
    found = identity_findings(report.findings)
    assert found[0] == ("default", "recorded")
    assert found[1][0] == "twin" and "the same server under two names" in found[1][1], found
    rows = {r["name"]: r for r in await fetch(control_dsn, "SELECT * FROM db_servers")}
    assert (rows["default"]["system_identifier"], rows["default"]["port"]) == (
        default["system_identifier"],
        default["port"],
    )
    assert (rows["twin"]["system_identifier"], rows["twin"]["port"]) == (None, None)


async def test_the_default_server_is_registered_with_what_the_control_connection_reached(
    pg_admin_dsn: str, control_dsn: str, tenant_template_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``CARDVAULT_DATABASE_URL`` may lean on libpq's environment; the registered DSN may not."""
    port = conninfo.conninfo_to_dict(pg_admin_dsn)["port"]
    monkeypatch.setenv("PGPORT", str(port))
    settings = make_settings(without(control_dsn, "port"), tenant_template_name)
    async with Platform.open(settings, migrate=False) as platform, platform.control.connection() as conn:
        default = await platform.fleet.get(conn, "default")
    params = conninfo.conninfo_to_dict(default.dsn_display)
    assert (params["host"], params["port"], params["dbname"]) == ("127.0.0.1", str(port), "postgres")
    assert params["user"] == conninfo.conninfo_to_dict(pg_admin_dsn)["user"]
    assert default.port == int(port)


# -- status --------------------------------------------------------------------------------------------


@pytest.fixture
def registry_at_0006(pg_admin_dsn: str) -> Iterator[str]:
    """A control database migrated to the revision before server identities."""
    name = f"cvtest_reg_{uuid.uuid4().hex[:12]}"
    dsn = create_database(pg_admin_dsn, name)
    registry_scripts(ProvisioningSettings()).upgrade(dsn, "0006")
    yield dsn
    drop_database(pg_admin_dsn, name)


async def test_disabled_is_no_server_status(control_dsn: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        await execute(
            control_dsn,
            "INSERT INTO db_servers (id, name, dsn_encrypted, dsn_display, status)"
            " VALUES (%s, 'off', 'x', 'host=off', 'disabled')",
            (uuid.uuid4(),),
        )


def test_disabled_servers_become_draining_and_every_reader_copes(
    registry_at_0006: str, tenant_template_name: str, tmp_path: Path
) -> None:
    with psycopg.connect(registry_at_0006, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO db_servers (id, name, dsn_encrypted, dsn_display, status)"
            " VALUES (%s, 'old', 'x', 'host=old', 'disabled')",
            (uuid.uuid4(),),
        )
    env = cli_env(registry_at_0006, tenant_template_name, tmp_path / "data")
    # The CLI migrates the registry on start, then lists: the disabled row became draining.
    result = run_cli(env, "servers", "list", "--json")
    assert result.code == 0, result.stderr
    listed = result.json()
    assert (listed["name"], listed["status"]) == ("old", "draining")
    with psycopg.connect(registry_at_0006) as conn:
        assert conn.execute("SELECT status FROM db_servers").fetchall() == [("draining",)]
    # And the revision goes down and up again.
    scripts = registry_scripts(ProvisioningSettings())
    assert scripts.downgrade(registry_at_0006, "0006") == "0006"
    assert scripts.upgrade(registry_at_0006) == scripts.head()
