"""Failures and crashes at every step of provisioning and purging, and the reconciler converging after them.

``raise`` failpoints (in-process): a failed create leaves nothing behind (registry, server, ledger
``rolled_back``); a failed purge is finished by the next reconciler run. ``kill`` failpoints (the real
``cardvault`` CLI in a subprocess, SIGKILLed mid-operation) and ``hang`` + SIGKILL from the test: the
reconciler, run in-process afterwards, either rolls the provisioning forward into a fully working
tenant or removes every trace; its second run is clean.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from controlplane.errors import OperationFailed
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import TenantStatus
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.integration.tenant_support import (
    Snapshot,
    assert_tenant_gone,
    assert_tenant_works,
    database_exists,
    fetch,
    operations,
    reconcile,
    server_roles,
    snapshot,
    wait_until_unlocked,
)

PROVISION_STEPS = ("template", "create_database", "create_role", "activate")
PURGE_STEPS = ("drop_database", "drop_role", "drop_files", "forget")
PROVISION_POINTS = [f"{when}:{step}" for step in PROVISION_STEPS for when in ("before", "after")]
PURGE_POINTS = [f"{when}:{step}" for step in PURGE_STEPS for when in ("before", "after")]
CARDVAULT = Path(sys.executable).with_name("cardvault")


@asynccontextmanager
async def failing(settings: Settings, spec: str) -> AsyncIterator[TenantService]:
    """A second control plane on the same control database, with failpoints set."""
    async with Platform.open(dataclasses.replace(settings, failpoints=spec), migrate=False) as opened:
        yield TenantService(opened)


def registry_and_server(snap: Snapshot) -> tuple[object, ...]:
    """A snapshot without the ledger (which a failed operation is expected to extend)."""
    return snap.registry["tenants"], snap.registry["tenant_quotas"], snap.databases, snap.roles


async def tenant_ids_for(control_dsn: str, slug: str) -> set[uuid.UUID]:
    rows = await fetch(control_dsn, "SELECT DISTINCT tenant_id FROM tenant_operations WHERE tenant_slug = %s", (slug,))
    return {r["tenant_id"] for r in rows}


async def assert_converged_clean(platform: Platform) -> None:
    report = await reconcile(platform, fix=True)
    assert report.clean, report.findings


# -- raise: in-process failures ---------------------------------------------------------------------


@pytest.mark.parametrize("point", PROVISION_POINTS)
async def test_failed_create_leaves_nothing_behind(
    point: str, settings: Settings, service: TenantService, platform: Platform, control_dsn: str, pg_admin_dsn: str
) -> None:
    await service.create(name="Bystander", slug="bystander", tier="starter")
    before = await snapshot(control_dsn, pg_admin_dsn)

    async with failing(settings, f"{point}=raise") as broken:
        with pytest.raises(OperationFailed) as caught:
            await broken.create(name="Doomed", slug="doomed", tier="professional")

    assert (caught.value.code, caught.value.status) == ("operation_failed", 500)
    assert caught.value.extra["step"] == point.split(":")[1]
    after = await snapshot(control_dsn, pg_admin_dsn)
    assert registry_and_server(after) == registry_and_server(before)
    (tenant_id,) = await tenant_ids_for(control_dsn, "doomed")
    (op,) = await operations(control_dsn, tenant_id)
    assert (op["kind"], op["state"], op["step"]) == ("provision", "rolled_back", point.split(":")[1])
    assert f"failpoint {point}" in op["error"]
    await assert_tenant_gone(control_dsn, pg_admin_dsn, tenant_id)
    report = await reconcile(platform, fix=False)
    assert report.clean, report.findings
    # and the slug is free for a real attempt
    await assert_tenant_works(platform, pg_admin_dsn, await service.create(name="D", slug="doomed", tier="starter"))


@pytest.mark.parametrize("point", PURGE_POINTS)
async def test_failed_purge_is_finished_by_the_reconciler(
    point: str, settings: Settings, service: TenantService, platform: Platform, control_dsn: str, pg_admin_dsn: str
) -> None:
    tenant = await service.create(name="Doomed", slug="doomed", tier="starter")
    await service.create(name="Bystander", slug="bystander", tier="starter")

    async with failing(settings, f"{point}=raise") as broken:
        with pytest.raises(OperationFailed) as caught:
            await broken.delete("doomed", now=True)
    assert caught.value.status == 500

    purge = (await operations(control_dsn, tenant.id))[-1]
    assert (purge["kind"], purge["state"]) == ("purge", "failed")
    report = await reconcile(platform, fix=True)
    assert all(f.action in ("purged", "finished") for f in report.findings), report.findings
    await assert_tenant_gone(control_dsn, pg_admin_dsn, tenant.id)
    await assert_converged_clean(platform)
    await assert_tenant_works(platform, pg_admin_dsn, await service.get("bystander"))


async def test_failed_create_whose_undo_fails_too_is_rolled_back_by_the_reconciler(
    settings: Settings, platform: Platform, control_dsn: str, pg_admin_dsn: str
) -> None:
    async with failing(settings, "after:create_database=raise,before:drop_database=raise") as broken:
        with pytest.raises(OperationFailed):
            await broken.create(name="Doomed", slug="doomed", tier="starter")
    (tenant_id,) = await tenant_ids_for(control_dsn, "doomed")
    (op,) = await operations(control_dsn, tenant_id)
    assert (op["state"], op["step"]) == ("failed", "create_database")
    assert "undo failed" in op["error"]
    assert await database_exists(pg_admin_dsn, f"t_{tenant_id.hex}")

    report = await reconcile(platform, fix=False)
    assert [(f.kind, f.subject, f.action) for f in report.findings] == [("failed_provisioning", "doomed", "reported")]
    report = await reconcile(platform, fix=True)
    assert [(f.kind, f.subject, f.action) for f in report.findings] == [
        ("failed_provisioning", "doomed", "rolled back")
    ]
    await assert_tenant_gone(control_dsn, pg_admin_dsn, tenant_id)
    await assert_converged_clean(platform)


TRANSITIONS = [
    (kind, f"{when}:{step}")
    for kind in ("suspend", "resume", "delete")
    for step in ("set_access", "record")
    for when in ("before", "after")
]


@pytest.mark.parametrize(("kind", "point"), TRANSITIONS)
async def test_failed_transition_leaves_access_matching_the_registry(
    kind: str, point: str, settings: Settings, service: TenantService, platform: Platform, pg_admin_dsn: str
) -> None:
    """Whatever step fails, the role may log in exactly when the registry says the tenant is active."""
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    if kind == "resume":
        await service.suspend("acme")

    async with failing(settings, f"{point}=raise") as broken:
        with pytest.raises(OperationFailed) as caught:
            await getattr(broken, kind)("acme")
    assert caught.value.status == 500

    status = (await service.get("acme")).status
    can_login = (await server_roles(pg_admin_dsn))[tenant.role_name]["rolcanlogin"]
    assert can_login is (status is TenantStatus.ACTIVE), (status, can_login)
    report = await reconcile(platform, fix=True)
    assert report.clean, report.findings


# -- kill: the CLI dies mid-operation -------------------------------------------------------------


def cli_env(control_dsn: str, template: str, data_dir: Path, failpoints: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARDVAULT_")}
    env.update(
        CARDVAULT_DATABASE_URL=control_dsn,
        CARDVAULT_SECRET_KEY=SECRET_KEY,
        CARDVAULT_ADMIN_TOKEN=ADMIN_TOKEN,
        CARDVAULT_TEMPLATE_DATABASE=template,
        CARDVAULT_DATA_DIR=str(data_dir),
        CARDVAULT_RECONCILE_INTERVAL="0",
        CARDVAULT_LOG_LEVEL="WARNING",
        CARDVAULT_FAILPOINTS=failpoints,
    )
    return env


async def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [str(CARDVAULT), *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def cli(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> Callable[[str], dict[str, str]]:
    """``cli(failpoints)`` -> the environment of a ``cardvault`` process on this test's control plane."""
    return lambda failpoints: cli_env(control_dsn, tenant_template_name, tmp_path, failpoints)


