"""Refresh rotation with a grace window, and API keys that answer to their maker.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

- ``auth_sessions``: refresh secrets are derived (``HMAC(refresh key, refresh_seed || generation)``,
  see ``controlplane.auth.sessions``) so the server recognises every secret it issued for a session.
  ``previous_hash`` / ``rotated_at`` let the secret rotated away last get the same successor for a
  few seconds (two concurrent refreshes) instead of revoking the session. Existing sessions keep their
  random secret (``refresh_seed`` NULL) until their next refresh.
- ``api_keys``: a key made during an impersonation answers to the impersonating super-admin
  (``created_by_admin``) and to that admin's login session (``admin_session``); it dies with that
  session and never outlives the impersonation. Keys with no maker at all (made during an
  impersonation before this revision, or whose maker was deleted) had no cap on their rights: they
  are revoked here.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE auth_sessions
            ADD COLUMN refresh_seed  bytea,
            ADD COLUMN generation    integer NOT NULL DEFAULT 0,
            ADD COLUMN previous_hash bytea,
            ADD COLUMN rotated_at    timestamptz
        """
    )
    op.execute(
        """
        ALTER TABLE api_keys
            ADD COLUMN created_by_admin uuid,
            ADD COLUMN admin_session    uuid
        """
    )
    op.execute(
        "UPDATE api_keys SET revoked_at = now()"
        " WHERE created_by IS NULL AND created_by_admin IS NULL AND revoked_at IS NULL"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE api_keys DROP COLUMN admin_session, DROP COLUMN created_by_admin")
    op.execute(
        """
        ALTER TABLE auth_sessions
            DROP COLUMN rotated_at,
            DROP COLUMN previous_hash,
            DROP COLUMN generation,
            DROP COLUMN refresh_seed
        """
    )
