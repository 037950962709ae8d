"""Signed Billing Portal links of dunning mails: forged, garbled and expired tokens are refused, and a link
signed before a secret-key rotation keeps working while the old key is configured as a previous key."""

from __future__ import annotations

import string
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from controlplane.billing.dunning import PortalLinks
from controlplane.billing.errors import PortalLinkInvalid

OLD = "the old secret key of this deployment, 32+ chars"
NEW = "the new secret key of this deployment, 32+ chars"
NOW = datetime(2031, 5, 12, 9, 30, tzinfo=UTC)


def test_a_link_names_its_tenant_until_it_expires() -> None:
    links = PortalLinks(NEW, "http://cv.test")
    tenant = uuid.uuid4()
    token = links.token(tenant, NOW + timedelta(days=7))
    assert links.tenant_of(token, now=NOW) == tenant
    assert links.link(tenant, NOW).startswith("http://cv.test/billing/portal?token=")
    with pytest.raises(PortalLinkInvalid, match="expired"):
        links.tenant_of(token, now=NOW + timedelta(days=7))


def test_forged_and_garbled_tokens_are_refused() -> None:
    links = PortalLinks(NEW, "http://cv.test")
    token = links.token(uuid.uuid4(), NOW + timedelta(days=1))
    forged = PortalLinks("somebody else's secret key, also 32+ chars", "http://x").token(uuid.uuid4(), NOW)
    # Another spelling of the same bytes: the last character's unused low bits set differently.
    padding_bits = 6 - (len(token) * 6) % 8 if (len(token) * 6) % 8 else 0
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    same_bytes = token[:-1] + alphabet[alphabet.index(token[-1]) ^ ((1 << padding_bits) - 1)]
    assert padding_bits and same_bytes != token
    other_last = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (forged, token[:-2], token + "A", "", "%%%", same_bytes, other_last):
        with pytest.raises(PortalLinkInvalid):
            links.tenant_of(bad, now=NOW)


def test_links_signed_before_a_key_rotation_work_while_the_old_key_is_a_previous_key() -> None:
    tenant = uuid.uuid4()
    mailed = PortalLinks(OLD, "http://cv.test").token(tenant, NOW + timedelta(days=7))
    rotated = PortalLinks(NEW, "http://cv.test", (OLD,))
    assert rotated.tenant_of(mailed, now=NOW) == tenant
    assert PortalLinks(NEW, "http://cv.test").token(tenant, NOW) == rotated.token(tenant, NOW)  # signs with NEW
    with pytest.raises(PortalLinkInvalid):
        PortalLinks(NEW, "http://cv.test").tenant_of(mailed, now=NOW)  # the old key removed: refused
