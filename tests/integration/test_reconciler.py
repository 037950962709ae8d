"""The reconciler (controlplane/provisioning/reconciler.py) against drift made by hand on a real server.

Report-only runs change nothing; fix runs purge due deletions, mark tenants whose database vanished as
broken, re-create lost roles, drop leftovers this control plane made (known from its ledger) and never
touch a ``t_*`` database it did not make. A tenant whose lock is held is left alone.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from psycopg import sql

from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import Tenant, TenantStatus
from controlplane.settings import Settings
from tests.integration.tenant_support import (
    assert_tenant_gone,
    assert_tenant_works,
    database_exists,
    execute,
    finding_kinds,
    operations,
    reconcile,
    refusal,
    registry_row,
    role_exists,
    snapshot,
    tenant_password,
)


def drop_database_by_hand(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    return name


def drop_role_by_hand(admin_dsn: str, tenant: Tenant) -> None:
    """What an operator's careless cleanup does: the role and its CONNECT grant are gone."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        ident = sql.Identifier(tenant.role_name)
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(tenant.database_name), ident))
        conn.execute(sql.SQL("DROP ROLE {}").format(ident))


@pytest.fixture
async def no_grace(settings: Settings) -> AsyncIterator[TenantService]:
    """A service whose soft deletes are due at once."""
    changed = dataclasses.replace(settings, provisioning=dataclasses.replace(settings.provisioning, delete_grace=0))
    async with Platform.open(changed, migrate=False) as opened:
        yield TenantService(opened)


def make_database(pg_admin_dsn: str, name: str) -> Iterator[str]:
    """A database closed to PUBLIC, as a control plane keeps its own (an open one is another finding)."""
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def foreign_database(pg_admin_dsn: str) -> Iterator[str]:
    """A ``t_<hex>`` database this control plane never made (another control plane's, say)."""
    yield from make_database(pg_admin_dsn, f"t_{uuid.uuid4().hex}")


@pytest.fixture
def almost_tenant_database(pg_admin_dsn: str) -> Iterator[str]:
    """Named like a tenant database but for a trailing newline: not a tenant name at all."""
    yield from make_database(pg_admin_dsn, f"t_{uuid.uuid4().hex}\n")


async def test_a_healthy_fleet_is_clean(service: TenantService, platform: Platform) -> None:
    await service.create(name="Acme", slug="acme", tier="starter")
    await service.create(name="Paused", slug="paused", tier="starter")
    await service.suspend("paused")
    for fix in (False, True):
        report = await reconcile(platform, fix=fix)
        assert report.clean, report.findings
        assert report.fixed is fix


async def test_report_only_changes_nothing(
    service: TenantService,
    no_grace: TenantService,
    platform: Platform,
    control_dsn: str,
    pg_admin_dsn: str,
    foreign_database: str,
) -> None:
    await no_grace.create(name="Due", slug="due", tier="starter")
    await no_grace.delete("due")
    lost_db = await service.create(name="Lost database", slug="lost-db", tier="starter")
    drop_database_by_hand(pg_admin_dsn, lost_db.database_name)
    lost_role = await service.create(name="Lost role", slug="lost-role", tier="starter")
    drop_role_by_hand(pg_admin_dsn, lost_role)
    orphan = await service.create(name="Orphan", slug="orphan", tier="starter")
    await execute(control_dsn, "DELETE FROM tenants WHERE id = %s", (orphan.id,))
    before = await snapshot(control_dsn, pg_admin_dsn)

    report = await reconcile(platform, fix=False)

    assert finding_kinds(report) == sorted(
        [
            ("purge_due", "due"),
            ("missing_database", "lost-db"),
            ("missing_role", "lost-role"),
            ("orphan", orphan.database_name),
            ("orphan", foreign_database),
        ]
    )
    assert all(f.action == "reported" for f in report.findings)
    assert not report.fixed
    assert await snapshot(control_dsn, pg_admin_dsn) == before
    # Running it again finds the same, still without touching anything.
    assert finding_kinds(await reconcile(platform, fix=False)) == finding_kinds(report)
    assert await snapshot(control_dsn, pg_admin_dsn) == before


