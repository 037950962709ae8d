"""controlplane.routing.resolver: which tenant a request names, and which status is served how.

``resolve_slug`` is checked on every combination of path, Host and ``X-Tenant`` signals; ``resolve``
against a registry stand-in that is a plain dict (no mocks: the real function, a real lookup object).
"""

from __future__ import annotations

import itertools
import uuid

import pytest

from controlplane.context import TenantContext
from controlplane.errors import CardVaultError
from controlplane.registry.models import TenantStatus, Tier
from controlplane.routing.errors import (
    TenantConflict,
    TenantDeleted,
    TenantNotFound,
    TenantRequired,
    TenantSuspended,
    TenantUnavailable,
)
from controlplane.routing.resolver import host_slug, resolve, resolve_slug

BASE = "cardvault.test"


# -- host_slug ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("acme.cardvault.test", "acme"),
        ("acme.cardvault.test:8000", "acme"),
        ("ACME.CardVault.Test", "acme"),
        ("Acme.CARDVAULT.test:443", "acme"),
        ("acme.cardvault.test.", "acme"),  # fully qualified
        ("  acme.cardvault.test  ", "acme"),
        ("cardvault.test", None),  # the base domain itself
        ("cardvault.test:8000", None),
        ("www.cardvault.test", None),  # reserved: the platform's own hosts
        ("api.cardvault.test", None),
        ("a.b.cardvault.test", None),  # deeper subdomain
        ("acmecardvault.test", None),  # not a subdomain, just a suffix
        ("acme.cardvault.test.evil.example", None),
        ("example.com", None),
        ("localhost", None),
        ("localhost:8000", None),
        ("127.0.0.1:8000", None),
        ("[::1]:8000", None),
        ("acme.cardvault.test:http", None),  # not a port
        (".cardvault.test", None),
        ("", None),
        (None, None),
    ],
)
def test_host_slug(host: str | None, expected: str | None) -> None:
    assert host_slug(host, BASE) == expected


@pytest.mark.parametrize("base", [None, "", "  ", ".cardvault.test", "CARDVAULT.TEST", "cardvault.test:8000"])
def test_host_slug_base_domain_forms(base: str | None) -> None:
    expected = "acme" if base and base.strip() else None
    assert host_slug("acme.cardvault.test", base) == expected


# -- resolve_slug: every combination of signals --------------------------------------------------

#: Values a signal can take: absent, naming acme, naming globex.
_PATHS = {None: None, "acme": "acme", "globex": "globex"}
_HOSTS = {"cardvault.test": None, "acme.cardvault.test:8000": "acme", "GLOBEX.cardvault.test": "globex"}
_HEADERS = {None: None, "acme": "acme", "globex": "globex"}


@pytest.mark.parametrize(("path", "host", "header"), list(itertools.product(_PATHS, _HOSTS, _HEADERS)))
def test_resolve_slug_combinations(path: str | None, host: str, header: str | None) -> None:
    named = {v for v in (_PATHS[path], _HOSTS[host], _HEADERS[header]) if v is not None}
    if not named:
        with pytest.raises(TenantRequired) as required:
            resolve_slug(path, host, header, BASE)
        assert (required.value.status, required.value.code) == (400, "tenant_required")
    elif len(named) > 1:
        with pytest.raises(TenantConflict) as conflict:
            resolve_slug(path, host, header, BASE)
        assert (conflict.value.status, conflict.value.code) == (400, "tenant_conflict")
        assert set(conflict.value.extra["signals"].values()) == named
    else:
        assert resolve_slug(path, host, header, BASE) == named.pop()


@pytest.mark.parametrize(
    ("path", "host", "header", "expected"),
    [
        ("acme", None, None, "acme"),
        (None, None, "acme", "acme"),
        (None, None, "  acme ", "acme"),
        (None, "acme.cardvault.test", None, "acme"),
        ("acme", "acme.cardvault.test", "acme", "acme"),  # the same tenant three times
        ("acme", "www.cardvault.test", None, "acme"),  # reserved subdomain: no signal
        (None, "api.cardvault.test", "acme", "acme"),
        ("acme", "example.com", "acme", "acme"),  # unrelated host: no signal
        ("acme", "", "", "acme"),  # empty values are absent
        ("acme", "   ", "   ", "acme"),
        ("ACME", None, None, "ACME"),  # path and header are taken as given (resolve then says 404)
    ],
)
def test_resolve_slug_accepts(path: str | None, host: str | None, header: str | None, expected: str) -> None:
    assert resolve_slug(path, host, header, BASE) == expected


