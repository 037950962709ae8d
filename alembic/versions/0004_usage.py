"""Usage collection: the last table scan of each tenant, and an index for compacting history.

- ``tenant_usage_scans``: one row per tenant with the database size at its last table scan and what
  that scan found (per-table sizes and row estimates, the tenant's usage counters). The collector
  skips a tenant's table scan while its database size stays at ``database_bytes``; keeping the row
  here means a restarted (or newly elected) leader does not rescan every tenant, and the in-memory
  snapshot is whole again at start-up.
- ``tenant_usage_metrics_recorded_at``: retention and downsampling work on time slices of the history
  across all tenants; the existing (tenant, metric, time) index cannot serve those.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE tenant_usage_scans (
            tenant_id      uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
            database_bytes bigint NOT NULL CHECK (database_bytes >= 0),
            tables         jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(tables) = 'array'),
            counters       jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(counters) = 'object'),
            scanned_at     timestamptz NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX tenant_usage_metrics_recorded_at ON tenant_usage_metrics (recorded_at)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS tenant_usage_metrics_recorded_at")
    op.execute("DROP TABLE IF EXISTS tenant_usage_scans")
