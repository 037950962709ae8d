"""Enterprise SSO (issue 14, ``controlplane.sso``).

- ``tenant_sso``: one tenant's OpenID Connect provider (issuer, client id, the client secret encrypted
  with the master key, allowed email domains, the role of just-in-time users) and whether password
  sign-in stays allowed. Removed with the tenant.
- ``sso_login_states``: a sign-in started at ``/t/{slug}/auth/sso/start`` and not yet finished: the
  SHA-256 of its ``state`` (the key), its tenant, nonce and PKCE verifier, and the SHA-256 of the
  browser cookie it is bound to. Spent by the callback (deleted), expired after ``expires_at``.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE tenant_sso (
            tenant_id uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
            issuer text NOT NULL,
            client_id text NOT NULL,
            client_secret_encrypted text NOT NULL,
            allowed_domains text[] NOT NULL CHECK (cardinality(allowed_domains) > 0),
            default_role text NOT NULL CHECK (default_role IN ('tenant_admin', 'collection_manager', 'user')),
            password_login boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE sso_login_states (
            state_hash bytea PRIMARY KEY,
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            browser_hash bytea NOT NULL,
            nonce text NOT NULL,
            code_verifier text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL
        );
        CREATE INDEX sso_login_states_expires_at ON sso_login_states (expires_at);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE sso_login_states; DROP TABLE tenant_sso;")
