"""Online tenant moves between servers (issue 15).

- ``tenant_moves``: one row per move of a tenant to another server: where from and to, how (``logical``
  replication), its state, the measured write freeze (ms) and the rows verified at the cutover. The
  steps themselves are in the tenant's ``move`` operation of the ledger (``operation_id``).
- ``tenant_operations.kind`` gains ``move``.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_KINDS = "'provision', 'suspend', 'resume', 'update', 'delete', 'purge', 'migrate', 'repair', 'restore'"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE tenant_moves (
            id bigserial PRIMARY KEY,
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            operation_id bigint NOT NULL REFERENCES tenant_operations (id),
            from_server_id uuid NOT NULL,
            from_server text NOT NULL,
            to_server_id uuid NOT NULL,
            to_server text NOT NULL,
            method text NOT NULL CHECK (method IN ('logical')),
            state text NOT NULL DEFAULT 'running'
                CHECK (state IN ('running', 'succeeded', 'rolled_back', 'failed')),
            freeze_ms double precision,
            rows_verified bigint,
            error text,
            requested_by text,
            started_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX tenant_moves_tenant ON tenant_moves (tenant_id, id DESC)")
    op.execute("CREATE UNIQUE INDEX tenant_moves_one_running ON tenant_moves (tenant_id) WHERE state = 'running'")
    op.execute("ALTER TABLE tenant_operations DROP CONSTRAINT tenant_operations_kind_check")
    op.execute(
        f"ALTER TABLE tenant_operations ADD CONSTRAINT tenant_operations_kind_check CHECK (kind IN ({_KINDS}, 'move'))"
    )


def downgrade() -> None:
    op.execute("DROP TABLE tenant_moves")
    op.execute("DELETE FROM tenant_operations WHERE kind = 'move'")
    op.execute("ALTER TABLE tenant_operations DROP CONSTRAINT tenant_operations_kind_check")
    op.execute(f"ALTER TABLE tenant_operations ADD CONSTRAINT tenant_operations_kind_check CHECK (kind IN ({_KINDS}))")
