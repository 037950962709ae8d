"""PgBouncer in front of the test server: the control plane writes its files, reloads it after
provisioning and purge, and the tenant API works through it (a real PgBouncer, started on those files).
"""

from __future__ import annotations

import configparser
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from controlplane.fleet.pgbouncer_models import ADMIN_USER
from controlplane.http.state import TENANT_POOLS_STATE_KEY
from controlplane.platform import Platform
from controlplane.pools.connection import PGBOUNCER_APPLICATION_NAME
from tests.conftest import eventually
from tests.integration.cli_support import cli_env, ok, run_cli
from tests.integration.pgbouncer_support import PgBouncerProcess, pgbouncer
from tests.integration.tenant_support import provision_with_admin, tenant_password

Client = AsyncTestClient[Any]


@pytest.fixture
def bouncer() -> Iterator[PgBouncerProcess]:
    with pgbouncer() as running:
        yield running


def configured_databases(directory: Path) -> set[str]:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(directory / "pgbouncer.ini")
    return set(ini["databases"])


async def admin_password(platform: Platform) -> str:
    async with platform.control.connection() as conn:
        cur = await conn.execute("SELECT admin_password_encrypted FROM server_pgbouncers")
        row = await cur.fetchone()
    assert row is not None
    return platform.box.decrypt(row["admin_password_encrypted"])


async def role_of(platform: Platform, tenant: dict[str, Any]) -> tuple[str, str, str]:
    """(role, password, database) of a tenant the admin API created."""
    async with platform.control.connection() as conn:
        cur = await conn.execute("SELECT role_name, database_name FROM tenants WHERE id = %s", (tenant["id"],))
        row = await cur.fetchone()
    assert row is not None
    return row["role_name"], await tenant_password(platform, uuid.UUID(tenant["id"])), row["database_name"]


def refused(dsn: str) -> str:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(dsn).close()
    return str(caught.value)


