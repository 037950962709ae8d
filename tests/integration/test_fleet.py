"""The fleet: a second PostgreSQL server, placement, draining, and an outage of that server.

The default server is the test cluster; ``extra_cluster()`` starts the second one. Everything goes
through the admin API as an operator would, and is checked on the servers themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg import conninfo

from tests.harness import LocalClusterHandle
from tests.integration.admin_support import HEAD, assert_error, create, registry_snapshot
from tests.integration.cli_support import cli_env, run_cli
from tests.integration.tenant_support import tenant_dsn

Client = AsyncTestClient[Any]
StartCluster = Callable[[], LocalClusterHandle]


def databases_and_roles(admin_dsn: str) -> tuple[set[str], set[str]]:
    """Tenant-named (``t_*``) databases and roles on a server."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        databases = {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'")}
        roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 't\\_%'")}
    return databases, roles


async def add_server(client: Client, name: str, dsn: str) -> dict[str, Any]:
    response = await client.post("/admin/servers", json={"name": name, "dsn": dsn})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_rights_are_checked_when_adding_a_server(
    client: Client, control_dsn: str, extra_cluster: StartCluster
) -> None:
    second = extra_cluster()
    with psycopg.connect(second.dsn, autocommit=True) as conn:
        conn.execute("CREATE ROLE plain LOGIN PASSWORD 'plain-pw'")
        conn.execute("CREATE ROLE dbonly LOGIN CREATEDB PASSWORD 'dbonly-pw'")
        conn.execute("CREATE ROLE manager LOGIN CREATEDB CREATEROLE PASSWORD 'manager-pw'")
    before = registry_snapshot(control_dsn)
    for user in ("plain", "dbonly"):
        dsn = conninfo.make_conninfo(second.dsn, user=user, password=f"{user}-pw")
        body = assert_error(
            await client.post("/admin/servers", json={"name": "second", "dsn": dsn}), 400, "validation_failed"
        )
        assert "CREATEDB" in body["detail"]
    wrong_password = conninfo.make_conninfo(second.dsn, user="manager", password="nope")
    assert_error(
        await client.post("/admin/servers", json={"name": "second", "dsn": wrong_password}), 400, "validation_failed"
    )
    manager = conninfo.make_conninfo(second.dsn, user="manager", password="manager-pw")
    # CREATEDB and CREATEROLE, but postgres and template1 belong to the superuser: the manager could
    # not keep tenant roles out of them, so the server is refused and nothing on it changes.
    body = assert_error(
        await client.post("/admin/servers", json={"name": "second", "dsn": manager}), 400, "validation_failed"
    )
    assert "postgres (owner" in body["detail"] and "template1 (owner" in body["detail"], body
    assert "REVOKE CONNECT" in body["detail"]
    assert {"postgres", "template1"} <= public_databases(second.dsn)
    assert registry_snapshot(control_dsn) == before

    # The owner closes them to PUBLIC (the manager keeps its maintenance database): now it is enough.
    with psycopg.connect(second.dsn, autocommit=True) as conn:
        conn.execute("GRANT CONNECT ON DATABASE postgres TO manager")
        conn.execute("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC")
        conn.execute("REVOKE CONNECT ON DATABASE template1 FROM PUBLIC")
    added = await add_server(client, "second", manager)
    assert added["status"] == "active" and "manager-pw" not in added["dsn_display"]
    assert public_databases(second.dsn) == set()
    assert (await client.post("/admin/servers/default/drain")).status_code == 200
    assert (await create(client, "managed"))["server_name"] == "second"


