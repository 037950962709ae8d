"""Per-tenant request statistics (issue 14, ``controlplane.usage.request_stats``).

- ``tenant_request_stats``: per tenant and hour, the tenant API requests by status class and a latency
  histogram (``duration_buckets``: counts per bucket of ``request_stats.BOUNDS``, not cumulative, the last
  one +Inf; ``duration_sum`` in seconds). Every replica's flush adds its own counts; rows older than the
  retention are dropped by the flush.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE tenant_request_stats (
            tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            hour             timestamptz NOT NULL,
            requests_2xx     bigint NOT NULL DEFAULT 0,
            requests_3xx     bigint NOT NULL DEFAULT 0,
            requests_4xx     bigint NOT NULL DEFAULT 0,
            requests_5xx     bigint NOT NULL DEFAULT 0,
            duration_sum     double precision NOT NULL DEFAULT 0,
            duration_buckets bigint[] NOT NULL,
            PRIMARY KEY (tenant_id, hour)
        )
        """
    )
    op.execute("CREATE INDEX tenant_request_stats_hour ON tenant_request_stats (hour)")


def downgrade() -> None:
    op.execute("DROP TABLE tenant_request_stats")