async def test_fix_purges_due_deletions(
    no_grace: TenantService, platform: Platform, control_dsn: str, pg_admin_dsn: str
) -> None:
    due = await no_grace.create(name="Due", slug="due", tier="starter")
    kept = await no_grace.create(name="Kept", slug="kept", tier="starter")
    deleted = await no_grace.delete("due")
    assert deleted is not None and deleted.status is TenantStatus.DELETING
    assert await database_exists(pg_admin_dsn, due.database_name)  # soft: still there until the reconciler runs

    report = await reconcile(platform, fix=True)

    assert [(f.kind, f.subject, f.action) for f in report.findings] == [("purge_due", "due", "purged")]
    await assert_tenant_gone(control_dsn, pg_admin_dsn, due.id)
    assert [op["kind"] for op in await operations(control_dsn, due.id)] == ["provision", "delete", "purge"]
    await assert_tenant_works(platform, pg_admin_dsn, await no_grace.get("kept"))
    assert kept.id != due.id
    assert (await reconcile(platform, fix=True)).clean


async def test_a_vanished_database_marks_the_tenant_broken_then_purge_works(
    service: TenantService, platform: Platform, control_dsn: str, pg_admin_dsn: str
) -> None:
    tenant = await service.create(name="Lost", slug="lost", tier="starter")
    drop_database_by_hand(pg_admin_dsn, tenant.database_name)

    report = await reconcile(platform, fix=True)

    assert [(f.kind, f.subject) for f in report.findings] == [("missing_database", "lost")]
    assert report.findings[0].action.startswith("marked broken")
    broken = await service.get("lost")
    assert broken.status is TenantStatus.BROKEN
    repair = (await operations(control_dsn, tenant.id))[-1]
    assert (repair["kind"], repair["state"]) == ("repair", "succeeded")
    # Broken tenants are left to the operator: the next cycle is clean.
    assert (await reconcile(platform, fix=True)).clean

    await service.delete("lost", now=True)

    await assert_tenant_gone(control_dsn, pg_admin_dsn, tenant.id)
    assert (await reconcile(platform, fix=True)).clean


async def test_a_vanished_database_of_a_deleting_tenant_is_purged(
    service: TenantService, platform: Platform, control_dsn: str, pg_admin_dsn: str
) -> None:
    tenant = await service.create(name="Lost", slug="lost", tier="starter")
    await service.delete("lost")  # default grace: a week, so not due
    drop_database_by_hand(pg_admin_dsn, tenant.database_name)

    report = await reconcile(platform, fix=True)

    assert [(f.kind, f.subject, f.action) for f in report.findings] == [("missing_database", "lost", "purged")]
    await assert_tenant_gone(control_dsn, pg_admin_dsn, tenant.id)


async def test_leftovers_known_to_the_ledger_are_dropped(
    service: TenantService, platform: Platform, control_dsn: str, pg_admin_dsn: str
) -> None:
    keep = await service.create(name="Keep", slug="keep", tier="starter")
    lost = await service.create(name="Lost row", slug="lost-row", tier="starter")
    await execute(control_dsn, "DELETE FROM tenants WHERE id = %s", (lost.id,))

    report = await reconcile(platform, fix=True)

    assert [(f.kind, f.subject, f.action) for f in report.findings] == [("orphan", lost.database_name, "dropped")]
    assert "made by this control plane" in report.findings[0].detail
    assert not await database_exists(pg_admin_dsn, lost.database_name)
    assert not await role_exists(pg_admin_dsn, lost.role_name)
    await assert_tenant_works(platform, pg_admin_dsn, await service.get("keep"))
    assert keep.id != lost.id
    assert (await reconcile(platform, fix=True)).clean


async def test_a_leftover_role_alone_is_dropped(
    service: TenantService, platform: Platform, control_dsn: str, pg_admin_dsn: str
) -> None:
    tenant = await service.create(name="Half", slug="half", tier="starter")
    drop_database_by_hand(pg_admin_dsn, tenant.database_name)
    await execute(control_dsn, "DELETE FROM tenants WHERE id = %s", (tenant.id,))

    report = await reconcile(platform, fix=True)

    assert [(f.kind, f.subject, f.action) for f in report.findings] == [("orphan", tenant.role_name, "dropped")]
    assert report.findings[0].detail.startswith("role with no registry row")
    assert not await role_exists(pg_admin_dsn, tenant.role_name)


async def test_a_foreign_tenant_database_is_reported_and_left_alone(
    service: TenantService, platform: Platform, control_dsn: str, pg_admin_dsn: str, foreign_database: str
) -> None:
    await service.create(name="Acme", slug="acme", tier="starter")

    for _ in range(2):
        report = await reconcile(platform, fix=True)
        assert [(f.kind, f.subject, f.action) for f in report.findings] == [("orphan", foreign_database, "reported")]
        assert "foreign" in report.findings[0].detail
        assert await database_exists(pg_admin_dsn, foreign_database)


