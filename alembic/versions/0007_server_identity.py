"""Servers are identified by what they are, and ``db_servers.status`` holds only what the code knows.

- ``system_identifier`` (``pg_control_system()``) and ``port`` (the server's own ``port`` setting) name
  a PostgreSQL server whatever host name or address reaches it; the unique constraint refuses the
  same server registered twice under two names. Both are NULL for servers registered before this
  revision until the reconciler (or a DSN update) records them.
- ``status`` was allowed to be ``disabled``, which the code never supported (the collector and the CLI
  failed on such a row). Existing ``disabled`` rows become ``draining`` (they keep their tenants and
  receive no new ones) and the value is refused from now on.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE db_servers
            ADD COLUMN system_identifier bigint,
            ADD COLUMN port integer CHECK (port BETWEEN 1 AND 65535),
            ADD CONSTRAINT db_servers_identity_complete CHECK ((system_identifier IS NULL) = (port IS NULL)),
            ADD CONSTRAINT db_servers_identity_key UNIQUE (system_identifier, port)
        """
    )
    op.execute("UPDATE db_servers SET status = 'draining', updated_at = now() WHERE status = 'disabled'")
    op.execute("ALTER TABLE db_servers DROP CONSTRAINT db_servers_status_check")
    op.execute("ALTER TABLE db_servers ADD CONSTRAINT db_servers_status_check CHECK (status IN ('active', 'draining'))")


def downgrade() -> None:
    op.execute("ALTER TABLE db_servers DROP CONSTRAINT db_servers_status_check")
    op.execute(
        "ALTER TABLE db_servers ADD CONSTRAINT db_servers_status_check"
        " CHECK (status IN ('active', 'draining', 'disabled'))"
    )
    op.execute(
        """
        ALTER TABLE db_servers
            DROP CONSTRAINT db_servers_identity_key,
            DROP CONSTRAINT db_servers_identity_complete,
            DROP COLUMN port,
            DROP COLUMN system_identifier
        """
    )
