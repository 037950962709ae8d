"""Master-key rotation: every secret the control plane stores moves to the new key, online, and every tenant
stays reachable through it; an interrupted rotation leaves everything readable and is finished by the next.

The procedure under test is the README's: every process gets the new key with the old one as previous,
``cardvault keys rotate`` re-encrypts, ``keys status`` says nothing needs the old key, the old key goes.
The new key is the suite's ``SECRET_KEY``, so the fixtures' teardown reads the registry as usual.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg.rows import dict_row

from controlplane.app import create_app
from controlplane.crypto import KeyState, SecretBox
from controlplane.failpoints import FailpointError
from controlplane.keys import repository, service
from controlplane.keys.repository import Swap
from controlplane.objectstore.sealed import new_data_key, unwrap_key, wrap_key
from controlplane.platform import Platform
from controlplane.provisioning.inputs import FirstAdmin
from controlplane.provisioning.service import TenantService
from controlplane.registry import repository as registry
from controlplane.registry.models import Tenant
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.harness import LocalClusterHandle
from tests.integration.auth_support import TenantAdmin, create_tenant
from tests.integration.cli_support import cli_env, ok, run_cli
from tests.integration.spare_support import spare_service
from tests.integration.tenant_support import assert_tenant_works, connect_as, execute, fetch

Client = AsyncTestClient[Any]

OLD_KEY = "the-old-master-key-fedcba9876543210-0123"
#: Every place a secret lives in the registry (a backup row and spares included), by ``SecretColumn.name``.
PLACES = {
    "backups.data_key_encrypted",
    "db_servers.dsn_encrypted",
    "signing_keys.secret_encrypted",
    "spare_databases.role_password_encrypted",
    "tenant_operations.params->admin.password_hash",
    "tenants.role_password_encrypted",
}


def keyed(settings: Settings, current: str, *previous: str) -> Settings:
    security = dataclasses.replace(settings.security, secret_key=current, previous_secret_keys=previous)
    return dataclasses.replace(settings, security=security)


@pytest.fixture
async def cleanup(settings: Settings) -> AsyncIterator[None]:
    """Whatever a failing test left under the old key is moved to the suite's key, which teardown reads."""
    yield
    async with Platform.open(keyed(settings, SECRET_KEY, OLD_KEY), migrate=False) as platform:
        await service.rotate(platform)


async def insert_backup(platform: Platform, tenant_id: uuid.UUID, data_key: bytes) -> None:
    """A backup's registry row: its data key wrapped by the master key (the object itself is not needed)."""
    async with platform.control.connection() as conn:
        cur = await conn.execute("SELECT slug, server_id, database_name FROM tenants WHERE id = %s", (tenant_id,))
        tenant = await cur.fetchone()
        assert tenant is not None
        await conn.execute(
            "INSERT INTO backups (id, tenant_id, tenant_slug, server_id, database_name, status, trigger, store,"
            " object_key, data_key_encrypted) VALUES (%s, %s, %s, %s, %s, 'succeeded', 'manual', 'local', %s, %s)",
            (
                uuid.uuid4(),
                tenant_id,
                tenant["slug"],
                tenant["server_id"],
                tenant["database_name"],
                f"backups/{uuid.uuid4()}",
                wrap_key(platform.box, data_key),
            ),
        )


async def states(control_dsn: str, box: SecretBox) -> dict[str, dict[KeyState, int]]:
    """Each secret place and how many of its values ``box`` reads with which key."""
    found: dict[str, dict[KeyState, int]] = {}
    async with await psycopg.AsyncConnection.connect(control_dsn, autocommit=True, row_factory=dict_row) as conn:
        for column in await repository.secret_columns(conn):
            counts = found.setdefault(column.name, {})
            for stored in await repository.read_batch(conn, column, None, 10_000):
                state = box.state(stored.value)
                counts[state] = counts.get(state, 0) + 1
    return found


async def reachable(client: Client, tenants: list[TenantAdmin]) -> None:
    """Each tenant answers its API with the access token issued before anything changed."""
    for tenant in tenants:
        response = await client.get(tenant.api("/cards"), headers=tenant.auth)
        assert response.status_code == 200, response.text


