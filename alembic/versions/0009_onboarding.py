"""Onboarding: the mail outbox and each tenant's onboarding record (email verification, checklist marks).

- ``mail_outbox``: every mail the service sends, written in the transaction of what caused it, delivered
  by a job (``sent_at`` NULL: still to send; ``attempts``/``last_error``/``send_after`` for retries;
  ``failed_at``: the server refused it for good, never retried). A signup therefore never fails because
  mail is down. The body (it holds a link with a one-time token) is emptied once the mail is sent or has
  failed for good; the row stays for a while as a record of what was sent to whom.
- ``tenant_onboarding``: one row per tenant that signed up by itself: the first admin's address, the
  SHA-256 of its verification token and when it expires, and when it was verified (the hash is kept
  after use, so a second click on the link is told that it was used rather than that it is unknown).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE mail_outbox (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id uuid REFERENCES tenants (id) ON DELETE CASCADE,
            kind text NOT NULL,
            recipient text NOT NULL,
            subject text NOT NULL,
            body text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            send_after timestamptz NOT NULL DEFAULT now(),
            attempts integer NOT NULL DEFAULT 0,
            last_error text,
            sent_at timestamptz,
            failed_at timestamptz
        )
        """
    )
    op.execute(
        "CREATE INDEX mail_outbox_pending ON mail_outbox (send_after, id) WHERE sent_at IS NULL AND failed_at IS NULL"
    )
    # For the cascade when a tenant is deleted, and for a tenant's mails.
    op.execute("CREATE INDEX mail_outbox_tenant ON mail_outbox (tenant_id) WHERE tenant_id IS NOT NULL")
    op.execute(
        "CREATE INDEX mail_outbox_done ON mail_outbox (created_at) WHERE sent_at IS NOT NULL OR failed_at IS NOT NULL"
    )
    op.execute(
        """
        CREATE TABLE tenant_onboarding (
            tenant_id uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
            admin_email text NOT NULL,
            verify_hash bytea NOT NULL UNIQUE,
            verify_expires_at timestamptz NOT NULL,
            email_verified_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS tenant_onboarding")
    op.execute("DROP TABLE IF EXISTS mail_outbox")
