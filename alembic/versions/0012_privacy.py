"""GDPR: export requests, erasures, deletion certificates (issue 13, ``controlplane.privacy``).

- ``tenant_exports``: one row per export archive (a whole tenant, or one user's data). Written ``pending``
  when asked for; a worker claims it (``FOR UPDATE SKIP LOCKED``, a lease in ``lease_until``), streams the
  archive sealed into the object store and marks it ``ready`` with ``expires_at``. Only the SHA-256 of the
  one-time download token is kept (``token_hash``); ``data_key_encrypted`` is the archive's data key
  wrapped by the master key. No foreign key to ``tenants``: an export of a purged tenant must still be
  found so that its archive is deleted.
- ``user_erasures``: one row per user erasure. ``email_encrypted`` holds the erased address (under the
  master key) only until the control database has been scrubbed of it (then NULL), so a crash between the
  tenant's commit and that scrub is finished by the leader job.
- ``tenant_tombstones``: what a tenant was (slug, name, server, database and role names) when its registry
  row was deleted, and exactly when (written by a trigger in the deleting transaction): the deletion
  certificate's source for what was removed, whatever removed it.
- ``deletion_certificates``: one per succeeded purge operation: what was deleted when and which backups
  remain until when; ``backups_destroyed_at`` is set once the last of them is gone.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE tenant_exports (
            id uuid PRIMARY KEY,
            tenant_id uuid NOT NULL,
            tenant_slug text NOT NULL,
            kind text NOT NULL CHECK (kind IN ('tenant', 'user')),
            subject bigint,
            requested_by text NOT NULL,
            status text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'running', 'ready', 'downloaded', 'expired', 'failed')),
            token_hash bytea NOT NULL UNIQUE,
            object_key text UNIQUE,
            data_key_encrypted text,
            bytes bigint CHECK (bytes IS NULL OR bytes >= 0),
            sha256 text CHECK (sha256 IS NULL OR sha256 ~ '^[0-9a-f]{64}$'),
            attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            lease_until timestamptz,
            download_lease_until timestamptz,
            error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            started_at timestamptz,
            finished_at timestamptz,
            expires_at timestamptz,
            downloaded_at timestamptz,
            object_deleted_at timestamptz,
            CHECK ((kind = 'user') = (subject IS NOT NULL))
        )
        """
    )
    op.execute("CREATE INDEX tenant_exports_tenant ON tenant_exports (tenant_id, created_at DESC)")
    op.execute("CREATE INDEX tenant_exports_open ON tenant_exports (created_at) WHERE status IN ('pending', 'running')")
    # One export of a kind (and subject) at a time per tenant: a second request while one runs is a 409.
    op.execute(
        "CREATE UNIQUE INDEX tenant_exports_one_open ON tenant_exports (tenant_id, kind, coalesce(subject, 0))"
        " WHERE status IN ('pending', 'running')"
    )
    op.execute("CREATE INDEX tenant_exports_expiry ON tenant_exports (expires_at) WHERE status = 'ready'")
    op.execute(
        "CREATE INDEX tenant_exports_objects ON tenant_exports (created_at)"
        " WHERE object_key IS NOT NULL AND object_deleted_at IS NULL"
    )
    op.execute(
        """
        CREATE TABLE user_erasures (
            id uuid PRIMARY KEY,
            tenant_id uuid NOT NULL,
            user_id bigint NOT NULL,
            pseudonym text NOT NULL,
            email_encrypted text,
            requested_by text NOT NULL,
            state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'abandoned')),
            summary jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(summary) = 'object'),
            created_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            CHECK ((state = 'pending') = (email_encrypted IS NOT NULL))
        )
        """
    )
    op.execute("CREATE INDEX user_erasures_pending ON user_erasures (created_at) WHERE state = 'pending'")
    op.execute("CREATE INDEX user_erasures_tenant ON user_erasures (tenant_id, created_at)")
    op.execute(
        """
        CREATE TABLE tenant_tombstones (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id uuid NOT NULL,
            slug text NOT NULL,
            name text NOT NULL,
            subscription_tier text NOT NULL,
            server_id uuid NOT NULL,
            server_name text,
            database_name text NOT NULL,
            role_name text NOT NULL,
            created_at timestamptz NOT NULL,
            deleted_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX tenant_tombstones_tenant ON tenant_tombstones (tenant_id, deleted_at)")
    op.execute(
        """
        CREATE FUNCTION cardvault_tenant_tombstone() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO tenant_tombstones
                (tenant_id, slug, name, subscription_tier, server_id, server_name, database_name, role_name, created_at)
            VALUES (OLD.id, OLD.slug, OLD.name, OLD.subscription_tier, OLD.server_id,
                    (SELECT s.name FROM db_servers s WHERE s.id = OLD.server_id),
                    OLD.database_name, OLD.role_name, OLD.created_at);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER tenants_tombstone AFTER DELETE ON tenants"
        " FOR EACH ROW EXECUTE FUNCTION cardvault_tenant_tombstone()"
    )
    op.execute(
        """
        CREATE TABLE deletion_certificates (
            id uuid PRIMARY KEY,
            tenant_id uuid NOT NULL,
            tenant_slug text NOT NULL,
            operation_id bigint NOT NULL UNIQUE,
            purge_started_at timestamptz NOT NULL,
            purged_at timestamptz NOT NULL,
            document jsonb NOT NULL CHECK (jsonb_typeof(document) = 'object'),
            issued_at timestamptz NOT NULL DEFAULT now(),
            backups_destroyed_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX deletion_certificates_tenant ON deletion_certificates (tenant_id, issued_at DESC)")
    op.execute("CREATE INDEX deletion_certificates_slug ON deletion_certificates (tenant_slug, issued_at DESC)")
    op.execute(
        "CREATE INDEX deletion_certificates_backups ON deletion_certificates (issued_at)"
        " WHERE backups_destroyed_at IS NULL"
    )
    # Succeeded purges are looked for by the certificate job.
    op.execute(
        "CREATE INDEX tenant_operations_purged ON tenant_operations (finished_at)"
        " WHERE kind = 'purge' AND state = 'succeeded'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS tenant_operations_purged")
    op.execute("DROP TABLE IF EXISTS deletion_certificates")
    op.execute("DROP TRIGGER IF EXISTS tenants_tombstone ON tenants")
    op.execute("DROP FUNCTION IF EXISTS cardvault_tenant_tombstone()")
    op.execute("DROP TABLE IF EXISTS tenant_tombstones")
    op.execute("DROP TABLE IF EXISTS user_erasures")
    op.execute("DROP TABLE IF EXISTS tenant_exports")
