"""Onboarding API types: the signup request and its answer, slug availability, verification, checklist.

The signup body forbids unknown fields and bounds every string; what each field must be (slug rules,
reserved slugs, tiers, the password policy) is checked by the service, which answers with the same
error codes as everywhere else (``invalid_slug``, ``invalid_tier``, ``validation_failed``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from controlplane.auth.logins import TokenPair

_Bounded = Annotated[str, msgspec.Meta(max_length=1024)]


class SignupRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: The organisation's name (the tenant's display name).
    name: Annotated[str, msgspec.Meta(max_length=200)]
    slug: Annotated[str, msgspec.Meta(max_length=100)]
    #: Email and password of the first tenant_admin.
    email: Annotated[str, msgspec.Meta(max_length=254)]
    password: _Bounded
    tier: Annotated[str, msgspec.Meta(max_length=32)] = "starter"
    #: Billing interval of a paid tier's checkout (ignored without billing).
    interval: Literal["month", "year"] = "month"


class SignupTenant(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    slug: str
    name: str
    #: The tier the tenant has now: the requested one, or ``starter`` until a paid checkout completes.
    tier: str
    status: str


class SignupResult(msgspec.Struct, frozen=True, kw_only=True):
    tenant: SignupTenant
    #: Tokens of the new tenant_admin: the first API call needs no login.
    tokens: TokenPair
    requested_tier: str
    #: Where to pay for a paid tier (billing on); the tier follows once the provider reports payment.
    checkout_url: str | None = None
    #: The verification mail is in the outbox (sent by the mail job; a signup never waits for SMTP).
    verification_mail: Literal["queued"] = "queued"


class SlugAvailability(msgspec.Struct, frozen=True, kw_only=True):
    slug: str
    available: bool
    #: Why not: ``invalid``, ``reserved`` or ``taken``; None when available.
    reason: Literal["invalid", "reserved", "taken"] | None = None
    detail: str | None = None


class Verified(msgspec.Struct, frozen=True, kw_only=True):
    slug: str
    email: str
    verified_at: datetime


class OnboardingChecklist(msgspec.Struct, frozen=True, kw_only=True):
    """What a new tenant has done so far."""

    #: The first admin confirmed their address (tenants a super-admin created have nothing to confirm: false).
    email_verified: bool
    #: A paid tier, or a subscription at the billing provider.
    plan_chosen: bool
    #: Any card in the tenant's database.
    first_card: bool
    #: More than one user, or any invitation.
    first_invited_user: bool
    #: All four done.
    complete: bool
