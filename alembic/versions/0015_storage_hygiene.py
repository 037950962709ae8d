"""Storage hygiene and bytes served (issue 13, ``controlplane.hygiene`` and ``controlplane.usage.bytes_served``).

- ``quarantined_files``: objects found in a tenant's storage area with no ``files`` row in its database
  (``orphan``), or left behind in the area of a tenant that is no longer in the registry (``tenant_gone``).
  The object is moved out of the served area into the quarantine; it is deleted once ``delete_after``
  (found + ``CARDVAULT_QUARANTINE_GRACE``) has passed, or moved back if a row for it reappears meanwhile
  (a restore from a backup). One open entry per (tenant, key); no foreign key to ``tenants``: a purged
  tenant's leftovers are recorded too.
- ``missing_files``: ``files`` rows whose object is not in storage. Reported while open; after
  ``resolve_after`` the row is removed from the tenant database (and the card's image cleared, audited
  there), or the finding resolves by itself when the object or the row goes away first.
- ``tenant_bytes_served``: bytes of card images served per tenant, cumulative, added to by every replica's
  flush (history points of the same total go to ``tenant_usage_metrics`` as ``bytes_served``).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE quarantined_files (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id uuid NOT NULL,
            tenant_slug text,
            key text NOT NULL,
            bytes bigint NOT NULL CHECK (bytes >= 0),
            reason text NOT NULL CHECK (reason IN ('orphan', 'tenant_gone')),
            found_at timestamptz NOT NULL DEFAULT now(),
            delete_after timestamptz NOT NULL,
            deleted_at timestamptz,
            restored_at timestamptz,
            CHECK (deleted_at IS NULL OR restored_at IS NULL)
        )
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX quarantined_files_open ON quarantined_files (tenant_id, key)"
        " WHERE deleted_at IS NULL AND restored_at IS NULL"
    )
    op.execute(
        "CREATE INDEX quarantined_files_due ON quarantined_files (delete_after)"
        " WHERE deleted_at IS NULL AND restored_at IS NULL"
    )
    op.execute(
        """
        CREATE TABLE missing_files (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id uuid NOT NULL,
            tenant_slug text,
            key text NOT NULL,
            card_id bigint,
            bytes bigint NOT NULL CHECK (bytes >= 0),
            found_at timestamptz NOT NULL DEFAULT now(),
            last_seen_at timestamptz NOT NULL DEFAULT now(),
            resolve_after timestamptz NOT NULL,
            resolved_at timestamptz,
            resolution text CHECK (resolution IN ('reappeared', 'row_gone', 'row_removed')),
            CHECK ((resolved_at IS NULL) = (resolution IS NULL))
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX missing_files_open ON missing_files (tenant_id, key) WHERE resolved_at IS NULL")
    op.execute(
        """
        CREATE TABLE tenant_bytes_served (
            tenant_id uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
            bytes bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0),
            requests bigint NOT NULL DEFAULT 0 CHECK (requests >= 0),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DELETE FROM tenant_usage_metrics WHERE metric_name = 'bytes_served'")
    op.execute("DROP TABLE tenant_bytes_served")
    op.execute("DROP TABLE missing_files")
    op.execute("DROP TABLE quarantined_files")
