"""Helpers of the schema tests (``test_alembic_runner``, ``test_migration_apply``): revision files to add
to a copy of tenant_schema/ frozen at its first revision, and what a database's schema looks like."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg

from controlplane.schemas.alembic_runner import TENANT_VERSION_TABLE, SchemaScripts
from controlplane.settings import ProvisioningSettings

REVISION_0002 = '''"""Add cards.grade.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE cards ADD COLUMN grade numeric(3, 1)")


def downgrade() -> None:
    op.execute("ALTER TABLE cards DROP COLUMN grade")
'''

SESSION_PROBE = (
    "CREATE TABLE session_probe AS SELECT current_setting('application_name') AS app,"
    " current_setting('lock_timeout') AS lock, current_setting('statement_timeout') AS stmt"
)

REVISION_0003_BROKEN = '''"""Creates a table, then fails: the whole revision must roll back.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE half_done (id int)")
    op.execute("SELECT 1 / 0")


def downgrade() -> None:
    op.execute("DROP TABLE half_done")
'''


def base_schema(target: Path) -> Path:
    """tenant_schema/ frozen at its first revision, so these tests do not move with the real schema."""
    source = ProvisioningSettings().tenant_schema_dir
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "[0-9][0-9][0-9][0-9]_*.py"))
    first = sorted((source / "versions").glob("0001_*.py"))
    assert len(first) == 1
    shutil.copy(first[0], target / "versions" / first[0].name)
    return target


def user_tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {row[0] for row in rows}


def schema_fingerprint(dsn: str) -> list[tuple[object, ...]]:
    """Every relation with its oid: changes if anything is dropped and re-created."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c.oid::bigint, c.relname, c.relkind FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1"
        ).fetchall()
    return [tuple(row) for row in rows]


def copy_schema(tmp_path: Path, *revisions: tuple[str, str], lock_timeout: float = 5.0) -> SchemaScripts:
    """tenant_schema/ copied to ``tmp_path`` with extra revision files (name, source)."""
    target = base_schema(tmp_path / "tenant_schema")
    for name, source in revisions:
        (target / "versions" / name).write_text(source)
    return SchemaScripts(target, TENANT_VERSION_TABLE, lock_timeout=lock_timeout)


REVISION_READS_DATA = '''"""Reads data through the connection: cannot be rendered to SQL.

Revision ID: 0002
Revises: 0001
"""

from alembic import op
from sqlalchemy import text

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    count = op.get_bind().execute(text("SELECT count(*) FROM cards")).scalar()
    op.execute(f"CREATE TABLE card_count AS SELECT {int(count or 0)} AS n")


def downgrade() -> None:
    op.execute("DROP TABLE card_count")
'''
