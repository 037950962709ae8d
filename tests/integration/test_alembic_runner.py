"""SchemaScripts against a real PostgreSQL: upgrade, current, pending, downgrade, new revisions."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo, sql

from controlplane.schemas.alembic_runner import (
    REGISTRY_VERSION_TABLE,
    TENANT_VERSION_TABLE,
    MigrationError,
    SchemaScripts,
    registry_scripts,
)
from controlplane.settings import ProvisioningSettings
from tests.integration.schema_support import (
    REVISION_0002,
    REVISION_0003_BROKEN,
    REVISION_READS_DATA,
    SESSION_PROBE,
    copy_schema,
    schema_fingerprint,
    user_tables,
)


def test_scripts_know_their_revisions(scripts: SchemaScripts) -> None:
    assert scripts.head() == "0001"
    assert scripts.revisions() == ["0001"]
    assert scripts.version_table == TENANT_VERSION_TABLE


def test_fresh_database_upgrades_to_head(scripts: SchemaScripts, new_database: Callable[[], str]) -> None:
    dsn = new_database()
    assert scripts.current(dsn) is None
    assert scripts.pending(dsn) == ["0001"]

    assert scripts.upgrade(dsn) == "0001"

    assert scripts.current(dsn) == "0001"
    assert scripts.pending(dsn) == []
    assert user_tables(dsn) == {
        "users",
        "manufacturers",
        "teams",
        "players",
        "cards",
        "files",
        "audit_log",
        TENANT_VERSION_TABLE,
    }


def test_upgrade_at_head_is_a_no_op(scripts: SchemaScripts, new_database: Callable[[], str]) -> None:
    dsn = new_database()
    scripts.upgrade(dsn)
    before = schema_fingerprint(dsn)

    assert scripts.upgrade(dsn) == "0001"
    assert scripts.upgrade(dsn, "0001") == "0001"
    assert scripts.upgrade_from(dsn) == ("0001", "0001")

    assert schema_fingerprint(dsn) == before
    assert scripts.current(dsn) == "0001"


def test_downgrade_to_base_then_upgrade(scripts: SchemaScripts, new_database: Callable[[], str]) -> None:
    dsn = new_database()
    scripts.upgrade(dsn)

    assert scripts.downgrade(dsn, "base") is None

    assert scripts.current(dsn) is None
    assert scripts.pending(dsn) == ["0001"]
    # Only alembic's (now empty) version table is left; the trigger function went too.
    assert user_tables(dsn) == {TENANT_VERSION_TABLE}
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regproc('cardvault_touch_updated_at')").fetchone() == (None,)

    assert scripts.upgrade(dsn) == "0001"
    assert "cards" in user_tables(dsn)


def test_new_revision_is_pending_then_applied(
    tmp_path: Path, scripts: SchemaScripts, new_database: Callable[[], str]
) -> None:
    dsn = new_database()
    scripts.upgrade(dsn)
    extended = copy_schema(tmp_path, ("0002_add_card_grade.py", REVISION_0002))

    assert extended.head() == "0002"
    assert extended.revisions() == ["0001", "0002"]
    assert extended.pending(dsn) == ["0002"]

    assert extended.upgrade_from(dsn) == ("0001", "0002")

    assert extended.current(dsn) == "0002"
    assert extended.pending(dsn) == []
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO cards (cardnumber, grade) VALUES ('1', 9.5)")

    # Back one step, then a fresh database goes through both revisions.
    assert extended.downgrade(dsn, "0001") == "0001"
    assert extended.current(dsn) == "0001"
    fresh = new_database()
    assert extended.pending(fresh) == ["0001", "0002"]
    assert extended.upgrade(fresh) == "0002"


def test_failing_revision_keeps_the_previous_ones(tmp_path: Path, new_database: Callable[[], str]) -> None:
    dsn = new_database()
    broken = copy_schema(
        tmp_path,
        ("0002_add_card_grade.py", REVISION_0002),
        ("0003_broken.py", REVISION_0003_BROKEN),
    )

    with pytest.raises(MigrationError) as failure:
        broken.upgrade(dsn)

    message = str(failure.value)
    assert "failed at 0003" in message
    assert "left at 0002" in message
    assert "division by zero" in message
    assert broken.current(dsn) == "0002"
    assert broken.pending(dsn) == ["0003"]
    assert "half_done" not in user_tables(dsn)  # revision 0003 rolled back as a whole


def test_migrations_give_up_on_a_lock_held_elsewhere(
    tmp_path: Path, scripts: SchemaScripts, new_database: Callable[[], str]
) -> None:
    """ALTER TABLE queued behind a long transaction would block the tenant's traffic: fail fast instead."""
    dsn = new_database()
    scripts.upgrade(dsn)
    extended = copy_schema(tmp_path, ("0002_add_card_grade.py", REVISION_0002), lock_timeout=0.2)

    with psycopg.connect(dsn) as blocker:
        blocker.execute("SELECT count(*) FROM cards")  # holds ACCESS SHARE until rollback
        with pytest.raises(MigrationError, match="lock timeout"):
            extended.upgrade(dsn)
        blocker.rollback()

    assert extended.current(dsn) == "0001"
    assert extended.upgrade(dsn) == "0002"


