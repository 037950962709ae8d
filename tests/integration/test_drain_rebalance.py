"""Draining a server and rebalancing the fleet by moves queued on the task queue, and placement that avoids
draining and full servers.

- A drain (``POST /admin/servers/default/drain?move_tenants=true``) queues one move per tenant; the app's
  own worker runs them: every tenant ends on the second server with the same rows, none is left on the
  source, and the drain's progress says so.
- A move task run twice (a drain asked again after it ran) moves the tenant once; a second enqueue while
  the first waits is refused by its queueing lock.
- A rebalance on a skewed fleet (every tenant on one server) proposes moves to the empty one without
  changing anything; applied, the moves happen and the fleet is even (no proposal left). Proposals never
  target a draining server.
- New tenants go to neither a draining server nor a full one (``CARDVAULT_SERVER_MAX_TENANTS``; projected
  bytes over ``CARDVAULT_SERVER_CAPACITY_BYTES``, from a growing usage history); with every server full,
  signups get 503 ``no_server_available``; the capacity report recommends a rebalance or a drain.
- Refused input: unknown servers 404, a bad limit 400, always JSON.

The second server is an ``extra_cluster()`` registered through the admin API (``move_support``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg import sql

from controlplane.app import create_app
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.settings import Settings
from controlplane.tasks.moves import MoveTasks
from controlplane.tasks.queue import TaskQueue
from tests.conftest import ADMIN_TOKEN, eventually
from tests.harness import LocalClusterHandle
from tests.integration.admin_support import assert_error, create
from tests.integration.cli_support import cli_env, run_cli
from tests.integration.move_support import (
    Client,
    StartCluster,
    add_second_server,
    execute,
    replication_leftovers,
    rows,
)
from tests.integration.task_queue_support import fast, services
from tests.integration.tenant_support import tenant_dsn

GIB = 1024**3


def server_of(control_dsn: str) -> dict[str, str]:
    """Each tenant's server name, by slug."""
    with psycopg.connect(control_dsn) as conn:
        found = conn.execute("SELECT t.slug, s.name FROM tenants t JOIN db_servers s ON s.id = t.server_id").fetchall()
    return {slug: name for slug, name in found}


