"""A fleet server's credentials rotate, and its decrypted DSN does not live forever in memory.

The server's password is changed on the server, then through the admin API (or the CLI) in the
registry: the next connection uses the new one, on this replica at once and on another when the
change is notified. A cached DSN is dropped after ``server_dsn_ttl`` whatever happens, and neither DSN
ever reaches a log line or an audit row.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg import conninfo

from controlplane.app import create_app
from controlplane.fleet.service import Fleet
from controlplane.platform import Platform
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN, eventually
from tests.harness import LocalClusterHandle
from tests.integration.admin_support import assert_error, create, registry_snapshot
from tests.integration.cli_support import cli_env, run_cli
from tests.integration.tenant_support import tenant_dsn

Client = AsyncTestClient[Any]
StartCluster = Callable[[], LocalClusterHandle]

OLD_PASSWORD = "old-server-secret-1"
NEW_PASSWORD = "new-server-secret-2"


class Rotating:
    """A second server whose management user ``rotor`` (superuser) changes its password."""

    def __init__(self, cluster: LocalClusterHandle) -> None:
        self.cluster = cluster
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE rotor SUPERUSER LOGIN PASSWORD '{OLD_PASSWORD}'")

    def dsn(self, password: str) -> str:
        return conninfo.make_conninfo(self.cluster.dsn, user="rotor", password=password)

    def change_password(self) -> None:
        """What the operator does on the server: a new password, and the old sessions ended."""
        with psycopg.connect(self.cluster.dsn, autocommit=True) as conn:
            conn.execute(f"ALTER ROLE rotor PASSWORD '{NEW_PASSWORD}'")
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'rotor'")


@pytest.fixture
def rotating(extra_cluster: StartCluster) -> Rotating:
    return Rotating(extra_cluster())


def audit_rows(control_dsn: str, action: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(control_dsn) as conn:
        return conn.execute(
            "SELECT outcome, entity_id, details::text FROM platform_audit WHERE action = %s ORDER BY id", (action,)
        ).fetchall()


async def test_rotating_a_server_password_through_the_admin_api(
    client: Client, control_dsn: str, pg_admin_dsn: str, rotating: Rotating, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    added = await client.post("/admin/servers", json={"name": "second", "dsn": rotating.dsn(OLD_PASSWORD)})
    assert added.status_code == 201, added.text
    assert (await client.post("/admin/servers/default/drain")).status_code == 200
    assert (await create(client, "before"))["server_name"] == "second"

    rotating.change_password()
    # The DSN the control plane holds no longer logs in: a clean 503, nothing made.
    before = registry_snapshot(control_dsn)
    assert_error(await client.post("/admin/tenants", json={"name": "S", "slug": "stale"}), 503, "server_unavailable")
    assert registry_snapshot(control_dsn) == before

    # A new DSN is checked before it is saved: the wrong password, or another server, changes nothing.
    assert_error(
        await client.put("/admin/servers/second/dsn", json={"dsn": rotating.dsn("wrong-password")}),
        400,
        "validation_failed",
    )
    body = assert_error(
        await client.put("/admin/servers/second/dsn", json={"dsn": pg_admin_dsn}), 409, "server_mismatch"
    )
    assert "another PostgreSQL server" in body["detail"]
    assert registry_snapshot(control_dsn) == before

    response = await client.put("/admin/servers/second/dsn", json={"dsn": rotating.dsn(NEW_PASSWORD)})
    assert response.status_code == 200, response.text
    server = response.json()
    assert server["name"] == "second" and "password=***" in server["dsn_display"]
    assert server["system_identifier"] == added.json()["system_identifier"]

    # The very next connection uses the new password.
    assert (await create(client, "after"))["server_name"] == "second"
    with psycopg.connect(tenant_dsn(control_dsn, rotating.cluster.dsn, "after")) as conn:
        assert conn.execute("SELECT count(*) FROM cards").fetchone() == (0,)

    rows = audit_rows(control_dsn, "server.set_dsn")
    assert [(outcome, entity) for outcome, entity, _ in rows] == [
        ("failed", "second"),
        ("failed", "second"),
        ("succeeded", "second"),
    ]
    assert "password=***" in rows[-1][2]
    # Neither password, nor the wrong one, is in any audit row or any log line.
    for secret in (OLD_PASSWORD, NEW_PASSWORD, "wrong-password"):
        assert not any(secret in details for _, _, details in rows)
        assert not [r for r in caplog.records if secret in r.getMessage()], secret


async def test_a_cached_dsn_lives_no_longer_than_the_ttl(
    platform: Platform, settings: Settings, rotating: Rotating
) -> None:
    now = [1000.0]
    ttl = dataclasses.replace(settings.database, server_dsn_ttl=30)
    # Another replica's fleet, with a clock the test moves.
    replica = Fleet(platform.box, ttl, clock=lambda: now[0])
    uncached = Fleet(platform.box, dataclasses.replace(settings.database, server_dsn_ttl=0))
    try:
        async with platform.control.connection() as conn:
            server = await platform.fleet.register(conn, "second", rotating.dsn(OLD_PASSWORD))
            assert await replica.dsn(conn, server.id) == rotating.dsn(OLD_PASSWORD)
            async with replica.admin(conn, server.id) as admin:
                await admin.execute("SELECT 1")

            rotating.change_password()
            await platform.fleet.update_dsn(conn, "second", rotating.dsn(NEW_PASSWORD))

            # Not told of the change, the replica keeps the old DSN until the TTL runs out, no longer.
            now[0] += 29
            assert await replica.dsn(conn, server.id) == rotating.dsn(OLD_PASSWORD)
            now[0] += 1
            assert await replica.dsn(conn, server.id) == rotating.dsn(NEW_PASSWORD)
            # Its management pool was opened with the old password: it is replaced, and works.
            async with replica.admin(conn, server.id) as admin:
                cur = await admin.execute("SELECT current_user AS who")
                assert await cur.fetchone() == {"who": "rotor"}
            # With no caching at all, every read is the registry's.
            assert await uncached.dsn(conn, server.id) == rotating.dsn(NEW_PASSWORD)

            # forget() drops it at once (what a change notification does).
            await platform.fleet.update_dsn(conn, "second", rotating.cluster.dsn)
            assert await replica.dsn(conn, server.id) == rotating.dsn(NEW_PASSWORD)
            replica.forget(server.id)
            assert await replica.dsn(conn, server.id) == rotating.cluster.dsn
    finally:
        await replica.close()
        await uncached.close()


@pytest.fixture
async def long_ttl_client(settings: Settings) -> AsyncIterator[Client]:
    """The app with a DSN TTL far longer than the test: only the change notification can help it."""
    changed = settings.replace(database=dataclasses.replace(settings.database, server_dsn_ttl=3600))
    async with AsyncTestClient(app=create_app(changed)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        yield test_client


async def test_another_replica_uses_the_new_dsn_once_notified(
    long_ttl_client: Client, control_dsn: str, tenant_template_name: str, rotating: Rotating, tmp_path: Path
) -> None:
    client = long_ttl_client
    added = await client.post("/admin/servers", json={"name": "second", "dsn": rotating.dsn(OLD_PASSWORD)})
    assert added.status_code == 201, added.text
    assert (await client.post("/admin/servers/default/drain")).status_code == 200
    assert (await create(client, "before"))["server_name"] == "second"

    rotating.change_password()
    # The operator rotates through the CLI: another process, the DSN on stdin.
    env = cli_env(control_dsn, tenant_template_name, tmp_path / "data")
    result = run_cli(env, "servers", "set-dsn", "second", "--json", stdin=rotating.dsn(NEW_PASSWORD) + "\n")
    assert result.code == 0, result.stderr
    assert NEW_PASSWORD not in result.stdout + result.stderr

    async def placed() -> bool:
        response = await client.post("/admin/tenants", json={"name": "After", "slug": "after"})
        assert response.status_code in (201, 503), response.text
        return response.status_code == 201

    await eventually(placed, "the app places a tenant on the server with the rotated password")
    assert (await client.get("/admin/tenants/after")).json()["tenant"]["server_name"] == "second"
