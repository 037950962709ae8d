"""Dunning mail: the tenant's billing contact is told when a payment fails and when the tenant is suspended
for non-payment, with a link to pay.

``queue`` writes the mail into the outbox (``controlplane.mail.outbox``) on the connection and in the
transaction that stores the billing state it is about (the grace deadline, the non-payment flag), so the
mail exists exactly when that state committed; the outbox delivers it (or keeps it while SMTP is down).
Sent once per episode: when the grace period starts (``past_due``, with its deadline) and when the
deadline passes and the tenant is suspended.

**Recipient**: the address of the admin who signed the tenant up (``tenant_onboarding``), else the
provider customer's email; with neither, no mail (logged).

**The link to pay.** A Billing Portal session is short-lived (Stripe lets it expire if it is not visited
soon), so the mail does not carry one: it carries ``{public_url}/billing/portal?token=...``, which makes
a fresh portal session and redirects to it each time it is opened (``portal_url``). The token names the
tenant and an expiry (``LINK_TTL``) and is signed (HMAC-SHA256 with a key derived from
``CARDVAULT_SECRET_KEY``): no table, every mail's link stays valid until its own expiry, and it works while
the tenant is suspended (its API answers 423, the link is not part of it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import struct
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from controlplane.billing import repository as repo
from controlplane.billing.errors import PortalLinkInvalid
from controlplane.billing.provider import BillingProvider
from controlplane.db import AsyncConn
from controlplane.errors import ProviderUnavailable
from controlplane.mail import outbox
from controlplane.mail.models import MailKind
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.registry.models import Tenant

log = logging.getLogger(__name__)

#: How long the pay link of a dunning mail works.
LINK_TTL = timedelta(days=30)
_TOKEN = struct.Struct(">16sQ")  # tenant id, expiry (unix seconds)
_MAC_BYTES = 16


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def past_due_text(*, slug: str, deadline: datetime, link: str, link_expires: datetime) -> tuple[str, str]:
    subject = f"Payment failed for your CardVault workspace {slug}"
    body = (
        f"We could not collect the payment for the CardVault workspace '{slug}'.\n\n"
        f"The workspace keeps working until {_when(deadline)}. If the payment has not arrived by then, it is\n"
        f"suspended (your data is kept) until it does.\n\n"
        f"Update the payment method or pay the open invoice here:\n\n"
        f"    {link}\n\n"
        f"(the link works until {_when(link_expires)}).\n"
    )
    return subject, body


def suspended_text(*, slug: str, deadline: datetime, link: str, link_expires: datetime) -> tuple[str, str]:
    subject = f"Your CardVault workspace {slug} is suspended for non-payment"
    body = (
        f"The payment for the CardVault workspace '{slug}' was still missing at {_when(deadline)}, so the\n"
        f"workspace is suspended: its API answers 423 until the payment arrives. Your data is kept.\n\n"
        f"Pay the open invoice or update the payment method here:\n\n"
        f"    {link}\n\n"
        f"(the link works until {_when(link_expires)}). Once the payment is in, the workspace is resumed by\n"
        f"itself.\n"
    )
    return subject, body


def _link_key(secret_key: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"cardvault-billing", info=b"portal-links-v1")
    return hkdf.derive(secret_key.encode())


class PortalLinks:
    """Signed, expiring links to a tenant's Billing Portal (see the module docstring)."""

    def __init__(self, secret_key: str, base_url: str, previous_keys: tuple[str, ...] = ()) -> None:
        # Links are signed with the current secret key; links mailed before a key rotation
        # (``CARDVAULT_SECRET_KEY_PREVIOUS``) keep working until they expire.
        self._keys = [_link_key(key) for key in (secret_key, *previous_keys)]
        self._base_url = base_url

    def _mac(self, payload: bytes, key: bytes | None = None) -> bytes:
        return hmac.new(key or self._keys[0], payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def token(self, tenant_id: uuid.UUID, expires_at: datetime) -> str:
        payload = _TOKEN.pack(tenant_id.bytes, int(expires_at.timestamp()))
        return base64.urlsafe_b64encode(payload + self._mac(payload)).rstrip(b"=").decode()

    def link(self, tenant_id: uuid.UUID, expires_at: datetime) -> str:
        return f"{self._base_url}/billing/portal?{urlencode({'token': self.token(tenant_id, expires_at)})}"

    def tenant_of(self, token: str, *, now: datetime) -> uuid.UUID:
        """The tenant a token names; ``PortalLinkInvalid`` if it is forged, garbled or expired."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
            raw = b""  # only the one canonical spelling of a token is accepted: no garbled variant of it
        payload, mac = raw[: _TOKEN.size], raw[_TOKEN.size :]
        if len(raw) != _TOKEN.size + _MAC_BYTES or not any(
            hmac.compare_digest(mac, self._mac(payload, key)) for key in self._keys
        ):
            raise PortalLinkInvalid("this billing link is not valid")
        tenant, expires = _TOKEN.unpack(payload)
        if expires <= now.timestamp():
            raise PortalLinkInvalid("this billing link has expired; sign in and open billing instead")
        return uuid.UUID(bytes=tenant)


class Dunning:
    """Queues the dunning mails and opens the portal from their links."""

    def __init__(self, platform: Platform) -> None:
        self._p = platform
        security = platform.settings.security
        self.links = PortalLinks(security.secret_key, platform.settings.http.base_url, security.previous_secret_keys)

    async def contact(self, conn: AsyncConn, provider: BillingProvider, tenant_id: uuid.UUID) -> str | None:
        """The tenant's billing contact: its signup admin's address, else its customer's at the provider."""
        email = await repo.signup_email(conn, tenant_id)
        if email:
            return email
        record = await repo.get(conn, tenant_id)
        if record is None or record.customer_id is None:
            return None
        try:
            return await provider.customer_email(record.customer_id)
        except ProviderUnavailable as exc:  # the state change matters more than its mail
            log.warning("billing: no dunning mail for tenant %s: %s", tenant_id, exc.detail)
            return None

    async def queue(
        self,
        conn: AsyncConn,
        provider: BillingProvider,
        tenant: Tenant,
        kind: MailKind,
        *,
        deadline: datetime,
        now: datetime,
    ) -> int | None:
        """Queue one dunning mail in the caller's transaction; its outbox id (None: no contact)."""
        recipient = await self.contact(conn, provider, tenant.id)
        if recipient is None:
            log.warning("billing: tenant %s has no billing contact for its %s mail", tenant.slug, kind.value)
            return None
        expires = now + LINK_TTL
        text = past_due_text if kind is MailKind.PAYMENT_PAST_DUE else suspended_text
        subject, body = text(
            slug=tenant.slug, deadline=deadline, link=self.links.link(tenant.id, expires), link_expires=expires
        )
        return await outbox.enqueue(conn, tenant.id, kind, recipient, subject, body)

    async def portal_url(self, provider: BillingProvider, token: str, *, now: datetime) -> str:
        """A fresh Billing Portal session for the tenant a dunning link names (``PortalLinkInvalid``
        for a bad, expired or orphaned link)."""
        tenant_id = self.links.tenant_of(token, now=now)
        async with self._p.control.connection() as conn:
            tenant = await registry.get_by_id(conn, tenant_id)
            record = await repo.get(conn, tenant_id)
        if tenant is None or record is None or record.customer_id is None:
            raise PortalLinkInvalid("this billing link is not valid")
        return await provider.portal_url(
            customer_id=record.customer_id, return_url=f"{self._p.settings.http.base_url}/t/{tenant.slug}/billing"
        )
