"""Registry types: tenant status, tiers and their quotas, the tenant record."""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

import msgspec

from controlplane.errors import InvalidSlug, InvalidTier

SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,61}[a-z0-9]$")

#: Slugs that would collide with hostnames, API paths or would mislead users.
RESERVED_SLUGS = frozenset(
    {
        "admin", "administrator", "api", "app", "apps", "assets", "auth", "billing", "blog", "cdn",
        "dashboard", "dev", "docs", "ftp", "health", "help", "imap", "login", "logout", "mail", "metrics",
        "mx", "ns1", "ns2", "pop", "postgres", "root", "schema", "smtp", "static", "staging", "status",
        "support", "system", "template", "test", "www",
    }
)  # fmt: skip


class TenantStatus(enum.StrEnum):
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    DELETING = "deleting"
    #: The registry row points at a database that is gone; an operator must restore or purge.
    BROKEN = "broken"


class Tier(enum.StrEnum):
    STARTER = "starter"
    PROFESSIONAL = "professional"
    ENTERPRISE = "enterprise"


class QuotaType(enum.StrEnum):
    USERS = "users"
    CARDS = "cards"
    STORAGE_BYTES = "storage_bytes"
    API_CALLS_PER_HOUR = "api_calls_per_hour"


_GIB = 1024**3

#: Limits per tier; None means unlimited.
TIER_QUOTAS: dict[Tier, dict[QuotaType, int | None]] = {
    Tier.STARTER: {
        QuotaType.USERS: 1,
        QuotaType.CARDS: 1_000,
        QuotaType.STORAGE_BYTES: 1 * _GIB,
        QuotaType.API_CALLS_PER_HOUR: 1_000,
    },
    Tier.PROFESSIONAL: {
        QuotaType.USERS: 10,
        QuotaType.CARDS: 50_000,
        QuotaType.STORAGE_BYTES: 25 * _GIB,
        QuotaType.API_CALLS_PER_HOUR: 10_000,
    },
    Tier.ENTERPRISE: {
        QuotaType.USERS: None,
        QuotaType.CARDS: None,
        QuotaType.STORAGE_BYTES: 500 * _GIB,
        QuotaType.API_CALLS_PER_HOUR: 100_000,
    },
}


class TierPrice(msgspec.Struct, frozen=True):
    """What a tier costs (in the smallest unit of ``PRICE_CURRENCY``); 0 is free."""

    monthly: int
    yearly: int


#: The currency of every price (ISO 4217, lower case as Stripe writes it).
PRICE_CURRENCY = "usd"

#: Price per tier: with ``TIER_QUOTAS`` the one source of what a tier is (billing sync reads both).
TIER_PRICES: dict[Tier, TierPrice] = {
    Tier.STARTER: TierPrice(monthly=0, yearly=0),
    Tier.PROFESSIONAL: TierPrice(monthly=2_900, yearly=29_000),
    Tier.ENTERPRISE: TierPrice(monthly=29_900, yearly=299_000),
}


class Overage(enum.StrEnum):
    """What is billed beyond a plan's quota, and its metered unit."""

    CARDS = "cards"  # per card over the quota
    STORAGE_GB = "storage_gb"  # per started GiB over the quota
    API_CALLS = "api_calls"  # per call over the hourly quota


#: Price per overage unit, in the smallest currency unit (cents; fractions allowed: Stripe's
#: ``unit_amount_decimal``), billed monthly through one metered price per meter. Metering reports one
#: quantity per UTC day that the meter sums over the month, so levels are billed per unit-day:
#: cards 0.01 cent per card over the plan per day (1,000 extra cards for 30 days: $3.00), storage
#: 2 cents per started GiB over the plan per day (about 60 cents per GiB-month), API calls 0.01 cent per
#: call over the hourly limit ($1.00 per 10,000 calls).
OVERAGE_UNIT_PRICES: dict[Overage, str] = {
    Overage.CARDS: "0.01",
    Overage.STORAGE_GB: "2",
    Overage.API_CALLS: "0.01",
}


#: A tenant's effective limit for a quota (None: unlimited), looked up when called: reads never ask.
LimitLookup = Callable[[QuotaType], Awaitable[int | None]]


def fixed_limits(limits: Mapping[QuotaType, int | None]) -> LimitLookup:
    """A ``LimitLookup`` answering from a mapping (a missing quota is unlimited)."""

    async def limit_of(quota: QuotaType) -> int | None:
        return limits.get(quota)

    return limit_of


def validate_slug(slug: str) -> str:
    """``slug`` if it is acceptable as a tenant slug, else ``InvalidSlug`` saying why."""
    if not isinstance(slug, str) or not SLUG_PATTERN.fullmatch(slug):  # match() would accept 'abc\n'
        raise InvalidSlug(
            "slug must be 3-63 characters of lowercase letters, digits and hyphens, "
            "start with a letter and not end with a hyphen",
            slug=slug if isinstance(slug, str) else None,
        )
    if "--" in slug:
        raise InvalidSlug("slug must not contain consecutive hyphens", slug=slug)
    if slug in RESERVED_SLUGS:
        raise InvalidSlug(f"slug {slug!r} is reserved", slug=slug)
    return slug


def parse_tier(value: str) -> Tier:
    try:
        return Tier(value)
    except ValueError:
        raise InvalidTier(
            f"unknown tier {value!r}; choose one of {', '.join(t.value for t in Tier)}", tier=value
        ) from None


def database_name_for(tenant_id: uuid.UUID) -> str:
    """The tenant's database name: derived from its id, never from user input."""
    return f"t_{tenant_id.hex}"


def role_name_for(tenant_id: uuid.UUID) -> str:
    """The tenant's login role: derived from its id, never from user input."""
    return f"t_{tenant_id.hex}"


class Tenant(msgspec.Struct, kw_only=True):
    """A tenant as the registry knows it (credentials are kept out of this type)."""

    id: uuid.UUID
    slug: str
    name: str
    status: TenantStatus
    subscription_tier: Tier
    max_users: int | None
    server_id: uuid.UUID
    server_name: str
    database_name: str
    role_name: str
    schema_revision: str | None
    migration_error: str | None
    created_at: datetime
    updated_at: datetime
    suspended_at: datetime | None
    delete_after: datetime | None


class Quota(msgspec.Struct):
    quota_type: QuotaType
    quota_limit: int | None
    current_usage: int
