"""Moves into one server share its move slots (``max_logical_replication_workers // 2``): a move finding
them all taken waits for one, so concurrent moves into one server all finish instead of starving each other
of replication workers; one that waits past ``CARDVAULT_MOVE_SYNC_TIMEOUT`` is undone and answers 409
``move_busy``. A move that fails and is undone answers 503 ``move_failed`` (Retry-After), never a 500.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
from litestar.testing import AsyncTestClient

from controlplane.app import create_app
from controlplane.moves.service import MoveService
from controlplane.moves.slots import slot_key
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN, eventually
from tests.integration.admin_support import assert_error
from tests.integration.move_support import StartCluster, databases_of, replication_leftovers
from tests.integration.test_moves_faults import assert_served_by, move_states, tenant_and_second_server


def target_slots(server_dsn: str) -> int:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('max_logical_replication_workers')::int").fetchone()
    assert row is not None
    return max(1, int(row[0]) // 2)


@contextmanager
def slots_held(control_dsn: str, server_id: uuid.UUID, slots: range) -> Iterator[None]:
    """Another move's hold of the target's slots ``slots`` (the same advisory locks a move takes)."""
    with psycopg.connect(control_dsn, autocommit=True) as conn:
        for slot in slots:
            conn.execute("SELECT pg_advisory_lock(%s)", (slot_key(server_id, slot),))
        yield


def subscriptions(server_dsn: str) -> int:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_subscription").fetchone()
    assert row is not None
    return int(row[0])


@asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        yield client


async def test_moves_into_one_server_take_turns_for_its_slots_and_all_finish(
    platform: Platform,
    service: TenantService,
    control_dsn: str,
    pg_admin_dsn: str,
    extra_cluster: StartCluster,
) -> None:
    other = await service.create(name="Other", slug="other", tier="starter")  # both on the default server
    acme, second = await tenant_and_second_server(platform, service, extra_cluster, pg_admin_dsn)
    async with platform.control.connection() as conn:
        second_id = (await platform.fleet.get(conn, "second")).id
    slots = target_slots(second.dsn)
    moves = MoveService(platform, service)
    # Every slot but one is another move's: the two moves into the server take turns with the last one.
    with slots_held(control_dsn, second_id, range(slots - 1)):
        running = [asyncio.create_task(moves.move(slug, "second")) for slug in ("acme", "other")]
        most = 0
        async with asyncio.timeout(120):
            while not all(task.done() for task in running):
                most = max(most, subscriptions(second.dsn))
                await asyncio.sleep(0.02)
        finished = [task.result() for task in running]
    assert [m.state.value for m in finished] == ["succeeded", "succeeded"]
    assert most == 1, "the two moves held subscriptions on the target at once"
    assert {(await service.get(slug)).server_name for slug in ("acme", "other")} == {"second"}
    assert replication_leftovers(second.dsn) == [] and replication_leftovers(pg_admin_dsn) == []
    assert acme.server_name == other.server_name == "default"
    # Every slot is free again.
    with psycopg.connect(control_dsn, autocommit=True) as conn:
        for slot in range(slots):
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (slot_key(second_id, slot),)).fetchone()
            assert row is not None and row[0] is True


async def test_a_move_that_gets_no_slot_in_time_answers_move_busy_and_changes_nothing(
    settings: Settings,
    platform: Platform,
    service: TenantService,
    control_dsn: str,
    pg_admin_dsn: str,
    extra_cluster: StartCluster,
) -> None:
    tenant, second = await tenant_and_second_server(platform, service, extra_cluster, pg_admin_dsn)
    async with platform.control.connection() as conn:
        second_id = (await platform.fleet.get(conn, "second")).id
    impatient = dataclasses.replace(settings, moves=dataclasses.replace(settings.moves, sync_timeout=1.0))
    with slots_held(control_dsn, second_id, range(target_slots(second.dsn))):
        async with admin_client(impatient) as client:
            response = await asyncio.wait_for(client.post("/admin/tenants/acme/move", json={"to": "second"}), 60)
    body = assert_error(response, 409, "move_busy")
    assert int(response.headers["Retry-After"]) > 0 and "waited" in body["detail"], body
    assert await move_states(control_dsn, tenant.id) == [("rolled_back", "slot")]
    assert (await service.get("acme")).server_name == "default"
    assert databases_of(second.dsn, tenant.id) == set()
    await assert_served_by(control_dsn, pg_admin_dsn, second.dsn, tenant, moved=False)


async def test_a_failed_and_undone_move_answers_503_move_failed_and_the_source_serves(
    settings: Settings,
    platform: Platform,
    service: TenantService,
    control_dsn: str,
    pg_admin_dsn: str,
    extra_cluster: StartCluster,
) -> None:
    tenant, second = await tenant_and_second_server(platform, service, extra_cluster, pg_admin_dsn)
    # As when ``subscribe`` hits the statement timeout under contention.
    failing = dataclasses.replace(settings, failpoints="after:subscribe=raise")
    async with admin_client(failing) as client:
        response = await client.post("/admin/tenants/acme/move", json={"to": "second"})
        body = assert_error(response, 503, "move_failed")
        assert body["step"] == "subscribe" and "undone" in body["detail"], body
        assert int(response.headers["Retry-After"]) > 0
    assert await move_states(control_dsn, tenant.id) == [("rolled_back", "subscribe")]
    assert (await service.get("acme")).server_name == "default"
    await eventually(lambda: subscriptions(second.dsn) == 0, "the move's subscription is gone")
    await assert_served_by(control_dsn, pg_admin_dsn, second.dsn, tenant, moved=False)
