"""Online tenant moves: a tenant taking writes through its API moves to a second server; every acknowledged
write is there afterwards, sequences continue, the API serves from the new server, the old database is
kept for the rollback window then dropped, and the moved role reaches nothing else on its new server.
Moves that may not happen are refused with nothing changed.

The second server is an ``extra_cluster()`` registered through the admin API, as an operator would.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from pathlib import Path

import psycopg
import pytest

from controlplane.backups.retired import RetiredDatabases
from controlplane.moves.models import MoveRefused
from controlplane.moves.service import MoveService
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.settings import MoveSettings, Settings
from tests.integration.admin_support import assert_error
from tests.integration.cli_support import cli_env, run_cli
from tests.integration.move_support import (
    PNG,
    Client,
    StartCluster,
    Writer,
    add_second_server,
    card_numbers,
    databases_of,
    max_card_id,
    placement,
    replication_leftovers,
    role_exists,
    rows,
)
from tests.integration.tenant_support import operations, provision_with_admin, tenant_dsn

log = logging.getLogger(__name__)

#: The move of the refusals' tenant.
MOVE = "/admin/tenants/stay-put/move"

#: The ledger steps of a move that went through.
STEPS = ("create_database", "schema", "slot", "subscribe", "sync", "freeze", "catch_up", "verify", "detach", "rename",
         "switch", "unpublish", "retire")  # fmt: skip


async def test_a_tenant_moves_online_while_its_api_keeps_writing(
    client: Client, platform: Platform, control_dsn: str, pg_admin_dsn: str, extra_cluster: StartCluster
) -> None:
    second = await add_second_server(client, extra_cluster)
    mover, auth = await provision_with_admin(client, "mover")
    neighbour, _ = await provision_with_admin(client, "neighbour")
    assert (mover["server_name"], neighbour["server_name"]) == ("default", "second")
    tenant_id = uuid.UUID(mover["id"])
    database = mover["database_name"]
    cards = [await client.post("/t/mover/api/cards", json={"cardnumber": f"A-{i}"}, headers=auth) for i in range(5)]
    first = cards[0].json()["id"]
    image = await client.put(
        f"/t/mover/api/cards/{first}/image", content=PNG, headers={**auth, "Content-Type": "image/png"}
    )
    assert image.status_code == 200, image.text

    writer = Writer(client, "mover", auth)
    writer.start()
    moved = await client.post("/admin/tenants/mover/move", json={"to": "second"})
    await writer.stop_after(5)  # writes go on after the switch, to the new server
    assert moved.status_code == 200, moved.text
    move = moved.json()
    assert (move["state"], move["from_server"], move["to_server"], move["method"]) == (
        "succeeded", "default", "second", "logical",
    )  # fmt: skip
    assert 0 < move["freeze_ms"] < 5000, move
    log.warning(
        "write freeze of the move: %.1f ms (%d writes refused meanwhile)", move["freeze_ms"], len(writer.refused)
    )

    # The registry names the second server; the API reads and writes there.
    assert (await client.get("/admin/tenants/mover")).json()["tenant"]["server_name"] == "second"
    on_target = await card_numbers(second.dsn, database)
    assert set(writer.acknowledged) | {f"A-{i}" for i in range(5)} <= on_target
    last = await client.get(f"/t/mover/api/cards/{first}", headers=auth)
    assert (last.status_code, last.json()["cardnumber"]) == (200, "A-0")
    fetched = await client.get(f"/t/mover/api/cards/{first}/image", headers=auth)
    assert (fetched.status_code, fetched.content) == (200, PNG)

    # The source database is retired, as it was at the freeze: every row of it is on the target.
    retired = databases_of(pg_admin_dsn, tenant_id)
    assert len(retired) == 1 and next(iter(retired)).startswith(f"t_{tenant_id.hex}_p"), retired
    (retired_name,) = retired
    frozen = await rows(pg_admin_dsn, retired_name)
    assert move["rows_verified"] == sum(frozen.values())
    assert await card_numbers(pg_admin_dsn, retired_name) <= on_target
    assert frozen["public.files"] == 1 and (await rows(second.dsn, database))["public.files"] == 1

    # Sequences continue: a new card gets an id above every copied one.
    highest = await max_card_id(second.dsn, database)
    latest = await client.post("/t/mover/api/cards", json={"cardnumber": "AFTER"}, headers=auth)
    assert latest.status_code == 201, latest.text
    assert latest.json()["id"] > highest

    # Isolation on the new server: the moved role reaches its own database only, and the old server not at all.
    with psycopg.connect(tenant_dsn(control_dsn, second.dsn, "mover")) as conn:
        assert conn.execute("SELECT count(*) FROM cards").fetchone() == (len(on_target) + 1,)
    for reach in (
        tenant_dsn(control_dsn, second.dsn, "mover", database=neighbour["database_name"]),
        tenant_dsn(control_dsn, second.dsn, "neighbour", database=database),
        tenant_dsn(control_dsn, pg_admin_dsn, "mover", database=retired_name),
    ):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(reach).close()
    assert not role_exists(pg_admin_dsn, mover["role_name"])
    assert replication_leftovers(pg_admin_dsn) == [] and replication_leftovers(second.dsn) == []

    (operation,) = [op for op in await operations(control_dsn, tenant_id) if op["kind"] == "move"]
    assert operation["state"] == "succeeded" and operation["id"] == move["operation_id"]
    assert [step["step"] for step in operation["steps"]] == list(STEPS), operation["steps"]
    print(f"move of 'mover': freeze {move['freeze_ms']} ms; steps {operation['steps']}")
    history = (await client.get("/admin/tenants/mover/moves")).json()
    assert [(m["id"], m["state"]) for m in history] == [(move["id"], "succeeded")]
    assert (await client.post("/admin/reconcile")).json() == {"findings": [], "fixed": False}

    # Kept for the rollback window, then dropped by the restore upkeep's retired-database drop.
    service = TenantService(platform)
    assert await RetiredDatabases(platform, service).drop_due() == 0
    with psycopg.connect(control_dsn, autocommit=True) as conn:
        conn.execute("UPDATE retired_databases SET drop_after = now() WHERE database_name = %s", (retired_name,))
    assert await RetiredDatabases(platform, service).drop_due() == 1
    assert databases_of(pg_admin_dsn, tenant_id) == set()


async def test_moves_that_may_not_happen_are_refused_and_change_nothing(
    client: Client,
    settings: Settings,
    control_dsn: str,
    pg_admin_dsn: str,
    tenant_template_name: str,
    extra_cluster: StartCluster,
    tmp_path: Path,
) -> None:
    second = await add_second_server(client, extra_cluster)
    first, auth = await provision_with_admin(client, "stay-put")
    await provision_with_admin(client, "other")
    await provision_with_admin(client, "leaving")
    assert (await client.delete("/admin/tenants/leaving")).status_code < 300  # soft-deleted: status deleting
    before = placement(control_dsn)
    on_second = databases_of(second.dsn, uuid.UUID(first["id"]))

    same = assert_error(await client.post(MOVE, json={"to": "default"}), 409, "move_refused")
    assert "already" in same["detail"]
    assert_error(await client.post(MOVE, json={"to": "nowhere"}), 400, "validation_failed")
    assert_error(await client.post(MOVE, json={}), 400, "validation_failed")
    assert_error(await client.post("/admin/tenants/ghost/move", json={"to": "second"}), 404, "tenant_not_found")
    # A tenant's own token is no admin's.
    as_tenant = await client.post(MOVE, json={"to": "second"}, headers=auth)
    assert_error(as_tenant, 403, "wrong_tenant")

    assert (await client.post("/admin/servers/second/drain")).status_code == 200
    draining = assert_error(await client.post(MOVE, json={"to": "second"}), 409, "move_refused")
    assert "draining" in draining["detail"]
    assert (await client.post("/admin/servers/second/activate")).status_code == 200

    leaving = await client.post("/admin/tenants/leaving/move", json={"to": "second"})
    assert "deleting" in assert_error(leaving, 409, "move_refused")["detail"]

    # Full: CARDVAULT_SERVER_MAX_TENANTS=1 and the second server holds "other" already.
    full = dataclasses.replace(settings, moves=MoveSettings(server_max_tenants=1))
    async with Platform.open(full, migrate=False) as limited:
        with pytest.raises(MoveRefused, match="full"):
            await MoveService(limited, TenantService(limited)).move("stay-put", "second")

    # The command line refuses the same way, with the error as JSON on stderr.
    env = cli_env(control_dsn, tenant_template_name, tmp_path / "data")
    refused = run_cli(env, "tenants", "move", "stay-put", "--to", "default", "--yes")
    assert refused.code != 0 and '"move_refused"' in refused.stderr, refused

    assert placement(control_dsn) == before
    assert databases_of(second.dsn, uuid.UUID(first["id"])) == on_second == set()
    assert (await client.get("/admin/tenants/stay-put/moves")).json() == []
    assert replication_leftovers(pg_admin_dsn) == [] and replication_leftovers(second.dsn) == []
