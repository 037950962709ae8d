"""Moves that fail or die part-way: never a half-moved tenant. Before the registry switch the move is undone
(everything it made on either server goes, writes resume on the source); after it, the move is finished.

``raise`` failpoints run in process (the move settles itself at once). ``kill`` failpoints run the real
``cardvault tenants move`` and SIGKILL it during the write freeze; the reconciler leaves the interrupted
move to the move upkeep, which settles it; a second upkeep and the reconciler then find nothing.
"""

from __future__ import annotations

import dataclasses
import signal
import uuid
from pathlib import Path

import psycopg
import pytest

from controlplane.errors import OperationFailed
from controlplane.moves.service import MoveService
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import Tenant
from controlplane.settings import Settings
from tests.conftest import SECRET_KEY
from tests.harness import LocalClusterHandle
from tests.integration.backup_support import add_cards
from tests.integration.cli_support import cli_env, run_cli
from tests.integration.move_support import StartCluster, card_numbers, databases_of, replication_leftovers, role_exists
from tests.integration.tenant_support import operations, reconcile, tenant_dsn, wait_until_unlocked


async def tenant_and_second_server(
    platform: Platform, service: TenantService, extra_cluster: StartCluster, pg_admin_dsn: str
) -> tuple[Tenant, LocalClusterHandle]:
    """A tenant with three cards on the default server, and a second server to move it to."""
    second = extra_cluster()
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    async with platform.control.connection() as conn:
        await platform.fleet.register(conn, "second", second.dsn)
    await add_cards(pg_admin_dsn, tenant, ["one", "two", "three"])
    return tenant, second


async def move_states(control_dsn: str, tenant_id: uuid.UUID) -> list[tuple[str, str | None]]:
    """``(state, step)`` of the tenant's move operations in the ledger."""
    return [(op["state"], op["step"]) for op in await operations(control_dsn, tenant_id) if op["kind"] == "move"]


async def assert_served_by(control_dsn: str, server_dsn: str, other_dsn: str, tenant: Tenant, *, moved: bool) -> None:
    """The tenant's role writes on ``server_dsn``; nothing of the tenant is left on ``other_dsn`` but, after a
    move, its retired database; no replication object is left anywhere."""
    with psycopg.connect(tenant_dsn(control_dsn, server_dsn, "acme"), autocommit=True) as conn:
        conn.execute("INSERT INTO cards (cardnumber) VALUES ('four')")
    assert await card_numbers(server_dsn, tenant.database_name) == {"C-0", "C-1", "C-2", "four"}
    left = databases_of(other_dsn, tenant.id)
    if moved:
        assert len(left) == 1 and next(iter(left)).startswith(f"t_{tenant.id.hex}_p"), left
    else:
        assert left == set()
    assert not role_exists(other_dsn, tenant.role_name)
    assert replication_leftovers(server_dsn) == [] and replication_leftovers(other_dsn) == []


async def test_a_move_failing_in_the_freeze_is_undone_and_writes_resume_on_the_source(
    settings: Settings,
    platform: Platform,
    service: TenantService,
    control_dsn: str,
    pg_admin_dsn: str,
    extra_cluster: StartCluster,
) -> None:
    tenant, second = await tenant_and_second_server(platform, service, extra_cluster, pg_admin_dsn)
    failing = dataclasses.replace(settings, failpoints="after:catch_up=raise")
    async with Platform.open(failing, migrate=False) as broken:
        with pytest.raises(OperationFailed) as failed:
            await MoveService(broken, TenantService(broken)).move("acme", "second")
    assert failed.value.extra["step"] == "catch_up" and "it was undone" in failed.value.detail
    assert await move_states(control_dsn, tenant.id) == [("rolled_back", "catch_up")]
    moves = await MoveService(platform, service).moves("acme")
    assert [(m.state.value, m.freeze_ms) for m in moves] == [("rolled_back", None)]
    assert "failpoint after:catch_up" in (moves[0].error or "")
    assert (await service.get("acme")).server_name == "default"
    await assert_served_by(control_dsn, pg_admin_dsn, second.dsn, tenant, moved=False)
    assert (await reconcile(platform, fix=False)).clean


@pytest.mark.parametrize("point", ["after:rename", "after:switch"])
async def test_a_move_killed_in_the_freeze_is_settled_by_the_upkeep(
    point: str,
    settings: Settings,
    platform: Platform,
    service: TenantService,
    control_dsn: str,
    pg_admin_dsn: str,
    extra_cluster: StartCluster,
    tmp_path: Path,
) -> None:
    tenant, second = await tenant_and_second_server(platform, service, extra_cluster, pg_admin_dsn)
    env = cli_env(
        control_dsn,
        settings.provisioning.template_database,
        tmp_path / "data",
        CARDVAULT_FAILPOINTS=f"{point}=kill",
        CARDVAULT_SECRET_KEY=SECRET_KEY,
    )
    result = run_cli(env, "tenants", "move", "acme", "--to", "second", "--yes")
    assert result.code == -signal.SIGKILL, result
    await wait_until_unlocked(control_dsn)
    assert await move_states(control_dsn, tenant.id) == [("running", None)]
    # Killed in the freeze: the tenant's writes are refused until the move is settled.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(tenant_dsn(control_dsn, pg_admin_dsn, "acme")).close()

    report = await reconcile(platform, fix=True)
    kinds = [(f.kind, f.action) for f in report.findings]
    assert ("interrupted_operation", "left to the move upkeep (cardvault tenants move-upkeep)") in kinds

    moves = MoveService(platform, service)
    outcome = await moves.upkeep()
    (move,) = await moves.moves("acme")
    if point == "after:switch":
        assert "finished" in outcome and move.state.value == "succeeded" and move.freeze_ms is not None
        assert (await service.get("acme")).server_name == "second"
        await assert_served_by(control_dsn, second.dsn, pg_admin_dsn, tenant, moved=True)
    else:
        assert "rolled back" in outcome and move.state.value == "rolled_back"
        assert (await service.get("acme")).server_name == "default"
        await assert_served_by(control_dsn, pg_admin_dsn, second.dsn, tenant, moved=False)
    assert await moves.upkeep() == "no interrupted move"
    assert (await reconcile(platform, fix=False)).clean