async def test_a_lost_role_is_recreated_and_can_log_in_again(
    service: TenantService, platform: Platform, control_dsn: str, pg_admin_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="professional")
    drop_role_by_hand(pg_admin_dsn, tenant)
    assert not await role_exists(pg_admin_dsn, tenant.role_name)

    report = await reconcile(platform, fix=True)

    assert [(f.kind, f.subject, f.action) for f in report.findings] == [("missing_role", "acme", "role re-created")]
    await assert_tenant_works(platform, pg_admin_dsn, await service.get("acme"))
    assert (await reconcile(platform, fix=True)).clean


async def test_a_lost_role_of_a_suspended_tenant_comes_back_locked(
    service: TenantService, platform: Platform, pg_admin_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    await service.suspend("acme")
    drop_role_by_hand(pg_admin_dsn, tenant)

    report = await reconcile(platform, fix=True)

    assert [(f.kind, f.action) for f in report.findings] == [("missing_role", "role re-created")]
    assert await role_exists(pg_admin_dsn, tenant.role_name)
    password = await tenant_password(platform, tenant.id)
    assert "not permitted to log in" in await refusal(pg_admin_dsn, tenant.role_name, password, tenant.database_name)
    await service.resume("acme")
    await assert_tenant_works(platform, pg_admin_dsn, await service.get("acme"))


async def test_tenants_with_an_operation_in_progress_are_left_alone(
    service: TenantService,
    no_grace: TenantService,
    platform: Platform,
    control_dsn: str,
    pg_admin_dsn: str,
) -> None:
    due = await no_grace.create(name="Due", slug="due", tier="starter")
    await no_grace.delete("due")
    lost_db = await service.create(name="Lost database", slug="lost-db", tier="starter")
    drop_database_by_hand(pg_admin_dsn, lost_db.database_name)
    lost_role = await service.create(name="Lost role", slug="lost-role", tier="starter")
    drop_role_by_hand(pg_admin_dsn, lost_role)
    before = await snapshot(control_dsn, pg_admin_dsn)

    async with service.locked(due.id), service.locked(lost_db.id), service.locked(lost_role.id):
        report = await reconcile(platform, fix=True)
        assert await snapshot(control_dsn, pg_admin_dsn) == before

    assert sorted((f.kind, f.subject, f.action) for f in report.findings) == [
        ("missing_database", "lost-db", "skipped: operation in progress"),
        ("missing_role", "lost-role", "skipped: operation in progress"),
        ("purge_due", "due", "skipped: operation in progress"),
    ]
    # Once the locks are free, the same run repairs everything.
    report = await reconcile(platform, fix=True)
    assert sorted((f.kind, f.subject) for f in report.findings) == [
        ("missing_database", "lost-db"),
        ("missing_role", "lost-role"),
        ("purge_due", "due"),
    ]
    assert await registry_row(control_dsn, due.id) is None
    assert (await service.get("lost-db")).status is TenantStatus.BROKEN
    assert await role_exists(pg_admin_dsn, lost_role.role_name)
    assert (await reconcile(platform, fix=True)).clean


async def test_an_interrupted_operation_whose_lock_is_held_is_not_touched(
    service: TenantService, platform: Platform, control_dsn: str, pg_admin_dsn: str
) -> None:
    """A running ledger entry with a live owner (the lock held) is in progress, not interrupted."""
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    await execute(
        control_dsn,
        "INSERT INTO tenant_operations (tenant_id, tenant_slug, kind, state) VALUES (%s, 'acme', 'suspend', 'running')",
        (tenant.id,),
    )
    before = await snapshot(control_dsn, pg_admin_dsn)
    async with service.locked(tenant.id):
        report = await reconcile(platform, fix=True)
    assert report.clean, report.findings
    assert await snapshot(control_dsn, pg_admin_dsn) == before

    # Its owner gone, the reconciler finishes it (the suspension is carried out).
    report = await reconcile(platform, fix=True)
    assert [(f.kind, f.subject, f.action) for f in report.findings] == [("interrupted_operation", "acme", "finished")]
    assert (await service.get("acme")).status is TenantStatus.SUSPENDED
    assert (await operations(control_dsn, tenant.id))[-1]["state"] == "succeeded"
    assert (await reconcile(platform, fix=True)).clean


async def test_names_that_only_look_like_tenant_names_are_ignored(
    service: TenantService, platform: Platform, pg_admin_dsn: str, almost_tenant_database: str
) -> None:
    await service.create(name="Acme", slug="acme", tier="starter")
    for fix in (False, True):
        report = await reconcile(platform, fix=fix)
        assert report.clean, report.findings
    assert await database_exists(pg_admin_dsn, almost_tenant_database)