def public_databases(admin_dsn: str) -> set[str]:
    """Databases of a server that PUBLIC (so every role) may connect to."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND has_database_privilege('public', oid, 'CONNECT')"
        ).fetchall()
    return {r[0] for r in rows}


async def test_placement_draining_and_a_tenant_on_the_second_server(
    client: Client, control_dsn: str, pg_admin_dsn: str, extra_cluster: StartCluster
) -> None:
    second = extra_cluster()
    await add_server(client, "second", second.dsn)

    # Placement: the active server with the fewest tenants (ties by name), so it alternates.
    placed = [(await create(client, f"shop-{i}"))["server_name"] for i in range(4)]
    assert placed == ["default", "second", "default", "second"]
    servers = {s["name"]: s for s in (await client.get("/admin/servers")).json()}
    assert (servers["default"]["tenants"], servers["second"]["tenants"]) == (2, 2)
    assert servers["default"]["template_revision"] == servers["second"]["template_revision"] == HEAD

    tenants = {t["slug"]: t for t in (await client.get("/admin/tenants")).json()["items"]}
    on_second = {t["database_name"] for t in tenants.values() if t["server_name"] == "second"}
    on_default = {t["database_name"] for t in tenants.values() if t["server_name"] == "default"}
    second_dbs, second_roles = databases_and_roles(second.dsn)
    default_dbs, _ = databases_and_roles(pg_admin_dsn)
    assert second_dbs == on_second and second_roles == on_second
    assert on_default <= default_dbs and not on_second & default_dbs

    # The tenant on the second server works: its own role connects there and uses the schema ...
    with psycopg.connect(tenant_dsn(control_dsn, second.dsn, "shop-1"), autocommit=True) as conn:
        conn.execute("INSERT INTO manufacturers (name) VALUES ('Topps')")
        assert conn.execute("SELECT name FROM manufacturers").fetchall() == [("Topps",)]
    # ... and reaches no other tenant's database on that server.
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(tenant_dsn(control_dsn, second.dsn, "shop-1", database=tenants["shop-3"]["database_name"]))

    # Suspend and resume act on the second server.
    assert (await client.post("/admin/tenants/shop-1/suspend")).status_code == 200
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(tenant_dsn(control_dsn, second.dsn, "shop-1"))
    assert (await client.post("/admin/tenants/shop-1/resume")).status_code == 200
    psycopg.connect(tenant_dsn(control_dsn, second.dsn, "shop-1")).close()

    # Drained: no new tenant goes there, though it has fewer.
    assert (await client.post("/admin/servers/second/drain")).status_code == 200
    assert [(await create(client, f"late-{i}"))["server_name"] for i in range(2)] == ["default", "default"]
    assert (await client.post("/admin/servers/second/activate")).status_code == 200
    assert (await create(client, "later"))["server_name"] == "second"

    report = (await client.post("/admin/reconcile")).json()
    assert report == {"findings": [], "fixed": False}

    # Purge removes the database and the role on the second server.
    shop1 = tenants["shop-1"]["database_name"]
    assert (await client.delete("/admin/tenants/shop-1", params={"now": "true"})).status_code == 204
    second_dbs, second_roles = databases_and_roles(second.dsn)
    assert shop1 not in second_dbs and shop1 not in second_roles
    assert len(second_dbs) == 2  # shop-3 and later
    assert (await client.post("/admin/reconcile")).json() == {"findings": [], "fixed": False}


async def test_an_unreachable_server(client: Client, control_dsn: str, extra_cluster: StartCluster) -> None:
    second = extra_cluster()
    await add_server(client, "second", second.dsn)
    assert (await client.post("/admin/servers/default/drain")).status_code == 200
    on_second = await create(client, "far-away")
    assert on_second["server_name"] == "second"

    second.stop()
    # The reconciler reports the server and carries on with the others.
    response = await client.post("/admin/reconcile", params={"fix": "true"})
    assert response.status_code == 200, response.text
    findings = response.json()["findings"]
    assert [(f["kind"], f["server"]) for f in findings] == [("server_unreachable", "second")]
    assert (await client.get("/admin/tenants/far-away")).json()["tenant"]["status"] == "active"

    # The only active server is down: creating a tenant is a 503 and leaves nothing behind.
    before = registry_snapshot(control_dsn)
    assert_error(
        await client.post("/admin/tenants", json={"name": "New", "slug": "newcomer"}), 503, "server_unavailable"
    )
    after = registry_snapshot(control_dsn)
    assert after["tenants"] == before["tenants"] and after["tenant_quotas"] == before["tenant_quotas"]
    assert_error(await client.get("/admin/tenants/newcomer"), 404, "tenant_not_found")

    # Back up: everything works again, the first request included.
    second.start()
    assert (await client.post("/admin/reconcile")).json() == {"findings": [], "fixed": False}
    assert (await create(client, "newcomer"))["server_name"] == "second"
    with psycopg.connect(tenant_dsn(control_dsn, second.dsn, "newcomer")) as conn:
        assert conn.execute("SELECT count(*) FROM cards").fetchone() == (0,)
    assert (await client.get("/admin/servers")).json()[1]["tenants"] == 2


def test_cli_servers_and_reconcile_across_two_servers(
    control_dsn: str, tenant_template_name: str, extra_cluster: StartCluster, tmp_path: Path
) -> None:
    second = extra_cluster()
    env = cli_env(control_dsn, tenant_template_name, tmp_path / "data")
    assert run_cli(env, "servers", "add", "second", second.dsn).code == 0
    for slug in ("one", "two"):
        assert run_cli(env, "tenants", "create", "--name", slug, "--slug", slug).code == 0
    listed = run_cli(env, "servers", "list", "--json").json()
    assert [(s["name"], s["tenants"]) for s in listed] == [("default", 1), ("second", 1)]
    clean = run_cli(env, "reconcile")
    assert (clean.code, clean.stdout.strip()) == (0, "clean: registry and servers agree")

    second.stop()
    down = run_cli(env, "reconcile", "--json")
    assert down.code == 1
    assert [(f["kind"], f["server"]) for f in down.json()["findings"]] == [("server_unreachable", "second")]
    with psycopg.connect(control_dsn) as conn:
        count = conn.execute("SELECT count(*) FROM tenants").fetchone()
    assert count == (2,)