def move_count(control_dsn: str, tenant_id: str) -> int:
    with psycopg.connect(control_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM tenant_moves WHERE tenant_id = %s", (tenant_id,)).fetchone()
    assert row is not None
    return int(row[0])


async def tenants_with_cards(client: Client, pg_admin_dsn: str, slugs: list[str]) -> dict[str, dict[str, Any]]:
    """Create the tenants (on whatever placement picks) with a few cards each, by their number."""
    made = {}
    for n, slug in enumerate(slugs, start=1):
        tenant = await create(client, slug)
        execute(
            pg_admin_dsn,
            tenant["database_name"],
            sql.SQL("INSERT INTO cards (cardnumber) SELECT {} || g FROM generate_series(1, {}) g").format(
                sql.Literal(f"{slug}-"), sql.Literal(n * 3)
            ),
        )
        made[slug] = {**tenant, "cards": n * 3}
    return made


async def add_target(client: Client, extra_cluster: StartCluster) -> LocalClusterHandle:
    """The second server, whose logical replication launcher starts a new subscription's worker within
    0.2 s of the last (PostgreSQL waits ``wal_retrieve_retry_interval``, 5 s by default, between two: each
    move after the first onto one server would wait that long for its initial sync)."""
    second = await add_second_server(client, extra_cluster)
    with psycopg.connect(second.dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET wal_retrieve_retry_interval = '200ms'")
        conn.execute("SELECT pg_reload_conf()")
    return second


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[Client]:
    async with AsyncTestClient(app=create_app(settings)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        yield test_client


async def test_a_drain_moves_every_tenant_off_with_its_data(
    client: Client, control_dsn: str, pg_admin_dsn: str, extra_cluster: StartCluster
) -> None:
    made = await tenants_with_cards(client, pg_admin_dsn, ["north", "south", "east"])
    before = {slug: await rows(pg_admin_dsn, t["database_name"]) for slug, t in made.items()}
    assert before["east"]["public.cards"] == 9
    second = await add_target(client, extra_cluster)

    response = await client.post("/admin/servers/default/drain", params={"move_tenants": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "draining" and body["name"] == "default"
    drain = body["drain"]
    assert sorted((q["slug"], q["to_server"], q["queued"]) for q in drain["queued"]) == [
        ("east", "second", True), ("north", "second", True), ("south", "second", True),
    ]  # fmt: skip
    assert drain["not_moved"] == []

    async def drained() -> bool:
        progress = (await client.get("/admin/servers/default/drain")).json()
        return bool(progress["tenants_left"] == 0 and progress["moves_pending"] == 0)

    await eventually(drained, "every tenant moved off the drained server", within=60)
    assert set(server_of(control_dsn).values()) == {"second"}
    for slug, tenant in made.items():
        assert await rows(second.dsn, tenant["database_name"]) == before[slug], slug
        assert move_count(control_dsn, tenant["id"]) == 1
    # Isolation among the drained tenants on their new server: each role reaches its own database only.
    with psycopg.connect(tenant_dsn(control_dsn, second.dsn, "north")) as conn:
        assert conn.execute("SELECT count(*) FROM cards").fetchone() == (3,)
    for slug, other in (("north", "south"), ("south", "east"), ("east", "north")):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(tenant_dsn(control_dsn, second.dsn, slug, database=made[other]["database_name"])).close()
    assert replication_leftovers(pg_admin_dsn) == [] and replication_leftovers(second.dsn) == []
    listed = {s["name"]: s for s in (await client.get("/admin/servers")).json()}
    assert (listed["default"]["status"], listed["default"]["tenants"]) == ("draining", 0)
    # The moved tenants serve from their new server.
    health = await client.get("/admin/tenants/north/health")
    assert health.status_code == 200, health.text

    # Placement skips the draining server.
    assert (await create(client, "later"))["server_name"] == "second"


async def test_a_move_task_run_twice_moves_the_tenant_once(
    platform: Platform, service: TenantService, settings: Settings, control_dsn: str, extra_cluster: StartCluster
) -> None:
    tenant = await service.create(name="Twice", slug="twice", tier="starter")
    second = extra_cluster()
    async with platform.control.connection() as conn:
        await platform.fleet.register(conn, "second", second.dsn)
        source = await platform.fleet.get(conn, "default")
    # No worker runs until this test starts one: the queueing lock is seen at work.
    queue = TaskQueue(fast(settings))
    await queue.open()
    moves = MoveTasks(queue.app)
    try:
        assert await moves.enqueue_move(tenant.id, source=source.id, to="second", requested_by="test")
        assert not await moves.enqueue_move(tenant.id, source=source.id, to="second", requested_by="test")
        assert await moves.pending_moves([tenant.id]) == {tenant.id}
        await queue.run_worker(services(platform), wait=False)
        assert await moves.pending_moves([tenant.id]) == set()
        assert server_of(control_dsn)["twice"] == "second" and move_count(control_dsn, str(tenant.id)) == 1

        # The same task once more (a retry, a drain asked again): the tenant is off the source, no move.
        assert await moves.enqueue_move(tenant.id, source=source.id, to="second", requested_by="test")
        await queue.run_worker(services(platform), wait=False)
        assert await moves.pending_moves([tenant.id]) == set()
        assert server_of(control_dsn)["twice"] == "second" and move_count(control_dsn, str(tenant.id)) == 1
    finally:
        await queue.close()


async def test_rebalance_proposes_on_a_skewed_fleet_and_apply_performs_it(
    client: Client, control_dsn: str, pg_admin_dsn: str, extra_cluster: StartCluster
) -> None:
    made = await tenants_with_cards(client, pg_admin_dsn, ["alpha", "beta", "gamma", "delta"])
    second = await add_target(client, extra_cluster)
    await client.post("/admin/servers/second/drain")
    proposed = (await client.get("/admin/fleet/rebalance")).json()
    assert proposed["proposals"] == []  # the only other server drains: no target
    assert (await client.post("/admin/servers/second/activate")).status_code == 200

    response = await client.get("/admin/fleet/rebalance")
    assert response.status_code == 200, response.text
    plan = response.json()
    fills = {s["name"]: s for s in plan["servers"]}
    assert (fills["default"]["tenants"], fills["second"]["tenants"]) == (4, 0)
    assert fills["default"]["database_bytes"] > 0 and fills["default"]["max_connections"] > 0
    assert [(p["from_server"], p["to_server"]) for p in plan["proposals"]] == [("default", "second")] * 2
    assert set(server_of(control_dsn).values()) == {"default"}  # proposing changes nothing
    assert_error(await client.get("/admin/fleet/rebalance", params={"limit": "0"}), 400, "validation_failed")

    applied = await client.post("/admin/fleet/rebalance", params={"limit": "10"})
    assert applied.status_code == 200, applied.text
    queued = applied.json()["queued"]
    assert len(queued) == 2 and all(q["queued"] for q in queued)

    async def moved() -> bool:
        placed = server_of(control_dsn)
        return sorted(placed[q["slug"]] for q in queued) == ["second", "second"]

    await eventually(moved, "the proposed moves done", within=60)
    placed = server_of(control_dsn)
    assert sorted(placed.values()) == ["default", "default", "second", "second"]
    for q in queued:
        database = made[q["slug"]]["database_name"]
        assert (await rows(second.dsn, database))["public.cards"] == made[q["slug"]]["cards"]
    again = (await client.get("/admin/fleet/rebalance")).json()
    assert again["proposals"] == []  # even now


async def test_new_tenants_avoid_draining_and_full_servers(
    settings: Settings, control_dsn: str, extra_cluster: StartCluster
) -> None:
    limited = settings.replace(moves=dataclasses.replace(settings.moves, server_max_tenants=2))
    async with app_client(limited) as client:
        await add_second_server(client, extra_cluster)
        placed = [(await create(client, f"place-{i}"))["server_name"] for i in range(4)]
        assert sorted(placed) == ["default", "default", "second", "second"]
        # Both servers hold CARDVAULT_SERVER_MAX_TENANTS: no room for a fifth.
        full = assert_error(
            await client.post("/admin/tenants", json={"name": "Place 4", "slug": "place-4"}), 503, "no_server_available"
        )
        assert "full" in full["detail"] and "CARDVAULT_SERVER_MAX_TENANTS" in full["detail"]
        # Nor does a move go to a full server.
        assert_error(await client.post("/admin/tenants/place-0/move", json={"to": "second"}), 409, "move_refused")


async def test_a_server_projected_to_fill_takes_no_new_tenant_and_is_flagged(
    settings: Settings, control_dsn: str, extra_cluster: StartCluster
) -> None:
    capped = settings.replace(
        moves=dataclasses.replace(settings.moves, server_capacity_bytes=10 * GIB, server_fill_horizon_days=14)
    )
    async with app_client(capped) as client:
        grower = await create(client, "grower")
        await add_second_server(client, extra_cluster)
        steady = await create(client, "steady")
        assert (grower["server_name"], steady["server_name"]) == ("default", "second")
        # The usage history: grower went from 1 GiB to 4 GiB over the last three days (1 GiB a day): in 14
        # days 18 GiB, past 90 % of the 10 GiB capacity; steady holds 1 GiB, flat.
        now = datetime.now(UTC)
        with psycopg.connect(control_dsn) as conn:
            for tenant, start, slope in ((grower, 1, 1), (steady, 1, 0)):
                for day in range(4):
                    conn.execute(
                        "INSERT INTO tenant_usage_metrics (tenant_id, metric_name, metric_value, recorded_at)"
                        " VALUES (%s, 'database_bytes', %s, %s)",
                        (tenant["id"], (start + slope * day) * GIB, now - timedelta(days=3 - day)),
                    )
        # By tenant count the default server is next (1 each, then by name); by projected bytes it is full.
        assert (await create(client, "newcomer"))["server_name"] == "second"

        report = (await client.get("/admin/capacity", params={"days": "14"})).json()
        servers = {s["name"]: s for s in report["servers"]}
        assert servers["default"]["capacity_bytes"] == 10 * GIB
        assert 5 < servers["default"]["days_until_full"] < 7  # 6 GiB left at 1 GiB a day
        advice = servers["default"]["recommendation"]
        assert "rebalance" in advice and "cardvault servers drain default" in advice, advice
        assert servers["second"]["recommendation"] is None

        plan = (await client.get("/admin/fleet/rebalance")).json()
        fills = {s["name"]: s for s in plan["servers"]}
        assert fills["default"]["full"] and not fills["second"]["full"]
        assert fills["default"]["growth_bytes_per_day"] > 0.9 * GIB
        # Moving grower would make second full in turn: no proposal leaves a server over its capacity.
        assert plan["proposals"] == []
        # Nor does a move: grower's projected 18 GiB would fill second, and default is full already.
        grower_out = await client.post("/admin/tenants/grower/move", json={"to": "second"})
        detail = assert_error(grower_out, 409, "move_refused")["detail"]
        assert "with the tenant" in detail and "CARDVAULT_SERVER_CAPACITY_BYTES" in detail, detail
        steady_in = await client.post("/admin/tenants/steady/move", json={"to": "default"})
        assert "full" in assert_error(steady_in, 409, "move_refused")["detail"]
        assert (await client.get("/admin/tenants/grower/moves")).json() == []


async def test_refused_drain_and_rebalance_input_is_json(client: Client) -> None:
    assert_error(await client.post("/admin/servers/nowhere/drain", params={"move_tenants": "true"}), 404,
                 "server_not_found")  # fmt: skip
    assert_error(await client.get("/admin/servers/nowhere/drain"), 404, "server_not_found")
    assert_error(await client.post("/admin/fleet/rebalance", params={"limit": "100000"}), 400, "validation_failed")
    assert_error(await client.post("/admin/servers/default/drain", params={"move_tenants": "maybe"}), 400,
                 "validation_failed")  # fmt: skip


@pytest.mark.slow  # five CLI processes, each opening the platform
async def test_the_cli_proposes_then_drains_and_waits_for_the_outcomes(
    client: Client,
    control_dsn: str,
    pg_admin_dsn: str,
    tenant_template_name: str,
    tmp_path: Path,
    extra_cluster: StartCluster,
) -> None:
    made = await tenants_with_cards(client, pg_admin_dsn, ["left", "right"])
    await add_target(client, extra_cluster)
    env = cli_env(control_dsn, tenant_template_name, tmp_path / "data")

    proposed = run_cli(env, "servers", "rebalance", "--json")
    assert proposed.code == 0, proposed.stderr
    plan = proposed.json()
    assert [(p["from_server"], p["to_server"]) for p in plan["proposals"]] == [("default", "second")]
    assert plan["queued"] == []
    assert "moves proposed (--apply queues them)" in run_cli(env, "servers", "rebalance").stdout

    # The moves run on this test's app's worker while the command waits (its loop must keep running).
    drained = await asyncio.to_thread(
        run_cli, env, "servers", "drain", "default", "--wait", "--timeout", "90", "--json"
    )
    assert drained.code == 0, drained.stderr
    found = drained.json()
    assert (found["status"], found["tenants"]) == ("draining", 0)
    outcomes = {o["slug"]: o for o in found["outcomes"]}
    assert {slug: (o["outcome"], o["server"]) for slug, o in outcomes.items()} == {
        "left": ("moved", "second"), "right": ("moved", "second"),
    }  # fmt: skip
    assert all(o["freeze_ms"] > 0 for o in outcomes.values())
    assert set(server_of(control_dsn).values()) == {"second"} and set(made) == set(outcomes)

    unknown = run_cli(env, "servers", "drain", "nowhere")
    assert unknown.code == 1 and json.loads(unknown.stderr)["error"] == "server_not_found"
    assert run_cli(env, "servers", "rebalance", "--wait").code == 2  # --wait needs --apply