async def test_a_rotation_moves_every_secret_to_the_new_key_and_every_tenant_stays_reachable(
    settings: Settings,
    control_dsn: str,
    extra_cluster: Callable[[], LocalClusterHandle],
    tmp_path: Path,
    cleanup: None,
) -> None:
    old, rotating = keyed(settings, OLD_KEY), keyed(settings, SECRET_KEY, OLD_KEY)
    second = extra_cluster()
    async with AsyncTestClient(app=create_app(old)) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        added = await client.post("/admin/servers", json={"name": "second", "dsn": second.dsn})
        assert added.status_code == 201, added.text
        tenants = [await create_tenant(client, "alpha"), await create_tenant(client, "beta")]
        assert {t.body["server_name"] for t in tenants} == {"default", "second"}
    data_key = new_data_key()
    async with spare_service(old, 1) as (platform, spares):
        assert all(o.created == 1 for o in await spares.spares.refill())
        await insert_backup(platform, tenants[0].id, data_key)
    before = await states(control_dsn, SecretBox(OLD_KEY))
    assert set(before) >= PLACES and all(set(s) <= {KeyState.CURRENT} for s in before.values()), before

    # Every process restarts with the new key and the old one as previous: all is readable, nothing moved.
    async with AsyncTestClient(app=create_app(rotating)) as client:
        await reachable(client, tenants)
        env = cli_env(control_dsn, settings.provisioning.template_database, tmp_path / "cli")
        env |= {"CARDVAULT_SECRET_KEY_PREVIOUS": OLD_KEY}
        status = ok(run_cli(env, "keys", "status", "--json")).json()
        assert status["remaining"] == sum(sum(s.values()) for s in before.values()) and status["previous_keys"] == 1

        # The rotation runs while the service serves.
        rotated = ok(run_cli(env, "keys", "rotate", "--batch-size", "2", "--json")).json()
        assert rotated["remaining"] == 0 and rotated["unreadable"] == 0, "what keys status says after it"
        moved = {c["column"]: c["reencrypted"] for c in rotated["columns"]}
        assert all(moved[place] == sum(before[place].values()) for place in PLACES), moved
        assert rotated["kid"], "and the tokens get a new signing key"
        await reachable(client, tenants)

    after = await states(control_dsn, SecretBox(SECRET_KEY))
    assert all(set(s) <= {KeyState.CURRENT} for s in after.values()), after
    env.pop("CARDVAULT_SECRET_KEY_PREVIOUS")
    again = ok(run_cli(env, "keys", "rotate", "--secrets-only"))
    assert "re-encrypted 0 value(s)" in again.stdout and "every value is encrypted with the current key" in again.stdout
    assert "new signing key" not in again.stdout

    # The old key is gone everywhere. Tenants, servers, signing keys, spares, the backup's data key and the
    # provisioning ledger all read with the new key alone.
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        await reachable(client, tenants)  # access tokens signed before the rotation still verify
        login = await client.post(
            f"/t/{tenants[1].slug}/auth/token",
            json={"email": tenants[1].admin_email, "password": tenants[1].admin_password},
        )
        assert login.status_code == 200, login.text
        for tenant in tenants:
            health = (await client.get(f"/admin/tenants/{tenant.slug}/health")).json()
            assert health["ok"] is True, health
        made = await client.post("/admin/tenants", json={"name": "Gamma", "slug": "gamma"})
        assert made.status_code == 201, made.text  # the management pools connect with the re-encrypted DSNs
    async with Platform.open(settings, migrate=False) as platform:
        for ledger in await fetch(control_dsn, "SELECT params FROM tenant_operations WHERE params ? 'admin'"):
            assert FirstAdmin.from_ledger(ledger["params"], platform.box) is not None
        backups = await fetch(control_dsn, "SELECT data_key_encrypted FROM backups")
        assert unwrap_key(platform.box, backups[0]["data_key_encrypted"]) == data_key
        for spare in await fetch(control_dsn, "SELECT * FROM spare_databases"):
            server = second.dsn if spare["server_id"] == uuid.UUID(added.json()["id"]) else settings.database.url
            password = platform.box.decrypt(spare["role_password_encrypted"])
            async with await connect_as(server, spare["role_name"], password, spare["database_name"]) as conn:
                await conn.execute("SELECT 1")


