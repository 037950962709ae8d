"""Fleet migrations with a revision alembic cannot render (it reads data): it runs online between rendered
ones; and a canary failure leaves the other tenants untouched."""

from __future__ import annotations

from pathlib import Path

import psycopg

from controlplane import db
from controlplane.migrations.service import TenantMigrations
from controlplane.platform import Platform
from controlplane.registry.models import Tenant
from tests.conftest import make_settings
from tests.integration.cli_support import cli_env, run_cli
from tests.integration.migrations.migration_support import (
    BASE,
    MARKER,
    NEXT,
    execute_in,
    registry_rows,
    revision_of,
    tenant_role_dsn,
)

# -- a revision that cannot be rendered runs online, between rendered ones ------------------------------

CENSUS = "9002"
LAST = "9003"

REVISION_CENSUS = '''"""Reads data in Python: alembic must run it online.

Revision ID: 9002
Revises: 9001
"""

from alembic import op
from sqlalchemy import text

revision = "9002"
down_revision = "9001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    count = op.get_bind().execute(text("SELECT count(*) FROM manufacturers")).scalar()
    op.execute("CREATE TABLE manufacturer_census (counted integer NOT NULL)")
    op.execute(f"INSERT INTO manufacturer_census VALUES ({int(count or 0)})")


def downgrade() -> None:
    op.execute("DROP TABLE manufacturer_census")
'''

REVISION_LAST = '''"""Who graded a card.

Revision ID: 9003
Revises: 9002
"""

from alembic import op

revision = "9003"
down_revision = "9002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE card_gradings ADD COLUMN graded_by text")


def downgrade() -> None:
    op.execute("ALTER TABLE card_gradings DROP COLUMN graded_by")
'''


async def test_online_revision_between_rendered_ones(
    tenants_v1: dict[str, Tenant],
    control_dsn: str,
    pg_admin_dsn: str,
    private_template: str,
    schema_v2: Path,
) -> None:
    (schema_v2 / "versions" / "9002_census.py").write_text(REVISION_CENSUS)
    (schema_v2 / "versions" / "9003_graded_by.py").write_text(REVISION_LAST)
    alpha = tenants_v1["alpha"].database_name
    execute_in(pg_admin_dsn, alpha, "INSERT INTO manufacturers (name) VALUES ('Topps'), ('Bowman')")
    settings = make_settings(control_dsn, private_template, tenant_schema_dir=schema_v2)

    async with Platform.open(settings, migrate=False) as platform:
        report = await TenantMigrations(platform).run(concurrency=2)

        assert report.head == LAST and report.failures == []
        assert sorted((o.target.slug, o.revision) for o in report.outcomes) == [
            ("alpha", LAST),
            ("bravo", LAST),
            ("charlie", LAST),
        ]
        # 9001 and 9003 rendered once each; 9002 reads data, so each tenant ran it through alembic.
        assert platform.tenant_scripts.renders == 2
        for slug, counted in (("alpha", 2), ("bravo", 0), ("charlie", 0)):
            database = tenants_v1[slug].database_name
            assert revision_of(pg_admin_dsn, database) == LAST
            with psycopg.connect(db.with_database(pg_admin_dsn, database)) as conn:
                assert conn.execute("SELECT counted FROM manufacturer_census").fetchall() == [(counted,)]
        assert registry_rows(control_dsn) == {slug: (LAST, None) for slug in tenants_v1}

        # Every new table is granted to the tenant, whichever path created it.
        as_tenant = await tenant_role_dsn(platform, tenants_v1["alpha"], pg_admin_dsn)
        with psycopg.connect(as_tenant, autocommit=True) as conn:
            assert conn.execute("SELECT counted FROM manufacturer_census").fetchall() == [(2,)]
            card = conn.execute("INSERT INTO cards (cardnumber) VALUES ('1') RETURNING id").fetchone()
            assert card is not None
            conn.execute("INSERT INTO card_gradings (card_id, grade, graded_by) VALUES (%s, 'A', 'me')", (card[0],))


def test_cli_canary_failure_leaves_the_rest_untouched(
    tenants_v1: dict[str, Tenant],
    control_dsn: str,
    pg_admin_dsn: str,
    private_template: str,
    schema_v2: Path,
    tmp_path: Path,
) -> None:
    """Tenants go in slug order (active first): alpha is the canary, and it fails."""
    env = cli_env(control_dsn, private_template, tmp_path / "data", CARDVAULT_TENANT_SCHEMA_DIR=str(schema_v2))
    alpha = tenants_v1["alpha"].database_name
    execute_in(pg_admin_dsn, alpha, "INSERT INTO manufacturers (name) VALUES (%s)", (MARKER,))

    run = run_cli(env, "migrate", "tenants", "--canary", "1", "--json")

    assert run.code == 1, run.stderr
    report = run.json()
    assert (report["tenants"], report["succeeded"], report["skipped"]) == (1, 0, 2)
    assert [f["slug"] for f in report["failed"]] == ["alpha"] and MARKER in report["failed"][0]["error"]
    assert "canary: finished 1/1: 0 ok, 1 failed" in run.stderr
    assert {revision_of(pg_admin_dsn, t.database_name) for t in tenants_v1.values()} == {BASE}
    rows = registry_rows(control_dsn)
    assert rows["bravo"] == rows["charlie"] == (BASE, None) and MARKER in rows["alpha"][1]

    # Fixed: the canary passes and the others follow.
    execute_in(pg_admin_dsn, alpha, "DELETE FROM manufacturers WHERE name = %s", (MARKER,))
    again = run_cli(env, "migrate", "tenants", "--canary", "1")
    assert again.code == 0, again.stderr
    assert again.stdout.strip() == f"head {NEXT}: 3 ok, 0 failed"
    assert "canary: finished 1/1: 1 ok, 0 failed" in again.stderr
    assert "migrate: finished 2/2: 2 ok, 0 failed" in again.stderr
    assert {revision_of(pg_admin_dsn, t.database_name) for t in tenants_v1.values()} == {NEXT}
