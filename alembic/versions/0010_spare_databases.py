"""Spare databases: tenant databases pre-created on each server, claimed by signups instead of a clone.

- ``spare_databases``: one row per spare, written *before* its database and role are created and deleted
  only after they are dropped, or in the transaction of the provisioning that claims it (which records
  the spare's name in its ledger parameters): so every spare is known to the registry or to the ledger at
  every moment, and a crash leaves a row (``creating``, ``dropping``) or a running operation behind that
  the reconciler acts on. ``ready`` spares are the only ones a signup may claim.
- ``spare_pool``: one random seed per control database. Spare names carry a tag derived from it and from
  the control database's OID (``cvspare_<tag>_<hex>``), so the reconciler can tell its own leaked spares
  (dropped) from another control plane's on a shared server (reported, never touched).

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
            schema_revision text NOT NULL,
            state text NOT NULL CHECK (state IN ('creating', 'ready', 'dropping')),
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        "CREATE INDEX spare_databases_ready ON spare_databases (server_id, schema_revision, created_at)"
        " WHERE state = 'ready'"
    )
    op.execute(
        """
        CREATE TABLE spare_pool (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            seed uuid NOT NULL DEFAULT gen_random_uuid()
        )
        """
    )
    op.execute("INSERT INTO spare_pool DEFAULT VALUES")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS spare_pool")
    op.execute("DROP TABLE IF EXISTS spare_databases")
