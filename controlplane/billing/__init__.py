"""Billing: plans at the provider, one billing record per tenant, the webhook inbox, metered overage."""