@pytest.mark.parametrize(
    ("path", "host", "header"),
    [
        ("acme", "globex.cardvault.test", None),
        ("acme", None, "globex"),
        (None, "acme.cardvault.test", "globex"),
        ("acme", "acme.cardvault.test", "globex"),
        ("ACME", "acme.cardvault.test", None),  # the host is lowercased, the path is not
        ("acme", None, "ACME"),
    ],
)
def test_resolve_slug_conflicts(path: str | None, host: str | None, header: str | None) -> None:
    with pytest.raises(TenantConflict):
        resolve_slug(path, host, header, BASE)


@pytest.mark.parametrize(
    ("path", "host", "header", "base"),
    [
        (None, None, None, BASE),
        ("", "", "", BASE),
        (None, "cardvault.test", None, BASE),
        (None, "acme.cardvault.test", None, None),  # no base domain configured: hosts say nothing
        (None, "acme.cardvault.test", None, ""),
        (None, "localhost:8000", "  ", BASE),
    ],
)
def test_resolve_slug_requires_a_tenant(
    path: str | None, host: str | None, header: str | None, base: str | None
) -> None:
    with pytest.raises(TenantRequired):
        resolve_slug(path, host, header, base)


# -- resolve: status mapping ---------------------------------------------------------------------


class DictLookup:
    """A registry that is a dict; counts lookups so we can see which slugs never reach it."""

    def __init__(self, *tenants: TenantContext) -> None:
        self.tenants = {t.slug: t for t in tenants}
        self.lookups: list[str] = []

    async def get_by_slug(self, slug: str) -> TenantContext | None:
        self.lookups.append(slug)
        return self.tenants.get(slug)


def context(slug: str, status: TenantStatus) -> TenantContext:
    tenant_id = uuid.uuid4()
    return TenantContext(
        id=tenant_id,
        slug=slug,
        status=status,
        tier=Tier.STARTER,
        server_id=uuid.uuid4(),
        database_name=f"t_{tenant_id.hex}",
        role_name=f"t_{tenant_id.hex}",
    )


async def test_resolve_active() -> None:
    acme = context("acme", TenantStatus.ACTIVE)
    assert await resolve(DictLookup(acme), "acme") is acme


@pytest.mark.parametrize(
    ("status", "error", "http_status", "code"),
    [
        (TenantStatus.SUSPENDED, TenantSuspended, 423, "tenant_suspended"),
        (TenantStatus.DELETING, TenantDeleted, 410, "tenant_deleted"),
        (TenantStatus.PROVISIONING, TenantUnavailable, 503, "tenant_unavailable"),
        (TenantStatus.BROKEN, TenantUnavailable, 503, "tenant_unavailable"),
    ],
)
async def test_resolve_refuses_by_status(
    status: TenantStatus, error: type[CardVaultError], http_status: int, code: str
) -> None:
    with pytest.raises(error) as raised:
        await resolve(DictLookup(context("acme", status)), "acme")
    assert (raised.value.status, raised.value.code) == (http_status, code)
    assert raised.value.to_json()["slug"] == "acme"
    if isinstance(raised.value, TenantUnavailable):
        assert raised.value.retry_after > 0
        assert raised.value.to_json()["retry_after"] == raised.value.retry_after


async def test_resolve_unknown() -> None:
    lookup = DictLookup(context("acme", TenantStatus.ACTIVE))
    with pytest.raises(TenantNotFound) as raised:
        await resolve(lookup, "globex")
    assert (raised.value.status, raised.value.code) == (404, "tenant_not_found")
    assert lookup.lookups == ["globex"]


@pytest.mark.parametrize(
    "slug", ["ACME", "a", "ab", "-acme", "acme-", "ac_me", "acme.x", "x" * 64, "ac me", "é-acme", "acme\n"]
)
async def test_resolve_impossible_slug_is_not_looked_up(slug: str) -> None:
    lookup = DictLookup()
    with pytest.raises(TenantNotFound):
        await resolve(lookup, slug)
    assert lookup.lookups == []
