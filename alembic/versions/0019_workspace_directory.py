"""The workspace finder's directory of emails to workspaces (issue 14).

- ``workspace_directory``: one row per (email, workspace) where the workspace has an enabled user with
  that email. ``email_key`` is HMAC-SHA256 of the lower-cased email under a key derived from
  ``CARDVAULT_SECRET_KEY``: the control database never holds the tenants' users' addresses in clear, and
  the finder looks an address up without visiting any tenant database.
- ``workspace_directory_sync``: when each workspace's entries were last rebuilt from its ``users`` table
  (the periodic sync visits the least recently synced first, a bounded batch per run).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE workspace_directory (
            email_key bytea NOT NULL CHECK (length(email_key) = 32),
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            PRIMARY KEY (email_key, tenant_id)
        )
        """
    )
    # A workspace's rebuild (and the cascade when a tenant row goes) finds its rows by tenant.
    op.execute("CREATE INDEX workspace_directory_tenant ON workspace_directory (tenant_id)")
    op.execute(
        """
        CREATE TABLE workspace_directory_sync (
            tenant_id uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
            synced_at timestamptz NOT NULL
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS workspace_directory_sync")
    op.execute("DROP TABLE IF EXISTS workspace_directory")
