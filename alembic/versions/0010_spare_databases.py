"""Spare databases: tenant databases pre-created on each server, claimed by signups instead of a clone.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE spare_databases (
            database_name text PRIMARY KEY,
            server_id uuid NOT NULL REFERENCES db_servers (id),
            role_name text NOT NULL UNIQUE,
            role_password_encrypted text NOT NULL,
            schema_revision text,
            state text NOT NULL CHECK (state IN ('creating', 'ready')),
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX spare_databases_ready ON spare_databases (server_id, created_at) WHERE state = 'ready'")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS spare_databases")