def test_migration_sessions_are_named_and_keep_the_dsn_options(tmp_path: Path, new_database: Callable[[], str]) -> None:
    probe = REVISION_0002.replace("ALTER TABLE cards ADD COLUMN grade numeric(3, 1)", SESSION_PROBE).replace(
        "ALTER TABLE cards DROP COLUMN grade", "DROP TABLE session_probe"
    )
    scripts = copy_schema(tmp_path, ("0002_probe.py", probe), lock_timeout=1.5)
    dsn = conninfo.make_conninfo(new_database(), options="-c statement_timeout=42s")

    assert scripts.upgrade(dsn) == "0002"

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT app, lock, stmt FROM session_probe").fetchone()
    assert row == ("cardvault-migrate", "1500ms", "42s")


def test_upgrade_to_unknown_target_is_refused(scripts: SchemaScripts, new_database: Callable[[], str]) -> None:
    dsn = new_database()
    with pytest.raises(MigrationError, match="unknown revision"):
        scripts.upgrade(dsn, "9999")
    assert scripts.current(dsn) is None


def test_database_at_an_unknown_revision_is_reported(
    tmp_path: Path, scripts: SchemaScripts, new_database: Callable[[], str]
) -> None:
    """A database migrated by newer code than ours: refuse, do not guess."""
    dsn = new_database()
    copy_schema(tmp_path, ("0002_add_card_grade.py", REVISION_0002)).upgrade(dsn)

    with pytest.raises(MigrationError, match="0002"):
        scripts.pending(dsn)
    with pytest.raises(MigrationError, match="0002"):
        scripts.upgrade(dsn)
    assert scripts.current(dsn) == "0002"


def test_connection_errors_do_not_leak_passwords(admin_dsn: str, scripts: SchemaScripts) -> None:
    missing = f"cvtest_missing_{uuid.uuid4().hex[:8]}"
    dsn = conninfo.make_conninfo(admin_dsn, dbname=missing, password="s3cret-Pa55")

    with pytest.raises(MigrationError) as failure:
        scripts.upgrade(dsn)

    assert missing in str(failure.value)
    assert "s3cret-Pa55" not in str(failure.value)
    assert "s3cret-Pa55" not in repr(failure.value.__cause__)


def test_parallel_upgrades_from_threads(scripts: SchemaScripts, new_database: Callable[[], str]) -> None:
    """alembic's op/context proxies are process-wide: concurrent runs must not cross their wires."""
    dsns = [new_database() for _ in range(8)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        reached = list(pool.map(scripts.upgrade, dsns))

    assert reached == ["0001"] * 8
    for dsn in dsns:
        assert scripts.current(dsn) == "0001"
        assert "cards" in user_tables(dsn)


def test_registry_environment_uses_alembic_version(tmp_path: Path, new_database: Callable[[], str]) -> None:
    """alembic/ (control database) runs the same way, recording into alembic_version."""
    assert registry_scripts(ProvisioningSettings()).version_table == REGISTRY_VERSION_TABLE
    target = tmp_path / "alembic"
    # env.py as it is; the real revisions are replaced by one probe revision.
    shutil.copytree(
        ProvisioningSettings().registry_schema_dir,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "versions"),
    )
    (target / "versions").mkdir()
    (target / "versions" / "0001_probe.py").write_text(
        'revision = "r1"\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n\n'
        "from alembic import op\n\n\n"
        "def upgrade() -> None:\n    op.execute('CREATE TABLE probe (id int)')\n\n\n"
        "def downgrade() -> None:\n    op.execute('DROP TABLE probe')\n"
    )
    scripts = SchemaScripts(target, REGISTRY_VERSION_TABLE)
    dsn = new_database()

    assert scripts.upgrade(dsn) == "r1"

    assert user_tables(dsn) == {"probe", REGISTRY_VERSION_TABLE}
    assert scripts.current(dsn) == "r1"
    assert scripts.downgrade(dsn) is None
    assert user_tables(dsn) == {REGISTRY_VERSION_TABLE}


