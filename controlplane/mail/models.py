"""Mail types: what kinds of mail the service sends, an outbox row on its way out, where SMTP is."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from urllib.parse import unquote, urlsplit

import msgspec

from controlplane.errors import ConfigError


class MailKind(enum.StrEnum):
    """What a mail is for (``mail_outbox.kind``)."""

    #: The link that confirms the address of a tenant's first admin after a signup.
    VERIFY_EMAIL = "verify_email"
    #: The link with which an invited user sets their password.
    INVITATION = "invitation"
    #: A payment failed: the grace deadline and a Billing Portal link (billing's dunning).
    PAYMENT_PAST_DUE = "payment_past_due"
    #: The grace period ended unpaid: the tenant is suspended; the Billing Portal link still works.
    PAYMENT_SUSPENDED = "payment_suspended"
    #: The workspace finder's answer: the workspaces an address belongs to, with sign-in links.
    WORKSPACE_LIST = "workspace_list"


class OutgoingMail(msgspec.Struct, frozen=True, kw_only=True):
    """One claimed outbox row to deliver."""

    id: int
    tenant_id: uuid.UUID | None
    kind: str
    recipient: str
    subject: str
    body: str
    attempts: int


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """What one delivery round did (the job's outcome line)."""

    sent: int = 0
    #: Not accepted now; tried again later (SMTP down, a temporary refusal).
    deferred: int = 0
    #: Refused for good by the server (e.g. an unknown mailbox); never tried again.
    failed: int = 0

    def line(self) -> str:
        return f"{self.sent} mail(s) sent, {self.deferred} deferred, {self.failed} refused for good"


#: Ports by scheme: plain SMTP, implicit TLS (``smtps``), STARTTLS on the submission port.
_SCHEMES = {"smtp": 25, "smtps": 465, "smtp+starttls": 587}


@dataclasses.dataclass(frozen=True)
class SmtpTarget:
    """The SMTP server of ``CARDVAULT_SMTP_URL``: ``smtp://[user:password@]host[:port]`` (plain),
    ``smtp+starttls://...`` (STARTTLS, port 587 by default) or ``smtps://...`` (TLS from the start, 465)."""

    scheme: str
    host: str
    port: int
    username: str | None = dataclasses.field(default=None, repr=False)
    password: str | None = dataclasses.field(default=None, repr=False)

    @property
    def implicit_tls(self) -> bool:
        return self.scheme == "smtps"

    @property
    def starttls(self) -> bool:
        return self.scheme == "smtp+starttls"

    def __str__(self) -> str:
        """The target without its credentials (for logs)."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        """The target ``url`` names; ``ConfigError`` saying what is wrong otherwise."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"CARDVAULT_SMTP_URL is not a valid URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ConfigError(f"CARDVAULT_SMTP_URL must start with {', '.join(f'{s}://' for s in _SCHEMES)}")
        if not parts.hostname:
            raise ConfigError("CARDVAULT_SMTP_URL names no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError("CARDVAULT_SMTP_URL takes no path, query or fragment")
        return cls(
            scheme=scheme,
            host=parts.hostname,
            port=port or _SCHEMES[scheme],
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
        )
