"""Quota alerts and emergency quota expansions.

- ``quota_alerts``: one row per alert event, opened when a tenant's usage of a quota reaches 80 % or
  100 % of its effective limit and resolved when it falls back below. At most one alert per tenant,
  quota and threshold is open at a time (a partial unique index), so re-evaluating an open condition
  updates that row instead of adding one; resolved rows stay as history.
- ``quota_expansions``: temporary extra allowance on a quota (today: ``storage_bytes``), granted by a
  platform admin for ``hours``. The effective limit is ``quota_limit`` plus every expansion whose
  ``expires_at`` is still ahead; expired rows stop counting by themselves and are deleted later.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE quota_alerts (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            quota_type  text NOT NULL CHECK (quota_type IN ('users', 'cards', 'storage_bytes', 'api_calls_per_hour')),
            threshold   smallint NOT NULL CHECK (threshold IN (80, 100)),
            state       text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'resolved')),
            usage       bigint NOT NULL,
            quota_limit bigint NOT NULL,
            opened_at   timestamptz NOT NULL DEFAULT now(),
            resolved_at timestamptz,
            updated_at  timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT quota_alerts_resolved_check CHECK ((state = 'resolved') = (resolved_at IS NOT NULL))
        )
        """
    )
    # The deduplication: one open alert per tenant, quota and threshold (evaluate upserts on it).
    op.execute(
        "CREATE UNIQUE INDEX quota_alerts_open_key ON quota_alerts (tenant_id, quota_type, threshold)"
        " WHERE state = 'open'"
    )
    # Listings: newest first, all tenants or one (keyset on id).
    op.execute("CREATE INDEX quota_alerts_tenant_id ON quota_alerts (tenant_id, id)")
    op.execute(
        """
        CREATE TABLE quota_expansions (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            quota_type  text NOT NULL DEFAULT 'storage_bytes'
                        CHECK (quota_type IN ('users', 'cards', 'storage_bytes', 'api_calls_per_hour')),
            extra       bigint NOT NULL CHECK (extra > 0),
            reason      text NOT NULL,
            expires_at  timestamptz NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            created_by  text NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX quota_expansions_active ON quota_expansions (tenant_id, quota_type, expires_at)")
    op.execute("CREATE INDEX quota_expansions_expires_at ON quota_expansions (expires_at)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS quota_expansions")
    op.execute("DROP TABLE IF EXISTS quota_alerts")