@pytest.mark.slow
@pytest.mark.parametrize("point", PROVISION_POINTS)
async def test_create_killed_mid_operation_is_rolled_forward(
    point: str,
    cli: Callable[[str], dict[str, str]],
    service: TenantService,
    platform: Platform,
    control_dsn: str,
    pg_admin_dsn: str,
) -> None:
    done = await run_cli(cli(f"{point}=kill"), "tenants", "create", "--name", "Crash", "--slug", "crash")
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr)
    await wait_until_unlocked(control_dsn)
    (tenant_id,) = await tenant_ids_for(control_dsn, "crash")

    first = await reconcile(platform, fix=True)

    if point == "after:activate":
        assert first.clean, first.findings  # it had finished before it died
    else:
        assert [(f.kind, f.subject, f.action) for f in first.findings] == [
            ("interrupted_operation", "crash", "finished")
        ]
    tenant = await service.get("crash")
    assert tenant.id == tenant_id
    await assert_tenant_works(platform, pg_admin_dsn, tenant)
    (op,) = await operations(control_dsn, tenant_id)
    assert (op["kind"], op["state"]) == ("provision", "succeeded")
    await assert_converged_clean(platform)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after:create_database", "after:create_role"])
async def test_create_killed_too_often_is_rolled_back(
    point: str,
    cli: Callable[[str], dict[str, str]],
    settings: Settings,
    control_dsn: str,
    pg_admin_dsn: str,
) -> None:
    """With no attempts left (max_attempts=1) the reconciler undoes the provisioning instead."""
    done = await run_cli(cli(f"{point}=kill"), "tenants", "create", "--name", "Crash", "--slug", "crash")
    assert done.returncode == -signal.SIGKILL, done.stderr
    await wait_until_unlocked(control_dsn)
    (tenant_id,) = await tenant_ids_for(control_dsn, "crash")
    assert await database_exists(pg_admin_dsn, f"t_{tenant_id.hex}")
    strict = dataclasses.replace(settings, provisioning=dataclasses.replace(settings.provisioning, max_attempts=1))
    async with Platform.open(strict, migrate=False) as platform:
        first = await reconcile(platform, fix=True)
        assert [(f.kind, f.action) for f in first.findings] == [("interrupted_operation", "rolled back")]
        await assert_tenant_gone(control_dsn, pg_admin_dsn, tenant_id)
        (op,) = await operations(control_dsn, tenant_id)
        assert (op["kind"], op["state"]) == ("provision", "rolled_back")
        await assert_converged_clean(platform)


