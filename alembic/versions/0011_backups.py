"""Backups: one row per backup of a tenant database, restore verifications, retired databases.

- ``backups``: written (``pending``) before the dump starts, so a crash leaves a row the backup job
  finishes or fails; no foreign key to ``tenants``: a backup outlives its tenant (a deleted tenant can be
  restored while its backups are retained). ``data_key_encrypted`` is the object's data key wrapped by the
  master key (``cardvault keys rotate`` re-wraps it). ``manifest``: schema revision, server version and the
  row count of every table at dump time, checked after every restore.
- ``backup_verifications``: each test restore of a backup into a scratch database and its result.
- ``retired_databases``: databases a restore (or a move) replaced, kept until ``drop_after`` for a rollback,
  then dropped by the reconciler.
- ``tenant_operations.kind`` gains ``restore``.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_KINDS = "'provision', 'suspend', 'resume', 'update', 'delete', 'purge', 'migrate', 'repair'"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE backups (
            id uuid PRIMARY KEY,
            tenant_id uuid NOT NULL,
            tenant_slug text NOT NULL,
            server_id uuid NOT NULL,
            database_name text NOT NULL,
            schema_revision text,
            status text NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'expired')),
            trigger text NOT NULL CHECK (trigger IN ('scheduled', 'manual', 'tenant', 'pre_restore')),
            requested_by text,
            store text NOT NULL,
            object_key text NOT NULL UNIQUE,
            data_key_encrypted text NOT NULL,
            bytes bigint CHECK (bytes IS NULL OR bytes >= 0),
            sha256 text CHECK (sha256 IS NULL OR sha256 ~ '^[0-9a-f]{64}$'),
            manifest jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(manifest) = 'object'),
            error text,
            attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            created_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            finished_at timestamptz,
            expires_at timestamptz,
            deleted_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX backups_tenant ON backups (tenant_id, created_at DESC)")
    op.execute("CREATE INDEX backups_open ON backups (created_at) WHERE status IN ('pending', 'running')")
    op.execute("CREATE INDEX backups_expiry ON backups (expires_at) WHERE status = 'succeeded'")
    op.execute(
        """
        CREATE TABLE backup_verifications (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            backup_id uuid NOT NULL REFERENCES backups (id) ON DELETE CASCADE,
            ok boolean NOT NULL,
            detail text NOT NULL DEFAULT '',
            seconds double precision NOT NULL DEFAULT 0,
            at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX backup_verifications_backup ON backup_verifications (backup_id, at DESC)")
    op.execute(
        """
        CREATE TABLE retired_databases (
            server_id uuid NOT NULL REFERENCES db_servers (id),
            database_name text NOT NULL,
            tenant_id uuid NOT NULL,
            reason text NOT NULL,
            retired_at timestamptz NOT NULL DEFAULT now(),
            drop_after timestamptz NOT NULL,
            PRIMARY KEY (server_id, database_name)
        )
        """
    )
    op.execute("ALTER TABLE tenant_operations DROP CONSTRAINT tenant_operations_kind_check")
    op.execute(
        "ALTER TABLE tenant_operations ADD CONSTRAINT tenant_operations_kind_check "
        f"CHECK (kind IN ({_KINDS}, 'restore'))"
    )


def downgrade() -> None:
    op.execute("DELETE FROM tenant_operations WHERE kind = 'restore'")
    op.execute("ALTER TABLE tenant_operations DROP CONSTRAINT tenant_operations_kind_check")
    op.execute(f"ALTER TABLE tenant_operations ADD CONSTRAINT tenant_operations_kind_check CHECK (kind IN ({_KINDS}))")
    op.execute("DROP TABLE retired_databases")
    op.execute("DROP TABLE backup_verifications")
    op.execute("DROP TABLE backups")
