"""Per-server TLS settings, and re-encryption under a new master key that nobody needs to hear about.

- ``db_servers.sslmode``: libpq's ``sslmode`` for every connection the control plane makes to the
  server (NULL: the DSN's own, else libpq's default ``prefer``). ``db_servers.ssl_root_cert``: the PEM
  of the certificate authorities that sign the server's certificate (``verify-ca``, ``verify-full``);
  kept in the registry so that every replica verifies the same way, written to a 0600 file for libpq.
- The change notifications (``cardvault_tenants``, ``cardvault_servers``) no longer fire when
  ``cardvault keys rotate`` re-encrypts a role password or a DSN (it sets ``cardvault.reencrypt`` for its
  transaction): the plaintext is unchanged, and a notification would close every tenant pool of every
  replica. A TLS change of a server notifies like a new DSN.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_SSLMODES = "'disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'"
#: True unless the current transaction is a re-encryption by ``cardvault keys rotate``.
_NOT_REENCRYPTING = "coalesce(current_setting('cardvault.reencrypt', true), '') <> 'on'"


def upgrade() -> None:
    op.execute(
        f"""
        ALTER TABLE db_servers
            ADD COLUMN sslmode text CHECK (sslmode IN ({_SSLMODES})),
            ADD COLUMN ssl_root_cert text
                CHECK (ssl_root_cert IS NULL OR (ssl_root_cert LIKE '-----BEGIN CERTIFICATE-----%'
                                                 AND length(ssl_root_cert) <= 262144))
        """
    )
    op.execute("DROP TRIGGER tenants_notify_update ON tenants")
    op.execute(
        f"""
        CREATE TRIGGER tenants_notify_update
        AFTER UPDATE ON tenants
        FOR EACH ROW WHEN (
            (OLD.id, OLD.slug, OLD.status, OLD.subscription_tier, OLD.server_id, OLD.database_name, OLD.role_name)
            IS DISTINCT FROM
            (NEW.id, NEW.slug, NEW.status, NEW.subscription_tier, NEW.server_id, NEW.database_name, NEW.role_name)
            OR (OLD.role_password_encrypted IS DISTINCT FROM NEW.role_password_encrypted AND {_NOT_REENCRYPTING})
        )
        EXECUTE FUNCTION cardvault_notify_tenant_change()
        """
    )
    op.execute("DROP TRIGGER db_servers_notify_update ON db_servers")
    op.execute(
        f"""
        CREATE TRIGGER db_servers_notify_update
        AFTER UPDATE ON db_servers
        FOR EACH ROW WHEN (
            (OLD.id, OLD.sslmode, OLD.ssl_root_cert) IS DISTINCT FROM (NEW.id, NEW.sslmode, NEW.ssl_root_cert)
            OR (OLD.dsn_encrypted IS DISTINCT FROM NEW.dsn_encrypted AND {_NOT_REENCRYPTING})
        )
        EXECUTE FUNCTION cardvault_notify_server_change()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER db_servers_notify_update ON db_servers")
    op.execute(
        """
        CREATE TRIGGER db_servers_notify_update
        AFTER UPDATE ON db_servers
        FOR EACH ROW WHEN ((OLD.id, OLD.dsn_encrypted) IS DISTINCT FROM (NEW.id, NEW.dsn_encrypted))
        EXECUTE FUNCTION cardvault_notify_server_change()
        """
    )
    op.execute("DROP TRIGGER tenants_notify_update ON tenants")
    op.execute(
        """
        CREATE TRIGGER tenants_notify_update
        AFTER UPDATE ON tenants
        FOR EACH ROW WHEN (
            (OLD.id, OLD.slug, OLD.status, OLD.subscription_tier, OLD.server_id, OLD.database_name,
             OLD.role_name, OLD.role_password_encrypted)
            IS DISTINCT FROM
            (NEW.id, NEW.slug, NEW.status, NEW.subscription_tier, NEW.server_id, NEW.database_name,
             NEW.role_name, NEW.role_password_encrypted)
        )
        EXECUTE FUNCTION cardvault_notify_tenant_change()
        """
    )
    op.execute("ALTER TABLE db_servers DROP COLUMN ssl_root_cert, DROP COLUMN sslmode")