@pytest.mark.slow
@pytest.mark.parametrize("point", [f"after:{step}" for step in PURGE_STEPS] + ["before:drop_database"])
async def test_purge_killed_mid_operation_is_finished(
    point: str,
    cli: Callable[[str], dict[str, str]],
    service: TenantService,
    platform: Platform,
    control_dsn: str,
    pg_admin_dsn: str,
) -> None:
    tenant = await service.create(name="Doomed", slug="doomed", tier="starter")
    await service.create(name="Bystander", slug="bystander", tier="starter")

    done = await run_cli(cli(f"{point}=kill"), "tenants", "delete", "doomed", "--now", "--yes")
    assert done.returncode == -signal.SIGKILL, done.stderr
    await wait_until_unlocked(control_dsn)

    first = await reconcile(platform, fix=True)
    if point != "after:forget":
        assert ("interrupted_operation", "doomed", "finished") in [
            (f.kind, f.subject, f.action) for f in first.findings
        ]
    await assert_tenant_gone(control_dsn, pg_admin_dsn, tenant.id)
    assert (await operations(control_dsn, tenant.id))[-1]["state"] == "succeeded"
    await assert_converged_clean(platform)
    await assert_tenant_works(platform, pg_admin_dsn, await service.get("bystander"))


@pytest.mark.slow
async def test_hung_create_is_left_alone_while_alive_and_finished_once_killed(
    cli: Callable[[str], dict[str, str]],
    service: TenantService,
    platform: Platform,
    control_dsn: str,
    pg_admin_dsn: str,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(CARDVAULT),
        *("tenants", "create", "--name", "Hung", "--slug", "hung"),
        env=cli("before:create_role=hang"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Wait until it hangs: its database exists, its role does not yet.
        deadline = time.monotonic() + 60
        while True:
            rows = await fetch(control_dsn, "SELECT id, database_name FROM tenants WHERE slug = 'hung'")
            if rows and await database_exists(pg_admin_dsn, rows[0]["database_name"]):
                break
            assert proc.returncode is None, f"the CLI exited with {proc.returncode}"
            assert time.monotonic() < deadline, "the CLI never reached create_role"
            await asyncio.sleep(0.05)
        tenant_id = rows[0]["id"]
        before = await snapshot(control_dsn, pg_admin_dsn)

        alive = await reconcile(platform, fix=True)

        assert alive.clean, alive.findings  # an operation in progress is neither interrupted nor an orphan
        assert await snapshot(control_dsn, pg_admin_dsn) == before
        assert (await service.get("hung")).status is TenantStatus.PROVISIONING
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    await wait_until_unlocked(control_dsn)

    killed = await reconcile(platform, fix=True)

    assert [(f.kind, f.subject, f.action) for f in killed.findings] == [("interrupted_operation", "hung", "finished")]
    tenant = await service.get("hung")
    assert tenant.id == tenant_id
    await assert_tenant_works(platform, pg_admin_dsn, tenant)
    await assert_converged_clean(platform)
