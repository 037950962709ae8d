"""Authentication and audit on the platform side: admins, their sessions, signing keys, platform audit.

- ``platform_admins``: super-admins (argon2id password hashes; emails unique regardless of case).
- ``platform_sessions``: one row per login of an admin; the refresh token's hash rotates on every
  refresh, and a revoked session invalidates its access tokens at once (checked on every admin call).
- ``signing_keys``: the HS256 keys tokens are signed with, encrypted with ``CARDVAULT_SECRET_KEY``.
  The newest active key signs; retired keys still verify until ``verify_until``, so a rotation logs
  nobody out.
- ``platform_audit``: every platform action (tenant lifecycle, quota changes, impersonation, admin
  and key management), who did it, from where, and whether it succeeded.
- ``tenant_api_calls``: API calls per tenant and hour, flushed by every instance (usage metering).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE platform_admins (
            id            uuid PRIMARY KEY,
            email         text NOT NULL CONSTRAINT platform_admins_email_check CHECK (btrim(email) <> ''),
            password_hash text NOT NULL,
            disabled      boolean NOT NULL DEFAULT false,
            created_at    timestamptz NOT NULL DEFAULT now(),
            updated_at    timestamptz NOT NULL DEFAULT now(),
            last_login_at timestamptz
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX platform_admins_email_lower_key ON platform_admins (lower(email))")
    op.execute(
        """
        CREATE TABLE platform_sessions (
            id           uuid PRIMARY KEY,
            user_id      uuid NOT NULL REFERENCES platform_admins (id) ON DELETE CASCADE,
            refresh_hash bytea NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now(),
            last_used_at timestamptz NOT NULL DEFAULT now(),
            expires_at   timestamptz NOT NULL,
            revoked_at   timestamptz,
            source_address inet,
            user_agent   text
        )
        """
    )
    op.execute("CREATE INDEX platform_sessions_user_id_idx ON platform_sessions (user_id)")
    op.execute(
        """
        CREATE TABLE signing_keys (
            kid              text PRIMARY KEY,
            secret_encrypted text NOT NULL,
            created_at       timestamptz NOT NULL DEFAULT now(),
            retired_at       timestamptz,
            verify_until     timestamptz
        )
        """
    )
    op.execute(
        """
        CREATE TABLE platform_audit (
            id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at             timestamptz NOT NULL DEFAULT now(),
            actor          text NOT NULL,
            action         text NOT NULL,
            tenant_id      uuid,
            tenant_slug    text,
            entity         text,
            entity_id      text,
            outcome        text NOT NULL DEFAULT 'succeeded'
                           CONSTRAINT platform_audit_outcome_check CHECK (outcome IN ('succeeded', 'failed')),
            source_address inet,
            request_id     text,
            details        jsonb NOT NULL DEFAULT '{}'::jsonb
        )
        """
    )
    op.execute("CREATE INDEX platform_audit_at_idx ON platform_audit (at, id)")
    op.execute("CREATE INDEX platform_audit_tenant_idx ON platform_audit (tenant_id, at)")
    op.execute(
        """
        CREATE TABLE tenant_api_calls (
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            hour      timestamptz NOT NULL,
            calls     bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (tenant_id, hour)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE tenant_api_calls")
    op.execute("DROP TABLE platform_audit")
    op.execute("DROP TABLE signing_keys")
    op.execute("DROP TABLE platform_sessions")
    op.execute("DROP TABLE platform_admins")
