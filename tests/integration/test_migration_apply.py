"""Upgrader: tenant databases upgraded from rendered SQL, one transaction per tenant, no alembic per tenant.

The same databases and revision files as ``test_alembic_runner`` (tenant_schema/ frozen at 0001, plus
test revisions); the fleet-level behaviour (ledger, canary, CLI) is in ``test_migrations``.
"""

# The database fixtures come from test_alembic_runner; test parameters name them again.

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo, sql

from controlplane.migrations.apply import Upgrader
from controlplane.migrations.fleet_runner import Target
from controlplane.schemas.alembic_runner import TENANT_VERSION_TABLE, MigrationError, SchemaScripts
from tests.integration.schema_support import (
    REVISION_0002,
    REVISION_0003_BROKEN,
    REVISION_READS_DATA,
    SESSION_PROBE,
    copy_schema,
    user_tables,
)

GRANTS = [sql.SQL("CREATE TABLE grants_ran (id int)")]


def target(dsn: str) -> Target:
    return Target(tenant_id="t", slug="acme", dsn=dsn)


async def no_online(dsn: str, revision: str) -> str:
    raise AssertionError(f"{revision} should have run from rendered SQL")


def columns(dsn: str, table: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,))
        return {row[0] for row in rows}


async def test_upgrade_runs_rendered_sql_and_the_grants(
    tmp_path: Path, scripts: SchemaScripts, new_database: Callable[[], str]
) -> None:
    dsn = new_database()
    scripts.upgrade(dsn)
    extended = copy_schema(tmp_path, ("0002_add_card_grade.py", REVISION_0002))
    upgrader = Upgrader(extended, "0002", GRANTS, no_online)

    assert await upgrader.pending(target(dsn)) == "0002"
    assert await upgrader.upgrade(target(dsn)) == "0002"

    assert extended.current(dsn) == "0002"
    assert "grade" in columns(dsn, "cards")
    assert "grants_ran" in user_tables(dsn)  # in the same transaction
    # At the goal: one query, nothing else (the grants would fail: the table exists).
    assert await upgrader.upgrade(target(dsn)) == "0002"
    assert await upgrader.pending(target(dsn)) == "0002"
    assert extended.renders == 1


async def test_a_failing_revision_leaves_the_tenant_untouched(
    tmp_path: Path, scripts: SchemaScripts, new_database: Callable[[], str]
) -> None:
    """One transaction per tenant: 0002 succeeded but is rolled back with the failing 0003."""
    dsn = new_database()
    scripts.upgrade(dsn)
    broken = copy_schema(tmp_path, ("0002_add_card_grade.py", REVISION_0002), ("0003_broken.py", REVISION_0003_BROKEN))
    upgrader = Upgrader(broken, "0003", GRANTS, no_online)

    with pytest.raises(MigrationError) as failure:
        await upgrader.upgrade(target(dsn))

    message = str(failure.value)
    assert "from 0001 to 0003 failed at 0003; left at 0001" in message and "division by zero" in message
    assert broken.current(dsn) == "0001"
    assert "grade" not in columns(dsn, "cards")
    assert not {"half_done", "grants_ran"} & user_tables(dsn)


async def test_rendered_upgrades_give_up_on_a_lock_held_elsewhere(
    tmp_path: Path, scripts: SchemaScripts, new_database: Callable[[], str]
) -> None:
    dsn = new_database()
    scripts.upgrade(dsn)
    extended = copy_schema(tmp_path, ("0002_add_card_grade.py", REVISION_0002), lock_timeout=0.2)
    upgrader = Upgrader(extended, "0002", GRANTS, no_online)

    with psycopg.connect(dsn) as blocker:
        blocker.execute("SELECT count(*) FROM cards")  # holds ACCESS SHARE until rollback
        with pytest.raises(MigrationError, match="lock timeout"):
            await upgrader.upgrade(target(dsn))
        blocker.rollback()

    assert extended.current(dsn) == "0001"
    assert await upgrader.upgrade(target(dsn)) == "0002"


async def test_sessions_are_named_and_keep_the_dsn_options(tmp_path: Path, new_database: Callable[[], str]) -> None:
    probe = REVISION_0002.replace("ALTER TABLE cards ADD COLUMN grade numeric(3, 1)", SESSION_PROBE).replace(
        "ALTER TABLE cards DROP COLUMN grade", "DROP TABLE session_probe"
    )
    extended = copy_schema(tmp_path, ("0002_probe.py", probe), lock_timeout=1.5)
    dsn = conninfo.make_conninfo(new_database(), options="-c statement_timeout=42s")
    extended.upgrade(dsn, "0001")

    assert await Upgrader(extended, "0002", [], no_online).upgrade(target(dsn)) == "0002"

    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT app, lock, stmt FROM session_probe").fetchone() == (
            "cardvault-migrate",
            "1500ms",
            "42s",
        )


async def test_online_stretch_then_rendered_stretch(
    tmp_path: Path, scripts: SchemaScripts, new_database: Callable[[], str]
) -> None:
    """0002 cannot be rendered (reads data) and runs online; 0003 is rendered, after checking where 0002 left."""
    late = (
        REVISION_0002.replace('"0002"', '"0003"').replace('"0001"', '"0002"').replace("Revises: 0001", "Revises: 0002")
    )
    extended = copy_schema(tmp_path, ("0002_reads.py", REVISION_READS_DATA), ("0003_grade.py", late))
    online_calls: list[str] = []

    async def online(dsn: str, revision: str) -> str:
        online_calls.append(revision)
        return extended.upgrade(dsn, revision)

    dsn = new_database()
    scripts.upgrade(dsn)
    assert await Upgrader(extended, "0003", GRANTS, online).upgrade(target(dsn)) == "0003"
    assert online_calls == ["0002"]
    assert extended.current(dsn) == "0003" and "card_count" in user_tables(dsn) and "grade" in columns(dsn, "cards")

    # Another run moved the database while the online stretch ran: the rendered stretch refuses.
    async def meddling(dsn: str, revision: str) -> str:
        reached = extended.upgrade(dsn, revision)
        with psycopg.connect(dsn) as conn:
            conn.execute(sql.SQL("UPDATE {} SET version_num = '0003'").format(sql.Identifier(TENANT_VERSION_TABLE)))
        return reached

    other = new_database()
    scripts.upgrade(other)
    with pytest.raises(MigrationError, match="tenant_schema_version moved to 0003 while upgrading from 0002"):
        await Upgrader(extended, "0003", GRANTS, meddling).upgrade(target(other))
    assert "grade" not in columns(other, "cards")
