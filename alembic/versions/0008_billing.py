"""Billing: the provider's catalogue, one billing record per tenant, the webhook inbox, the overage ledger.

- ``billing_prices`` / ``billing_meters``: what ``cardvault billing sync`` created at the provider, so a
  subscription's price id maps back to a tier without asking the provider. A price is a tier's (``tier``,
  ``unit_amount``) or an overage meter's metered monthly price (``meter``, ``meter_id``,
  ``unit_amount_decimal``: fractions of a cent per unit). A price replaced by a new amount keeps its row with
  ``retired_at`` set (its subscribers stay on it); one current price per lookup key.
- ``tenant_billing``: our copy of the provider's state for one tenant (customer, subscription, status,
  price, period end, grace deadline). ``state_at`` is the provider's time of the state we hold, so an older
  event never overwrites a newer state.
- ``billing_events``: the webhook inbox, keyed by the provider's event id (a replay inserts nothing);
  ``processed_at`` NULL means still to do (a crash between storing and processing leaves such a row;
  a failed attempt is retried from ``next_attempt_at``, with backoff, up to a bounded number of attempts).
- ``billing_usage_reports``: every overage report, one row per tenant, meter and period (a UTC day) with
  the idempotency identifier sent to the provider, the measured ``usage`` and the ``quota_limit`` it was
  held against; ``reported_at`` NULL means not yet accepted (retried from ``next_attempt_at``) unless
  ``failed_at`` says the attempts ran out. Only billable periods have a row (``quantity`` > 0).

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
            price_id text PRIMARY KEY,
            lookup_key text NOT NULL,
            provider text NOT NULL,
            tier text CHECK (tier IN ('starter', 'professional', 'enterprise')),
            meter text CHECK (meter IN ('cards', 'storage_gb', 'api_calls')),
            meter_id text,
            billing_interval text NOT NULL CHECK (billing_interval IN ('month', 'year')),
            product_id text NOT NULL,
            unit_amount bigint CHECK (unit_amount >= 0),
            unit_amount_decimal numeric CHECK (unit_amount_decimal >= 0),
            currency text NOT NULL,
            synced_at timestamptz NOT NULL DEFAULT now(),
            retired_at timestamptz,
            -- a tier's licensed price, or an overage meter's metered price: never both, never neither
            CHECK (CASE WHEN tier IS NOT NULL THEN meter IS NULL AND unit_amount IS NOT NULL
                        ELSE meter IS NOT NULL AND meter_id IS NOT NULL AND unit_amount_decimal IS NOT NULL END)
        )
        """
    )
    # One current price per lookup key; retired ones stay, since subscribers keep the price they signed up on.
    op.execute("CREATE UNIQUE INDEX billing_prices_current ON billing_prices (lookup_key) WHERE retired_at IS NULL")
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
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            tenant_id uuid,
            outcome text,
            processed_at timestamptz
        )
        """
    )
    op.execute("CREATE INDEX billing_events_pending ON billing_events (next_attempt_at) WHERE processed_at IS NULL")
    op.execute("CREATE INDEX billing_events_tenant ON billing_events (tenant_id, created)")
    op.execute(
        """
        CREATE TABLE billing_usage_reports (
            id bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
            tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
            meter text NOT NULL CHECK (meter IN ('cards', 'storage_gb', 'api_calls')),
            period_start timestamptz NOT NULL,
            period_end timestamptz NOT NULL CHECK (period_end > period_start),
            identifier text NOT NULL UNIQUE,
            quantity bigint NOT NULL CHECK (quantity > 0),
            usage bigint NOT NULL CHECK (usage >= 0),
            quota_limit bigint NOT NULL CHECK (quota_limit >= 0),
            attempts integer NOT NULL DEFAULT 0,
            last_error text,
            next_attempt_at timestamptz NOT NULL DEFAULT now(),
            failed_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            reported_at timestamptz,
            PRIMARY KEY (tenant_id, meter, period_start)
        )
        """
    )
    op.execute(
        "CREATE INDEX billing_usage_reports_pending ON billing_usage_reports (next_attempt_at)"
        " WHERE reported_at IS NULL AND failed_at IS NULL"
    )
    op.execute("CREATE INDEX billing_usage_reports_period ON billing_usage_reports (period_start, id)")


def downgrade() -> None:
    for table in ("billing_usage_reports", "billing_events", "tenant_billing", "billing_meters", "billing_prices"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
