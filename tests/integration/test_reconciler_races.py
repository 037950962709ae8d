"""The reconciler against what runs beside it: a GRANT committed on a database while the cycle revokes
PUBLIC's CONNECT there fails that database only (retried next cycle), and the objects of a running move
(the target's copy before the switch) are ``move_in_progress``, never orphans."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from controlplane.platform import Platform
from controlplane.provisioning import repository as ledger
from controlplane.provisioning.models import OperationKind, OperationState
from controlplane.provisioning.service import TenantService
from tests.conftest import eventually
from tests.integration.move_support import StartCluster
from tests.integration.tenant_support import reconcile


def make_open_database(admin_dsn: str) -> Iterator[str]:
    """A database with PostgreSQL's default privileges: PUBLIC may connect."""
    name = f"cvtest_open_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def contended(pg_admin_dsn: str) -> Iterator[str]:
    yield from make_open_database(pg_admin_dsn)


@pytest.fixture
def bystander(pg_admin_dsn: str) -> Iterator[str]:
    yield from make_open_database(pg_admin_dsn)


@pytest.fixture
def grantee(pg_admin_dsn: str) -> Iterator[str]:
    name = f"cvtest_grantee_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def revoke_waiting(admin_dsn: str, database: str) -> bool:
    """A session waits on a lock in a REVOKE on ``database`` (the reconciler's, behind our GRANT)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
            (f'%REVOKE CONNECT ON DATABASE "{database}"%',),
        ).fetchone()
    return row is not None


async def test_a_grant_committed_during_the_lock_down_fails_that_database_only(
    platform: Platform, pg_admin_dsn: str, contended: str, bystander: str, grantee: str
) -> None:
    # Another session updates the database's pg_database row (a GRANT, as provisioning makes) and commits
    # while the reconciler's REVOKE waits for it: PostgreSQL fails the REVOKE "tuple concurrently updated".
    blocker = await psycopg.AsyncConnection.connect(pg_admin_dsn)
    try:
        await blocker.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(contended), sql.Identifier(grantee))
        )
        cycle = asyncio.create_task(reconcile(platform, fix=True))
        await eventually(lambda: revoke_waiting(pg_admin_dsn, contended), "the reconciler's REVOKE waits")
        await blocker.commit()
        report = await asyncio.wait_for(cycle, 60)
    finally:
        await blocker.close()

    actions = {f.subject: f.action for f in report.findings if f.kind == "public_connect"}
    assert actions[contended].startswith("failed: ") and "concurrently" in actions[contended], actions
    assert actions[bystander] == "revoked", actions
    # The next cycle closes it.
    again = await reconcile(platform, fix=True)
    assert {f.subject: f.action for f in again.findings if f.kind == "public_connect"}.get(contended) == "revoked"
    assert not any(
        f.kind == "public_connect" and f.subject == contended for f in (await reconcile(platform, fix=False)).findings
    )


async def test_a_running_moves_copy_on_the_target_is_no_orphan(
    platform: Platform, service: TenantService, extra_cluster: StartCluster
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    second = extra_cluster()
    async with platform.control.connection() as conn:
        await platform.fleet.register(conn, "second", second.dsn)
    # What a move has made on the target just before its switch: the tenant's database and role, renamed
    # from the copy; the registry still names the source.
    with psycopg.connect(second.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(tenant.database_name)))
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(tenant.database_name)))
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(tenant.role_name)))

    async with service.locked(tenant.id) as conn:  # the move holds the tenant while it runs
        op_id = await ledger.start(conn, tenant.id, tenant.slug, OperationKind.MOVE, {})
        for fix in (False, True):
            report = await reconcile(platform, fix=fix)
            found = [(f.kind, f.server, f.subject, f.action) for f in report.findings]
            assert found == [("move_in_progress", "second", tenant.database_name, "reported")], found
        # Still there: the reconciler left them to the move.
        with psycopg.connect(second.dsn, autocommit=True) as admin:
            assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (tenant.database_name,)).fetchone()
        await ledger.finish(conn, op_id, OperationState.ROLLED_BACK, steps=[], error="test")

    # Once the move is over, what it left is an orphan again (of a registered tenant: reported, kept).
    report = await reconcile(platform, fix=False)
    assert [(f.kind, f.subject) for f in report.findings] == [("orphan", tenant.database_name)]