async def tenants_of(platform: Platform) -> list[Tenant]:
    async with platform.control.connection() as conn:
        return await registry.list_tenants(conn)


async def notifications_during(control_dsn: str, work: Callable[[], Awaitable[Any]]) -> list[str]:
    """The change notifications (tenants, servers) sent while ``work`` ran, up to a sentinel sent after it."""
    async with await psycopg.AsyncConnection.connect(control_dsn, autocommit=True) as listener:
        await listener.execute("LISTEN cardvault_tenants")
        await listener.execute("LISTEN cardvault_servers")
        await work()
        await execute(control_dsn, "NOTIFY cardvault_servers, 'sentinel'")
        heard: list[str] = []
        async for notify in listener.notifies(timeout=15):
            if notify.payload == "sentinel":
                return heard
            heard.append(f"{notify.channel}:{notify.payload}")
    raise AssertionError("the sentinel notification never came")


async def test_an_interrupted_rotation_leaves_everything_readable_and_the_next_run_finishes_it(
    settings: Settings, control_dsn: str, pg_admin_dsn: str, cleanup: None
) -> None:
    async with Platform.open(keyed(settings, OLD_KEY), migrate=False) as platform:
        tenant_service = TenantService(platform)
        for slug in ("one", "two", "three"):
            await tenant_service.create(name=slug, slug=slug, tier="starter")
    crashing = dataclasses.replace(keyed(settings, SECRET_KEY, OLD_KEY), failpoints=f"{service.BATCH_FAILPOINT}=raise")
    async with Platform.open(crashing, migrate=False) as platform:
        with pytest.raises(FailpointError):
            await service.rotate(platform, batch_size=1)  # dies after its first committed batch
        status = await service.status(platform)
    counts = {c.column: c for c in status.columns}
    assert counts["db_servers.dsn_encrypted"].current == 1, "the first batch was committed"
    assert status.remaining == 3 and status.unreadable == 0  # the tenants' passwords: not yet

    # With both keys everything works: the service after such a crash serves every tenant.
    both = keyed(settings, SECRET_KEY, OLD_KEY)
    async with Platform.open(both, migrate=False) as platform:
        for tenant in await tenants_of(platform):
            await assert_tenant_works(platform, pg_admin_dsn, tenant)

        # A writer that changes a value between the rotation's read and its swap keeps what it wrote.
        async with platform.control.connection() as conn:
            (column,) = [
                c for c in await repository.secret_columns(conn) if c.name == "tenants.role_password_encrypted"
            ]
            first = (await repository.read_batch(conn, column, None, 1))[0]
        written = platform.box.encrypt(platform.box.decrypt(first.value))
        await execute(
            control_dsn, "UPDATE tenants SET role_password_encrypted = %s WHERE id = %s", (written, first.key[0])
        )
        reencrypted = platform.box.reencrypt(first.value)
        assert reencrypted is not None
        async with platform.control.connection() as conn, conn.transaction():
            assert await repository.swap(conn, column, [Swap(first.key, first.value, reencrypted)]) == 0
        rows = await fetch(control_dsn, "SELECT role_password_encrypted FROM tenants WHERE id = %s", (first.key[0],))
        assert rows == [{"role_password_encrypted": written}]

        # The next run finishes the job, and no cache or pool anywhere hears of it (the plaintext is the same).
        async def finish() -> None:
            report = await service.rotate(platform, batch_size=2)
            # The two role passwords left: the third was rewritten by the writer, with the new key.
            assert report.reencrypted == 2 and report.unreadable == 0, report

        assert await notifications_during(control_dsn, finish) == []
        assert (await service.status(platform)).remaining == 0
    async with Platform.open(settings, migrate=False) as platform:  # the new key alone
        for tenant in await tenants_of(platform):
            await assert_tenant_works(platform, pg_admin_dsn, tenant)
