"""Registry types: slug rules, tiers and their quotas, names derived from the tenant id."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from controlplane.errors import InvalidSlug, InvalidTier
from controlplane.provisioning.catalog import TENANT_NAME_PATTERN
from controlplane.registry.models import (
    RESERVED_SLUGS,
    TIER_QUOTAS,
    QuotaType,
    Tenant,
    Tier,
    database_name_for,
    parse_tier,
    role_name_for,
    validate_slug,
)


@pytest.mark.parametrize("slug", ["abc", "acme", "acme-cards", "a1b", "x9-9", "a" * 63, "card-vault-2026"])
def test_valid_slugs_are_returned_unchanged(slug: str) -> None:
    assert validate_slug(slug) == slug


@pytest.mark.parametrize(
    "slug",
    [
        "",
        "ab",  # too short
        "a" * 64,  # too long
        "Acme",  # uppercase
        "ACME",
        "1acme",  # must start with a letter
        "-acme",
        "acme-",  # must not end with a hyphen
        "ac--me",  # consecutive hyphens
        "ac_me",
        "ac me",
        "acme.io",
        "café",
        "acme\n",  # a trailing newline passes re.match(...$)
        "\nacme",
        "acme\x00",
        "a'; drop database x;--",
        "acme;",
    ],
)
def test_invalid_slugs_are_refused(slug: str) -> None:
    with pytest.raises(InvalidSlug) as caught:
        validate_slug(slug)
    assert (caught.value.code, caught.value.status) == ("invalid_slug", 400)


@pytest.mark.parametrize("slug", sorted(RESERVED_SLUGS))
def test_reserved_slugs_are_refused(slug: str) -> None:
    with pytest.raises(InvalidSlug):
        validate_slug(slug)


def test_the_named_reserved_words_are_reserved() -> None:
    assert {"www", "api", "admin", "postgres", "template"} <= RESERVED_SLUGS
    with pytest.raises(InvalidSlug, match="reserved"):
        validate_slug("www")


@pytest.mark.parametrize("value", [None, 42, b"acme"])
def test_non_string_slugs_are_refused(value: object) -> None:
    with pytest.raises(InvalidSlug):
        validate_slug(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("tier", list(Tier))
def test_parse_tier_accepts_each_tier(tier: Tier) -> None:
    assert parse_tier(tier.value) is tier


@pytest.mark.parametrize("value", ["", "gold", "Starter", "STARTER", " starter", None])
def test_parse_tier_refuses_anything_else(value: str) -> None:
    with pytest.raises(InvalidTier) as caught:
        parse_tier(value)
    assert (caught.value.code, caught.value.status) == ("invalid_tier", 400)
    assert "starter, professional, enterprise" in caught.value.detail


def test_every_tier_limits_every_quota() -> None:
    assert set(TIER_QUOTAS) == set(Tier)
    for limits in TIER_QUOTAS.values():
        assert set(limits) == set(QuotaType)


def test_tier_quotas_are_the_documented_ones() -> None:
    users, cards = QuotaType.USERS, QuotaType.CARDS
    assert (TIER_QUOTAS[Tier.STARTER][users], TIER_QUOTAS[Tier.STARTER][cards]) == (1, 1000)
    assert (TIER_QUOTAS[Tier.PROFESSIONAL][users], TIER_QUOTAS[Tier.PROFESSIONAL][cards]) == (10, 50_000)
    assert (TIER_QUOTAS[Tier.ENTERPRISE][users], TIER_QUOTAS[Tier.ENTERPRISE][cards]) == (None, None)
    for tier in Tier:
        for metered in (QuotaType.STORAGE_BYTES, QuotaType.API_CALLS_PER_HOUR):
            limit = TIER_QUOTAS[tier][metered]
            assert limit is not None and limit > 0


def test_higher_tiers_never_allow_less() -> None:
    order = [Tier.STARTER, Tier.PROFESSIONAL, Tier.ENTERPRISE]
    for quota in QuotaType:
        limits = [TIER_QUOTAS[tier][quota] for tier in order]
        as_numbers = [float("inf") if limit is None else limit for limit in limits]
        assert as_numbers == sorted(as_numbers), (quota, limits)


def test_database_and_role_names_derive_from_the_id() -> None:
    tenant_id = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")
    assert database_name_for(tenant_id) == "t_123456789abcdef0123456789abcdef0"
    assert role_name_for(tenant_id) == database_name_for(tenant_id)
    for _ in range(20):
        name = database_name_for(uuid.uuid4())
        assert TENANT_NAME_PATTERN.fullmatch(name)
        assert len(name.encode()) <= 63  # NAMEDATALEN - 1: PostgreSQL would truncate longer names


def test_tenant_records_carry_no_credentials() -> None:
    fields = set(Tenant.__struct_fields__)
    assert not {f for f in fields if "password" in f or "secret" in f or "dsn" in f}
    assert {"database_name", "role_name", "slug", "status"} <= fields
    assert msgspec.json.schema(Tenant)  # serialisable as an API type
