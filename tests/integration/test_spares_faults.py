"""Failures and crashes while a spare is claimed or made, and the reconciler converging after them.

Whatever fails, a claimed spare ends either renamed into a working tenant or dropped with the tenant's
every trace: never both a spare and a tenant database, never leaked. ``raise`` failpoints run in-process;
``kill`` failpoints SIGKILL the real ``cardvault`` command (``tenants create``, ``spares refill``) and the
reconciler, run in-process afterwards, rolls the provisioning forward (or back, with no attempts left)
and drops what a dead refill left half made; its second run is clean.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import uuid
from pathlib import Path

import pytest
from psycopg import conninfo, sql

from controlplane.errors import OperationFailed
from controlplane.platform import Platform
from controlplane.provisioning.inputs import FirstAdmin
from controlplane.provisioning.service import TenantService
from controlplane.settings import Settings
from tests.integration.cli_support import cli_env, run_cli
from tests.integration.spare_support import (
    claimed_spare,
    objects_of,
    oids,
    ready_spares,
    spare_objects,
    spare_rows,
    spare_service,
    with_spares,
)
from tests.integration.tenant_support import (
    assert_tenant_gone,
    assert_tenant_works,
    execute,
    fetch,
    operations,
    reconcile,
    wait_until_unlocked,
)

CLAIM_POINTS = [
    "before:claim_spare",
    "after:claim_spare",
    "before:seed_admin",
    "after:seed_admin",
    "before:activate",
    "after:activate",
]
ADMIN = FirstAdmin(email="admin@doomed.test", password_hash="$argon2id$not-a-real-hash")


async def tenant_id_of(control_dsn: str, slug: str) -> uuid.UUID:
    (row,) = await fetch(
        control_dsn, "SELECT DISTINCT tenant_id FROM tenant_operations WHERE tenant_slug = %s", (slug,)
    )
    return uuid.UUID(str(row["tenant_id"]))


async def admins_in(admin_dsn: str, database: str) -> list[str]:
    rows = await fetch(
        conninfo.make_conninfo(admin_dsn, dbname=database), "SELECT email FROM users WHERE tenant_role = 'tenant_admin'"
    )
    return [r["email"] for r in rows]


@pytest.mark.parametrize("point", CLAIM_POINTS)
async def test_failed_claim_leaves_neither_tenant_nor_spare_behind(
    point: str, settings: Settings, control_dsn: str, pg_admin_dsn: str
) -> None:
    async with spare_service(settings, 2) as (_, service):
        await service.spares.refill()
        first, second = await ready_spares(control_dsn)

    async with spare_service(dataclasses.replace(settings, failpoints=f"{point}=raise"), 2) as (_, broken):
        with pytest.raises(OperationFailed) as caught:
            await broken.create(name="Doomed", slug="doomed", tier="starter", admin=ADMIN)
    assert caught.value.extra["step"] == point.split(":")[1]

    tenant_id = await tenant_id_of(control_dsn, "doomed")
    (op,) = await operations(control_dsn, tenant_id)
    assert (op["state"], op["params"]["spare"]["name"]) == ("rolled_back", first)
    assert "drop_spare" in [s["step"] for s in op["steps"]]
    await assert_tenant_gone(control_dsn, pg_admin_dsn, tenant_id)
    # The claimed spare is gone (row, database, role); the other one is untouched and still claimable.
    assert await ready_spares(control_dsn) == [second]
    assert await spare_objects(pg_admin_dsn) == objects_of([second])
    async with spare_service(settings, 2) as (platform, service):
        assert (await reconcile(platform, fix=True)).clean
        tenant = await service.create(name="Doomed", slug="doomed", tier="starter")
        assert await claimed_spare(control_dsn, tenant.id) == second
        await assert_tenant_works(platform, pg_admin_dsn, tenant)


async def test_a_spare_whose_privileges_changed_is_not_handed_out(
    settings: Settings, control_dsn: str, pg_admin_dsn: str
) -> None:
    """The claim checks the ACL it renames: a spare every role may connect to never becomes a tenant."""
    async with spare_service(settings, 1) as (platform, service):
        await service.spares.refill()
        (spare,) = await ready_spares(control_dsn)
        await execute(pg_admin_dsn, sql.SQL("GRANT CONNECT ON DATABASE {} TO PUBLIC").format(sql.Identifier(spare)))

        with pytest.raises(OperationFailed) as caught:
            await service.create(name="Careful", slug="careful", tier="starter")

        assert caught.value.extra["step"] == "claim_spare"
        assert "PUBLIC may connect" in caught.value.detail
        await assert_tenant_gone(control_dsn, pg_admin_dsn, await tenant_id_of(control_dsn, "careful"))
        assert await spare_rows(control_dsn) == []
        assert await spare_objects(pg_admin_dsn) == set()
        assert (await reconcile(platform, fix=True)).clean


async def test_a_refill_that_fails_cleans_up_its_spare(settings: Settings, control_dsn: str, pg_admin_dsn: str) -> None:
    for point in ("after:spare_clone", "after:spare_role"):
        async with spare_service(dataclasses.replace(settings, failpoints=f"{point}=raise"), 2) as (_, service):
            (outcome,) = await service.spares.refill()
        assert outcome.note.startswith("failed: failpoint"), outcome
        assert await spare_rows(control_dsn) == []
        assert await spare_objects(pg_admin_dsn) == set()


async def test_a_rename_lost_in_a_server_crash_is_redone_by_the_reconciler(
    settings: Settings, control_dsn: str, pg_admin_dsn: str
) -> None:
    """The rename commits without waiting for the flush: a server crash may lose it after the tenant went
    active. The reconciler finds the database missing, its claimed spare still there, and renames it again
    (it is never taken for an orphan spare)."""
    async with spare_service(settings, 1) as (platform, service):
        await service.spares.refill()
        (spare,) = await ready_spares(control_dsn)
        tenant = await service.create(name="Lost", slug="lost", tier="starter", admin=ADMIN)
        ident, back = sql.Identifier(tenant.database_name), sql.Identifier(spare)
        await execute(pg_admin_dsn, sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident, back))
        await execute(pg_admin_dsn, sql.SQL("ALTER ROLE {} RENAME TO {}").format(ident, back))

        report = await reconcile(platform, fix=False)
        assert [(f.kind, f.subject) for f in report.findings] == [("missing_database", "lost")]
        report = await reconcile(platform, fix=True)
        assert [f.action for f in report.findings] == [
            "renamed again from the spare it claimed (a crash lost the rename)"
        ]
        await assert_tenant_works(platform, pg_admin_dsn, await service.get("lost"))
        assert await admins_in(pg_admin_dsn, tenant.database_name) == [ADMIN.email]
        assert (await reconcile(platform, fix=True)).clean


# -- kill: the CLI dies mid-operation -------------------------------------------------------------


def spare_cli_env(control_dsn: str, template: str, tmp_path: Path, failpoints: str, spares: int = 1) -> dict[str, str]:
    return cli_env(
        control_dsn,
        template,
        tmp_path,
        CARDVAULT_SPARE_DATABASES=str(spares),
        CARDVAULT_RECONCILE_INTERVAL="0",
        CARDVAULT_FAILPOINTS=failpoints,
    )


async def create_killed_at(
    point: str, settings: Settings, control_dsn: str, admin_dsn: str, template: str, tmp_path: Path
) -> tuple[uuid.UUID, str, tuple[int | None, int | None]]:
    """A spare made, then ``cardvault tenants create`` (with a first admin) SIGKILLed at ``point``:
    the tenant's id, the spare's name and its (database, role) OIDs."""
    async with spare_service(settings, 1) as (_, service):
        await service.spares.refill()
    (spare,) = await ready_spares(control_dsn)
    spare_oids = await oids(admin_dsn, spare)
    env = spare_cli_env(control_dsn, template, tmp_path, f"{point}=kill")
    args = ("tenants", "create", "--name", "Crash", "--slug", "crash", "--admin-email", "admin@crash.test")
    done = await asyncio.to_thread(run_cli, env, *args, stdin="correct horse battery staple\n")
    assert done.code == -signal.SIGKILL, (done.code, done.stderr)
    await wait_until_unlocked(control_dsn)
    return await tenant_id_of(control_dsn, "crash"), spare, spare_oids


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before:claim_spare", "after:claim_spare", "after:seed_admin", "before:activate"])
async def test_create_killed_during_a_claim_is_rolled_forward(
    point: str, settings: Settings, control_dsn: str, pg_admin_dsn: str, tenant_template_name: str, tmp_path: Path
) -> None:
    tenant_id, spare, spare_oids = await create_killed_at(
        point, settings, control_dsn, pg_admin_dsn, tenant_template_name, tmp_path
    )
    async with Platform.open(with_spares(settings, 1), migrate=False) as platform:
        first = await reconcile(platform, fix=True)
        assert [(f.kind, f.subject, f.action) for f in first.findings] == [
            ("interrupted_operation", "crash", "finished")
        ]
        tenant = await TenantService(platform).get("crash")
        assert tenant.id == tenant_id and await claimed_spare(control_dsn, tenant_id) == spare
        await assert_tenant_works(platform, pg_admin_dsn, tenant)
        assert await admins_in(pg_admin_dsn, tenant.database_name) == ["admin@crash.test"]
        assert await oids(pg_admin_dsn, tenant.database_name) == spare_oids  # renamed, not cloned
        assert await spare_objects(pg_admin_dsn) == set()
        (op,) = await operations(control_dsn, tenant_id)
        assert op["state"] == "succeeded"
        assert (await reconcile(platform, fix=True)).clean


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before:claim_spare", "after:claim_spare"])
async def test_create_killed_during_a_claim_with_no_attempts_left_drops_the_spare(
    point: str, settings: Settings, control_dsn: str, pg_admin_dsn: str, tenant_template_name: str, tmp_path: Path
) -> None:
    tenant_id, _, _ = await create_killed_at(point, settings, control_dsn, pg_admin_dsn, tenant_template_name, tmp_path)
    strict = dataclasses.replace(settings, provisioning=dataclasses.replace(settings.provisioning, max_attempts=1))
    async with Platform.open(strict, migrate=False) as platform:
        first = await reconcile(platform, fix=True)
        assert [(f.kind, f.action) for f in first.findings] == [("interrupted_operation", "rolled back")]
        await assert_tenant_gone(control_dsn, pg_admin_dsn, tenant_id)
        assert await spare_objects(pg_admin_dsn) == set()  # under neither its spare name nor the tenant's
        assert (await reconcile(platform, fix=True)).clean


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after:spare_clone", "after:spare_role"])
async def test_refill_killed_half_way_is_cleared_by_the_reconciler(
    point: str, settings: Settings, control_dsn: str, pg_admin_dsn: str, tenant_template_name: str, tmp_path: Path
) -> None:
    env = spare_cli_env(control_dsn, tenant_template_name, tmp_path, f"{point}=kill", spares=2)
    done = await asyncio.to_thread(run_cli, env, "spares", "refill")
    assert done.code == -signal.SIGKILL, (done.code, done.stderr)
    await wait_until_unlocked(control_dsn)
    (row,) = await spare_rows(control_dsn)
    assert row["state"] == "creating"
    assert f"database:{row['database_name']}" in await spare_objects(pg_admin_dsn)

    async with Platform.open(with_spares(settings, 2), migrate=False) as platform:
        report = await reconcile(platform, fix=True)
        assert [(f.kind, f.subject, f.action) for f in report.findings] == [
            ("interrupted_spare", row["database_name"], "dropped")
        ]
        assert await spare_rows(control_dsn) == []
        assert await spare_objects(pg_admin_dsn) == set()
        assert (await reconcile(platform, fix=True)).clean
