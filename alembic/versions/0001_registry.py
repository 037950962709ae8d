"""Control database: fleet, tenants registry, quotas, usage, operations ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE db_servers (
            id uuid PRIMARY KEY,
            name text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
            dsn_encrypted text NOT NULL,
            dsn_display text NOT NULL,
            status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'draining', 'disabled')),
            template_revision text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE tenants (
            id uuid PRIMARY KEY,
            name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
            slug text NOT NULL UNIQUE CHECK (slug ~ '^[a-z][a-z0-9-]{1,61}[a-z0-9]$'),
            status text NOT NULL CHECK (status IN ('provisioning', 'active', 'suspended', 'deleting', 'broken')),
            subscription_tier text NOT NULL CHECK (subscription_tier IN ('starter', 'professional', 'enterprise')),
            max_users integer CHECK (max_users IS NULL OR max_users >= 0),
            server_id uuid NOT NULL REFERENCES db_servers (id),
            database_name text NOT NULL UNIQUE,
            role_name text NOT NULL UNIQUE,
            role_password_encrypted text NOT NULL,
            schema_revision text,
            migration_error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            suspended_at timestamptz,
            delete_after timestamptz
        )
        """
    )
    op.execute("CREATE INDEX tenants_status_tier ON tenants (status, subscription_tier)")
    op.execute("CREATE INDEX tenants_server ON tenants (server_id)")
    op.execute("CREATE INDEX tenants_delete_after ON tenants (delete_after) WHERE status = 'deleting'")
    op.execute(
        """
        CREATE TABLE tenant_quotas (
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            quota_type text NOT NULL CHECK (quota_type IN ('users', 'cards', 'storage_bytes', 'api_calls_per_hour')),
            quota_limit bigint CHECK (quota_limit IS NULL OR quota_limit >= 0),
            current_usage bigint NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, quota_type)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE tenant_usage_metrics (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            metric_name text NOT NULL,
            metric_value double precision NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX tenant_usage_metrics_lookup ON tenant_usage_metrics (tenant_id, metric_name, recorded_at)")
    op.execute(
        """
        CREATE TABLE tenant_storage_usage (
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            storage_type text NOT NULL,
            bytes_used bigint NOT NULL DEFAULT 0 CHECK (bytes_used >= 0),
            file_count bigint NOT NULL DEFAULT 0 CHECK (file_count >= 0),
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, storage_type)
        )
        """
    )
    # The ledger outlives the tenant (no foreign key): it is how the reconciler recognises what it made.
    op.execute(
        """
        CREATE TABLE tenant_operations (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id uuid NOT NULL,
            tenant_slug text NOT NULL,
            kind text NOT NULL CHECK (kind IN ('provision', 'suspend', 'resume', 'update', 'delete', 'purge',
                                              'migrate', 'repair')),
            state text NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'rolled_back')),
            step text,
            attempts integer NOT NULL DEFAULT 1 CHECK (attempts >= 1),
            error text,
            params jsonb NOT NULL DEFAULT '{}',
            steps jsonb NOT NULL DEFAULT '[]',
            started_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX tenant_operations_tenant ON tenant_operations (tenant_id, started_at)")
    op.execute("CREATE INDEX tenant_operations_running ON tenant_operations (started_at) WHERE state = 'running'")
    # Tenant login roles live on the same servers; they have no business in the control database.
    op.execute("DO $$ BEGIN EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', current_database()); END $$")


def downgrade() -> None:
    for table in (
        "tenant_operations",
        "tenant_storage_usage",
        "tenant_usage_metrics",
        "tenant_quotas",
        "tenants",
        "db_servers",
    ):
        op.execute(f"DROP TABLE IF EXISTS {table}")
