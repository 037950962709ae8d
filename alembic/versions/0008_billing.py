"""Billing: the provider's catalogue, one billing record per tenant, the webhook inbox, the overage ledger.

- ``billing_prices`` / ``billing_meters``: what ``cardvault billing sync`` created at the provider, so a
  subscription's price id maps back to a tier without asking the provider.
- ``tenant_billing``: our copy of the provider's state for one tenant (customer, subscription, status,
  price, period end, grace deadline). ``state_at`` is the provider's time of the state we hold, so an older
  event never overwrites a newer state.
- ``billing_events``: the webhook inbox, keyed by the provider's event id (a replay inserts nothing);
  ``processed_at`` NULL means still to do (a crash between storing and processing leaves such a row).
- ``billing_usage_reports``: every overage report, one row per tenant, meter and period with the
  idempotency identifier sent to the provider; ``reported_at`` NULL means not yet accepted (retried).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE billing_prices (
            lookup_key text PRIMARY KEY,
            provider text NOT NULL,
            tier text NOT NULL CHECK (tier IN ('starter', 'professional', 'enterprise')),
            billing_interval text NOT NULL CHECK (billing_interval IN ('month', 'year')),
            product_id text NOT NULL,
            price_id text NOT NULL UNIQUE,
            unit_amount bigint NOT NULL CHECK (unit_amount >= 0),
            currency text NOT NULL,
            synced_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE billing_meters (
            meter text PRIMARY KEY,
            provider text NOT NULL,
            meter_id text NOT NULL UNIQUE,
            event_name text NOT NULL UNIQUE,
            synced_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE tenant_billing (
            tenant_id uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
            provider text NOT NULL,
            customer_id text UNIQUE,
            subscription_id text UNIQUE,
            subscription_status text,
            price_id text,
            current_period_end timestamptz,
            grace_deadline timestamptz,
            suspended_for_nonpayment boolean NOT NULL DEFAULT false,
            state_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX tenant_billing_grace ON tenant_billing (grace_deadline) WHERE grace_deadline IS NOT NULL")
    op.execute(
        """
        CREATE TABLE billing_events (
            event_id text PRIMARY KEY,
            provider text NOT NULL,
            event_type text NOT NULL,
            created timestamptz NOT NULL,
            payload jsonb NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now(),
            attempts integer NOT NULL DEFAULT 0,
            last_error text,
            tenant_id uuid,
            outcome text,
            processed_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX billing_events_pending ON billing_events (received_at) WHERE processed_at IS NULL")
    op.execute("CREATE INDEX billing_events_tenant ON billing_events (tenant_id, created)")
    op.execute(
        """
        CREATE TABLE billing_usage_reports (
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            meter text NOT NULL,
            period_start timestamptz NOT NULL,
            period_end timestamptz NOT NULL,
            identifier text NOT NULL UNIQUE,
            quantity bigint NOT NULL CHECK (quantity >= 0),
            attempts integer NOT NULL DEFAULT 0,
            last_error text,
            created_at timestamptz NOT NULL DEFAULT now(),
            reported_at timestamptz,
            PRIMARY KEY (tenant_id, meter, period_start)
        )
        """
    )
    op.execute(
        "CREATE INDEX billing_usage_reports_pending ON billing_usage_reports (created_at) WHERE reported_at IS NULL"
    )


def downgrade() -> None:
    for table in ("billing_usage_reports", "billing_events", "tenant_billing", "billing_meters", "billing_prices"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
