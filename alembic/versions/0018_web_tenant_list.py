"""The dashboard's tenants list (issue 14, ``controlplane.web.admin.tenant_list_repository``).

- ``tenants_name_slug``: the list's default order (name, then slug): a page is read from this index in
  order and stops after its rows, instead of sorting every tenant. Search, status, tier and server
  filters, the size and growth orders and the per-row quotas use existing indexes (or, for a substring
  search, a scan of ``tenants`` alone, a few milliseconds at 10,000 tenants).
- ``tenant_request_stats_errors``: the hours in which a tenant's API answered 5xx at all. The alerts
  find the tenants with many 5xx from these few rows instead of reading every tenant's every hour.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX tenants_name_slug ON tenants (name, slug)")
    op.execute("CREATE INDEX tenant_request_stats_errors ON tenant_request_stats (hour) WHERE requests_5xx > 0")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS tenant_request_stats_errors")
    op.execute("DROP INDEX IF EXISTS tenants_name_slug")
