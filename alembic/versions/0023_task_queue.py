"""The distributed task queue: procrastinate's tables, in a schema of their own (``procrastinate``).

The schema is procrastinate's packaged ``schema.sql`` for the installed (pinned) version, applied with the
search path pointed at the dedicated schema, so its tables, types and functions stay out of ``public`` and a
downgrade is one ``DROP SCHEMA``. The task queue's connections set the same search path
(``controlplane.tasks.queue``: procrastinate's queries name its tables unqualified); its functions carry it
themselves. A later procrastinate upgrade that changes its schema ships its own
migration files: apply them in a new revision the same way.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07
"""

from importlib import resources

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

SCHEMA = "procrastinate"


def upgrade() -> None:
    schema_sql = resources.files("procrastinate.sql").joinpath("schema.sql").read_text()
    op.execute(f"CREATE SCHEMA {SCHEMA}")
    op.execute(f"SET LOCAL search_path TO {SCHEMA}")
    # On the driver's connection (same transaction): its ``%`` are text, not parameter placeholders.
    driver = op.get_bind().connection.driver_connection
    driver.execute(schema_sql)
    op.execute("SET LOCAL search_path TO DEFAULT")
    # Its functions (and the triggers calling them) name its tables unqualified: pin their search path, so
    # that they also work from a session without the schema on its path (an operator's, a test's).
    driver.execute(
        """
        DO $$
        DECLARE fn regprocedure;
        BEGIN
            FOR fn IN SELECT p.oid::regprocedure FROM pg_proc p
                       WHERE p.pronamespace = 'procrastinate'::regnamespace LOOP
                EXECUTE format('ALTER FUNCTION %s SET search_path = procrastinate', fn);
            END LOOP;
        END $$
        """
    )


def downgrade() -> None:
    op.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
