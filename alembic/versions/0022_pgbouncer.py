"""PgBouncer in front of a server (issue 15).

- ``server_pgbouncers``: the PgBouncer a server may have (at most one): the address tenant connections
  go to (``host``, ``port``), the directory the control plane writes its ``pgbouncer.ini`` and
  ``userlist.txt`` to (``config_dir``), and the password of the admin user it RELOADs it as (encrypted
  with the master key, so ``cardvault keys rotate`` re-encrypts it like every ``*_encrypted`` column).
- Adding, changing or removing a server's PgBouncer notifies ``cardvault_servers`` with the server id:
  every replica drops the tenant credentials of that server and reconnects through the new address.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07
"""

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE server_pgbouncers (
            server_id uuid PRIMARY KEY REFERENCES db_servers (id) ON DELETE CASCADE,
            host text NOT NULL CHECK (host <> '' AND length(host) <= 255),
            port integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
            config_dir text NOT NULL CHECK (config_dir LIKE '/%' AND length(config_dir) <= 1024),
            admin_password_encrypted text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE FUNCTION cardvault_notify_pgbouncer_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('cardvault_servers', COALESCE(NEW.server_id, OLD.server_id)::text);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER server_pgbouncers_notify
        AFTER INSERT OR DELETE OR UPDATE OF host, port ON server_pgbouncers
        FOR EACH ROW EXECUTE FUNCTION cardvault_notify_pgbouncer_change()
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE server_pgbouncers")
    op.execute("DROP FUNCTION cardvault_notify_pgbouncer_change()")
