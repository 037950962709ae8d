"""Keeping the spare pool (``SparePool.refill``) and the reconciler's view of spares, on a real PostgreSQL.

Refill tops every active server up to the setting with spares made exactly like a provisioned tenant
(ACL, role, group), recycles the ones left behind when the schema head moves, and keeps none on a draining
server. The reconciler never reports spares as orphans; it drops what a dead refill left half made, a spare
broken by hand, and a leaked ``cvspare_*`` of its own, and leaves another control plane's alone.
``cardvault spares refill | list`` do the same from the command line.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo, sql
from psycopg.rows import dict_row

from controlplane.fleet.models import ServerStatus
from controlplane.provisioning import catalog
from controlplane.settings import ProvisioningSettings, Settings
from tests.integration.admin_support import HEAD
from tests.integration.cli_support import cli_env, ok, run_cli
from tests.integration.spare_support import (
    drop_by_hand,
    make_spare_by_hand,
    objects_of,
    own_tag,
    ready_spares,
    spare_objects,
    spare_rows,
    spare_service,
)
from tests.integration.tenant_support import execute, fetch, finding_kinds, reconcile

NEXT = "9101"
REVISION_NEXT = f'''"""A column spares must have once the head moves.

Revision ID: {NEXT}
Revises: {HEAD}
"""

from alembic import op

revision = "{NEXT}"
down_revision = "{HEAD}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE cards ADD COLUMN spare_probe text")


def downgrade() -> None:
    op.execute("ALTER TABLE cards DROP COLUMN spare_probe")
'''


@pytest.fixture
def private_template(pg_admin_dsn: str) -> Iterator[str]:
    """A template for this test only (the session's shared one is never upgraded); dropped at teardown."""
    name = f"cvtest_spare_tpl_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def schema_next(tmp_path: Path) -> Path:
    copy = tmp_path / "tenant_schema"
    shutil.copytree(ProvisioningSettings().tenant_schema_dir, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "versions" / f"{NEXT}_spare_probe.py").write_text(REVISION_NEXT)
    return copy


async def access_problems(admin_dsn: str, name: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True, row_factory=dict_row) as conn:
        return await catalog.tenant_access_problems(conn, name, name)


async def test_refill_tops_up_with_spares_made_like_tenants(
    settings: Settings, control_dsn: str, pg_admin_dsn: str
) -> None:
    async with spare_service(settings, 3) as (_, service):
        (first,) = await service.spares.refill()
        assert (first.created, first.ready, first.target) == (3, 3, 3), first
        names = await ready_spares(control_dsn)
        assert await spare_objects(pg_admin_dsn) == objects_of(names)
        for name in names:
            # The same check a claim runs: plain login role in the tenant group, CONNECT for it alone.
            assert await access_problems(pg_admin_dsn, name) == [], name
            assert name.startswith(f"cvspare_{await own_tag(control_dsn)}_")
            assert not catalog.TENANT_NAME_PATTERN.fullmatch(name)

        (again,) = await service.spares.refill()
        assert (again.created, again.dropped, again.ready) == (0, 0, 3), again  # already full: nothing to do
        assert await ready_spares(control_dsn) == names


async def test_refill_recycles_spares_when_the_head_moves(
    settings: Settings, control_dsn: str, pg_admin_dsn: str, private_template: str, schema_next: Path
) -> None:
    async with spare_service(settings, 2, template_database=private_template) as (_, service):
        await service.spares.refill()
        old = await ready_spares(control_dsn)
        assert {r["schema_revision"] for r in await spare_rows(control_dsn)} == {HEAD}

    moved = {"template_database": private_template, "tenant_schema_dir": schema_next}
    async with spare_service(settings, 2, **moved) as (platform, service):
        assert platform.tenant_scripts.head() == NEXT
        (outcome,) = await service.spares.refill()
        assert (outcome.dropped, outcome.created, outcome.ready) == (2, 2, 2), outcome
        rows = await spare_rows(control_dsn)
        assert {r["schema_revision"] for r in rows} == {NEXT}
        new = [r["database_name"] for r in rows]
        assert not set(new) & set(old)
        assert await spare_objects(pg_admin_dsn) == objects_of(new)  # the old ones are gone, roles too
        cols = await fetch(
            conninfo.make_conninfo(pg_admin_dsn, dbname=new[0]),
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'cards' AND column_name = 'spare_probe'",
        )
        assert cols, "a recycled spare is cloned from the upgraded template"

        tenant = await service.create(name="Next", slug="next", tier="starter")
        assert tenant.schema_revision == NEXT
        assert (await ready_spares(control_dsn)) != new  # one of the new spares was claimed


async def test_a_draining_server_keeps_no_spares(settings: Settings, control_dsn: str, pg_admin_dsn: str) -> None:
    async with spare_service(settings, 2) as (platform, service):
        await service.spares.refill()
        async with platform.control.connection() as conn:
            await platform.fleet.set_status(conn, "default", ServerStatus.DRAINING)
        (outcome,) = await service.spares.refill()
        assert (outcome.target, outcome.dropped, outcome.ready) == (0, 2, 0), outcome
        assert await spare_rows(control_dsn) == []
        assert await spare_objects(pg_admin_dsn) == set()


async def test_reconciler_never_reports_spares_and_drops_its_own_leaks_only(
    settings: Settings, control_dsn: str, pg_admin_dsn: str
) -> None:
    async with spare_service(settings, 2) as (platform, service):
        await service.spares.refill()
        kept = await ready_spares(control_dsn)
        assert (await reconcile(platform, fix=False)).clean  # spares are neither orphans nor open databases

        tag = await own_tag(control_dsn)
        leaked = f"cvspare_{tag}_{uuid.uuid4().hex}"
        foreign = f"cvspare_{'0' * 8 if tag != '0' * 8 else '1' * 8}_{uuid.uuid4().hex}"
        await make_spare_by_hand(pg_admin_dsn, leaked)
        await make_spare_by_hand(pg_admin_dsn, foreign)
        # A spare whose row was lost (deleted by hand) is a leak too.
        forgotten = kept[0]
        await execute(control_dsn, "DELETE FROM spare_databases WHERE database_name = %s", (forgotten,))
        try:
            report = await reconcile(platform, fix=False)
            assert finding_kinds(report) == sorted(
                [("orphan_spare", leaked), ("orphan_spare", foreign), ("orphan_spare", forgotten)]
            )
            assert "foreign" in next(f.detail for f in report.findings if f.subject == foreign)

            report = await reconcile(platform, fix=True)
            actions = {f.subject: f.action for f in report.findings}
            assert actions == {leaked: "dropped", forgotten: "dropped", foreign: "reported"}, report.findings
            assert await spare_objects(pg_admin_dsn) == objects_of([kept[1], foreign])
        finally:
            await drop_by_hand(pg_admin_dsn, foreign)
        assert (await reconcile(platform, fix=True)).clean


async def test_reconciler_drops_what_a_dead_refill_left_and_broken_spares(
    settings: Settings, control_dsn: str, pg_admin_dsn: str, tenant_template_name: str
) -> None:
    async with spare_service(settings, 2) as (platform, service):
        await service.spares.refill()
        broken, intact = await ready_spares(control_dsn)
        # A refill that died after its clone: the row says `creating`, the database exists (open to
        # PUBLIC: its role was never made); and someone granted CONNECT on a ready spare to PUBLIC.
        half = f"cvspare_{await own_tag(control_dsn)}_{uuid.uuid4().hex}"
        (row,) = [r for r in await spare_rows(control_dsn) if r["database_name"] == intact]
        await execute(
            control_dsn,
            "INSERT INTO spare_databases (database_name, server_id, role_name, role_password_encrypted,"
            " schema_revision, state) VALUES (%s, %s, %s, 'x', %s, 'creating')",
            (half, row["server_id"], half, HEAD),
        )
        await execute(
            pg_admin_dsn,
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(half), sql.Identifier(tenant_template_name)
            ),
        )
        await execute(pg_admin_dsn, sql.SQL("GRANT CONNECT ON DATABASE {} TO PUBLIC").format(sql.Identifier(broken)))

        report = await reconcile(platform, fix=False)
        assert finding_kinds(report) == sorted([("interrupted_spare", half), ("broken_spare", broken)])
        assert "PUBLIC may connect" in next(f.detail for f in report.findings if f.subject == broken)

        report = await reconcile(platform, fix=True)
        assert {f.action for f in report.findings} == {"dropped"}, report.findings
        assert await spare_rows(control_dsn) == [row]
        assert await spare_objects(pg_admin_dsn) == objects_of([intact])
        assert (await reconcile(platform, fix=True)).clean


async def test_cli_refills_and_lists_spares(
    control_dsn: str, tenant_template_name: str, tmp_path: Path, pg_admin_dsn: str
) -> None:
    env = cli_env(control_dsn, tenant_template_name, tmp_path, CARDVAULT_SPARE_DATABASES="2")
    refilled = ok(await asyncio.to_thread(run_cli, env, "spares", "refill", "--json")).json()
    assert [(o["server"], o["created"], o["ready"], o["note"]) for o in refilled] == [("default", 2, 2, "")]

    listed = ok(await asyncio.to_thread(run_cli, env, "spares", "list", "--json"))
    rows = listed.json()
    assert sorted(r["database_name"] for r in rows) == sorted(await ready_spares(control_dsn))
    assert {(r["server"], r["state"], r["schema_revision"]) for r in rows} == {("default", "ready", HEAD)}
    assert "password" not in listed.stdout
    assert await spare_objects(pg_admin_dsn) == objects_of([r["database_name"] for r in rows])