async def test_tenant_api_works_through_pgbouncer_which_follows_provisioning_and_purge(
    client: Client, platform: Platform, bouncer: PgBouncerProcess, pg_admin_dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "pgbouncer.ini").write_text("[pgbouncer]\n")  # somebody else's: never overwritten
    for wrong, field in (({"address": "127.0.0.1"}, "address"), ({"config_dir": str(tmp_path / "theirs")}, "dir")):
        body = {"address": bouncer.address, "config_dir": str(bouncer.directory)} | wrong
        refusal = await client.put("/admin/servers/default/pgbouncer", json=body)
        assert refusal.status_code == 400 and refusal.json()["error"] == "validation_failed", (field, refusal.text)
    assert (tmp_path / "theirs" / "pgbouncer.ini").read_text() == "[pgbouncer]\n"
    assert (await client.get("/admin/servers/default/pgbouncer")).status_code == 404

    response = await client.put(
        "/admin/servers/default/pgbouncer", json={"address": bouncer.address, "config_dir": str(bouncer.directory)}
    )
    assert response.status_code == 200, response.text
    first = response.json()
    # Written (PgBouncer is not running yet, so not reloaded: it reads the files when it starts).
    assert first["written"] and not first["reloaded"] and "did not reload" in first["error"], first
    bouncer.start()
    console = await admin_password(platform)
    for name in ("pgbouncer.ini", "userlist.txt"):
        assert stat.S_IMODE((bouncer.directory / name).stat().st_mode) == 0o600
    userlist = (bouncer.directory / "userlist.txt").read_text()
    assert console not in userlist and f'"{ADMIN_USER}" "SCRAM-SHA-256$' in userlist

    acme, acme_auth = await provision_with_admin(client, "acme")
    globex, globex_auth = await provision_with_admin(client, "globex")
    acme_role, acme_pw, acme_db = await role_of(platform, acme)
    globex_role, globex_pw, globex_db = await role_of(platform, globex)
    await eventually(
        lambda: {acme_db, globex_db} <= configured_databases(bouncer.directory), "both tenants in pgbouncer.ini"
    )
    userlist = (bouncer.directory / "userlist.txt").read_text()
    assert f'"{acme_role}" "SCRAM-SHA-256$' in userlist and f'"{globex_role}" "SCRAM-SHA-256$' in userlist
    assert acme_pw not in userlist and globex_pw not in userlist  # verifiers only

    # The tenant API, end to end, through PgBouncer.
    created = await client.post("/t/acme/api/cards", json={"cardnumber": "7"}, headers=acme_auth)
    assert created.status_code == 201, created.text
    listed = await client.get("/t/acme/api/cards", headers=acme_auth)
    assert listed.status_code == 200 and [c["cardnumber"] for c in listed.json()["items"]] == ["7"], listed.text
    assert (await client.get("/t/globex/api/cards", headers=globex_auth)).json()["items"] == []
    for _ in range(8):  # the same statements again and again: nothing prepared on a shared server session
        assert (await client.get("/t/acme/api/cards", headers=acme_auth)).status_code == 200
    tenant_pools = client.app.state[TENANT_POOLS_STATE_KEY]
    async with tenant_pools.connection(uuid.UUID(acme["id"])) as conn:
        assert conn.info.port == bouncer.port and conn.prepare_threshold is None
    pools = {(p["database"], p["user"]) for p in bouncer.show(console, "POOLS")}
    assert (acme_db, acme_role) in pools and (globex_db, globex_role) in pools, pools
    with psycopg.connect(pg_admin_dsn) as conn:
        seen = conn.execute(
            "SELECT DISTINCT application_name FROM pg_stat_activity WHERE usename = %s", (acme_role,)
        ).fetchall()
    assert seen == [(PGBOUNCER_APPLICATION_NAME,)], seen  # the server's sessions are PgBouncer's

    # Authentication is per tenant role: acme's role reaches no other database, and no password but its own.
    assert "authentication failed" in refused(bouncer.dsn(acme_role, "not-the-password", acme_db))
    refusal = refused(bouncer.dsn(acme_role, acme_pw, globex_db))
    assert f'permission denied for database "{globex_db}"' in refusal, refusal  # the server's own refusal
    with psycopg.connect(bouncer.dsn(acme_role, acme_pw, acme_db)) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (acme_role, acme_db)

    # Purged: its entry and its role leave PgBouncer's files, and PgBouncer (reloaded) refuses the role.
    assert (await client.delete("/admin/tenants/globex", params={"now": "true"})).status_code in (200, 204)
    await eventually(lambda: globex_db not in configured_databases(bouncer.directory), "globex gone from the ini")
    assert f'"{globex_role}"' not in (bouncer.directory / "userlist.txt").read_text()
    assert acme_db in configured_databases(bouncer.directory)
    await eventually(
        lambda: globex_db not in {d["name"] for d in bouncer.show(console, "DATABASES")}, "pgbouncer reloaded"
    )
    refused(bouncer.dsn(globex_role, globex_pw, globex_db))
    assert (await client.get("/t/acme/api/cards", headers=acme_auth)).status_code == 200

    # Removed: tenant connections go to the server directly again (every pool of the server is replaced).
    assert (await client.delete("/admin/servers/default/pgbouncer")).status_code == 204

    async def direct() -> bool:
        async with tenant_pools.connection(uuid.UUID(acme["id"])) as conn:
            return conn.info.port != bouncer.port and conn.prepare_threshold is not None

    await eventually(direct, "acme's pool connects to the server itself")
    assert (await client.get("/t/acme/api/cards", headers=acme_auth)).status_code == 200


def test_the_cli_sets_shows_and_removes_a_servers_pgbouncer(
    control_dsn: str, tenant_template_name: str, tmp_path: Path, bouncer: PgBouncerProcess
) -> None:
    env = cli_env(control_dsn, tenant_template_name, tmp_path / "data")
    directory = str(bouncer.directory)
    set_ = ok(run_cli(env, "servers", "pgbouncer", "default", bouncer.address, "--dir", directory, "--json")).json()
    # PgBouncer is not running: the files are written (for it to start on), the reload is reported as failed.
    assert (set_["server"], set_["address"], set_["written"], set_["reloaded"]) == (
        "default",
        bouncer.address,
        True,
        False,
    )
    owner = bouncer.directory.stat()
    for name in ("pgbouncer.ini", "userlist.txt"):
        written = (bouncer.directory / name).stat()
        assert stat.S_IMODE(written.st_mode) == 0o600 and (written.st_uid, written.st_gid) == (
            owner.st_uid,
            owner.st_gid,
        )
    shown = ok(run_cli(env, "servers", "pgbouncer", "default", "--json")).json()
    assert shown == {"server": "default", "address": bouncer.address, "config_dir": directory}
    removed = ok(run_cli(env, "servers", "pgbouncer", "default", "--remove", "--json")).json()
    assert removed == {"server": "default", "address": None}
    with psycopg.connect(control_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM server_pgbouncers").fetchone() == (0,)
