"""Refresh rotation with a grace window for platform sessions (as tenant_schema 0005 for tenant sessions).

``platform_sessions`` gets the same columns as each tenant's ``auth_sessions``: refresh secrets are
derived (``HMAC(refresh key, refresh_seed || generation)``, see ``controlplane.auth.sessions``) so the
server recognises every secret it issued for a session, and ``previous_hash`` / ``rotated_at`` let
the secret rotated away last get the same successor for a few seconds instead of revoking the session.
Existing sessions keep their random secret (``refresh_seed`` NULL) until their next refresh.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE platform_sessions
            ADD COLUMN refresh_seed  bytea,
            ADD COLUMN generation    integer NOT NULL DEFAULT 0,
            ADD COLUMN previous_hash bytea,
            ADD COLUMN rotated_at    timestamptz
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER TABLE platform_sessions
            DROP COLUMN rotated_at,
            DROP COLUMN previous_hash,
            DROP COLUMN generation,
            DROP COLUMN refresh_seed
        """
    )
