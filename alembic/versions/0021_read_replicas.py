"""Read replicas of a server (issue 15).

- ``db_server_replicas``: the streaming replicas of a registered server, in the order the operator gave
  them. Their DSNs are encrypted under the master key like the server's own (``dsn_encrypted``), with a
  redacted copy for listings (``dsn_display``). They go with their server (``ON DELETE CASCADE``).
- A change to a server's replicas notifies ``cardvault_servers`` with the server's id, as a change of its
  DSN does: every control-plane process then drops the pools of that server's tenants (their replica
  pools included) and re-reads the replica list at once.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07
"""

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE db_server_replicas (
            id uuid PRIMARY KEY,
            server_id uuid NOT NULL REFERENCES db_servers (id) ON DELETE CASCADE,
            position integer NOT NULL CHECK (position >= 0),
            dsn_encrypted text NOT NULL,
            dsn_display text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            UNIQUE (server_id, position)
        )
        """
    )
    op.execute(
        """
        CREATE FUNCTION cardvault_notify_replica_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('cardvault_servers', OLD.server_id::text);
            ELSE
                PERFORM pg_notify('cardvault_servers', NEW.server_id::text);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER db_server_replicas_notify
        AFTER INSERT OR UPDATE OR DELETE ON db_server_replicas
        FOR EACH ROW EXECUTE FUNCTION cardvault_notify_replica_change()
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS db_server_replicas")
    op.execute("DROP FUNCTION IF EXISTS cardvault_notify_replica_change()")