# -- rendering revisions to SQL (offline mode), as the fleet applies them ------------------------------

REVISION_MARKED_ONLINE = REVISION_0002.replace(
    "depends_on = None\n",
    "depends_on = None\n\n#: Run through alembic online, never from rendered SQL.\noffline_safe = False\n",
)

REVISION_AUTOCOMMIT = '''"""Builds an index concurrently: leaves the transaction, so it cannot run in the fleet's one.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("CREATE INDEX CONCURRENTLY cards_notes_idx ON cards (notes)")


def downgrade() -> None:
    op.execute("DROP INDEX cards_notes_idx")
'''


def schema_catalog(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    """Everything a migration defines, by definition text (not oid): equal schemas compare equal."""
    queries = {
        "columns": """
            SELECT table_name, column_name, data_type, column_default, is_nullable, is_identity
            FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2""",
        "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
        "constraints": """
            SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
            WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
        "functions": """
            SELECT proname, pg_get_functiondef(oid) FROM pg_proc
            WHERE pronamespace = 'public'::regnamespace AND prokind = 'f'
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = pg_proc.oid AND d.deptype = 'e')
            ORDER BY 1""",
        "triggers": "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1",
        "extensions": "SELECT extname FROM pg_extension ORDER BY 1",
        "rows": "SELECT 'tenant_settings', count(*) FROM tenant_settings",
    }
    with psycopg.connect(dsn) as conn:
        found = {name: [tuple(r) for r in conn.execute(query.encode()).fetchall()] for name, query in queries.items()}
        version = conn.execute(sql.SQL("SELECT version_num FROM {}").format(sql.Identifier(TENANT_VERSION_TABLE)))
        found["version"] = [tuple(r) for r in version.fetchall()]
    return found


def apply_rendered(dsn: str, scripts: SchemaScripts, start: str | None) -> None:
    """What the fleet does with rendered steps: every step's SQL in one transaction."""
    steps = scripts.render_steps(start)
    with psycopg.connect(dsn) as conn, conn.transaction():
        for step in steps:
            assert step.sql is not None, step.reason
            conn.execute(step.sql.encode())


def test_rendered_sql_builds_the_same_schema_as_alembic_online(new_database: Callable[[], str]) -> None:
    """The real tenant schema, base to head: rendered SQL and alembic online end up identical."""
    real = SchemaScripts(ProvisioningSettings().tenant_schema_dir, TENANT_VERSION_TABLE)
    online, rendered = new_database(), new_database()

    real.upgrade(online)
    apply_rendered(rendered, real, None)

    assert schema_catalog(rendered) == schema_catalog(online)
    assert schema_catalog(rendered)["version"] == [(real.head(),)]
    assert ("pg_trgm",) in schema_catalog(rendered)["extensions"]
    # From a database part-way up (the first revision applied online), the rest renders as well.
    partial = new_database()
    real.upgrade(partial, real.revisions()[0])
    apply_rendered(partial, real, real.revisions()[0])
    assert schema_catalog(partial) == schema_catalog(online)


def test_each_step_is_rendered_once(tmp_path: Path) -> None:
    extended = copy_schema(tmp_path, ("0002_add_card_grade.py", REVISION_0002))

    full = extended.render_steps(None)
    assert [(s.start, s.revision) for s in full] == [(None, "0001"), ("0001", "0002")]
    assert extended.renders == 2
    [last] = extended.render_steps("0001")
    assert last is full[1] and extended.renders == 2  # cached, not rendered again
    assert last.sql is not None
    assert "ALTER TABLE cards ADD COLUMN grade numeric(3, 1);" in last.sql
    assert "UPDATE tenant_schema_version SET version_num='0002'" in last.sql
    assert extended.render_steps("0002") == []


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (REVISION_READS_DATA, "cannot be rendered offline"),
        (REVISION_MARKED_ONLINE, "offline_safe = False"),
        (REVISION_AUTOCOMMIT, "leaves its transaction"),
    ],
    ids=["reads-data", "marked", "autocommit-block"],
)
def test_revisions_that_cannot_be_rendered_are_marked_online(
    tmp_path: Path, new_database: Callable[[], str], source: str, reason: str
) -> None:
    extended = copy_schema(tmp_path, ("0002_online.py", source))

    first, second = extended.render_steps(None)

    assert first.sql is not None
    assert second.sql is None and reason in second.reason
    # Online, through alembic, the same revision works.
    dsn = new_database()
    assert extended.upgrade(dsn) == "0002"
