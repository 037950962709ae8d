"""Errors of billing (codes in the README's list); the extras named below are part of the API contract.

The provider's own errors (``ProviderUnavailable`` 503, ``InvalidSignature`` 400) live in
``controlplane.errors`` next to the other infrastructure errors.
"""

from __future__ import annotations

from typing import Any

from controlplane.errors import Conflict, NotFound


class BillingDisabled(Conflict):
    """``CARDVAULT_BILLING=none``: tiers are set by super-admins, there is nothing to pay for."""

    code = "billing_disabled"


class AlreadySubscribed(Conflict):
    """A checkout for a tenant whose subscription is still running (change the plan instead)."""

    code = "already_subscribed"


class NoSubscription(Conflict):
    """A plan change for a tenant without a running subscription (start with a checkout)."""

    code = "no_subscription"


class PriceNotSynced(Conflict):
    """The plan, or the overage prices every paid plan carries, have no price at the provider yet
    (``cardvault billing sync`` makes them); extras ``tier``, ``interval`` (for a plan's price)."""

    code = "price_not_synced"


class OverQuota(Conflict):
    """The target tier is below what the tenant uses; extra ``exceeds``: ``[{quota, usage, limit}, ...]``."""

    code = "over_quota"

    def __init__(self, detail: str, *, exceeds: list[dict[str, Any]], **extra: Any) -> None:
        super().__init__(detail, exceeds=exceeds, **extra)
        self.exceeds = exceeds


class PortalLinkInvalid(NotFound):
    """The billing link of a dunning mail is forged, garbled, expired, or its tenant is gone."""

    code = "portal_link_invalid"
