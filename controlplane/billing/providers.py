"""The billing provider the settings ask for (``CARDVAULT_BILLING``): None for ``none``, else its provider."""

from __future__ import annotations

from controlplane.billing.provider import BillingProvider
from controlplane.billing.stripe_provider import StripeProvider
from controlplane.errors import ConfigError
from controlplane.settings import BillingSettings


def provider_for(settings: BillingSettings) -> BillingProvider | None:
    """``None`` with ``none`` (super-admins set tiers by hand); the Stripe provider with ``stripe``."""
    if settings.provider == "none":
        return None
    if settings.provider == "stripe":
        return StripeProvider(settings)
    raise ConfigError(f"unknown billing provider {settings.provider!r}")
