"""``CARDVAULT_SMTP_URL`` and ``CARDVAULT_MAIL_FROM`` as the mail sender reads them; the mail links."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from controlplane.errors import ConfigError
from controlplane.mail import templates
from controlplane.mail.models import SmtpTarget
from controlplane.mail.sender import MailSender
from controlplane.settings import MailSettings


def test_smtp_urls_name_the_scheme_host_port_and_credentials() -> None:
    plain = SmtpTarget.parse("smtp://mail.example.com")
    assert (plain.scheme, plain.host, plain.port, plain.username) == ("smtp", "mail.example.com", 25, None)
    assert not plain.implicit_tls and not plain.starttls
    tls = SmtpTarget.parse("smtps://user%40example.com:p%3Ass@mail.example.com")
    assert tls.implicit_tls and tls.port == 465
    assert (tls.username, tls.password) == ("user@example.com", "p:ss")
    submission = SmtpTarget.parse("smtp+starttls://u:pw@[::1]:2525/")
    assert submission.starttls and submission.host == "::1" and submission.port == 2525
    # Credentials never show in logs.
    assert "pw" not in repr(submission) and str(submission) == "smtp+starttls://::1:2525"


@pytest.mark.parametrize(
    "url", ["http://mail.example.com", "smtp://", "smtp://host:99999", "smtp://host/path", "smtp://host?x=1", "host"]
)
def test_a_bad_smtp_url_stops_the_service(url: str) -> None:
    with pytest.raises(ConfigError, match="CARDVAULT_SMTP_URL"):
        SmtpTarget.parse(url)


def test_the_sender_checks_its_settings_when_it_is_made() -> None:
    with pytest.raises(ConfigError, match="CARDVAULT_SMTP_URL"):
        MailSender(None, MailSettings(smtp_url="ftp://x"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="CARDVAULT_MAIL_FROM"):
        MailSender(None, MailSettings(sender="nobody"))  # type: ignore[arg-type]
    assert MailSender(None, MailSettings()).target is None  # type: ignore[arg-type]


def test_links_carry_the_token_url_encoded() -> None:
    token = "abc-_DEF123+/="
    link = templates.invitation_link("https://cv.example", "acme", token)
    assert link.startswith("https://cv.example/t/acme/invitations/accept?token=")
    assert parse_qs(urlsplit(link).query)["token"] == [token]
    subject, body = templates.verification(
        base_url="https://cv.example",
        organisation="Acme",
        slug="acme",
        token=token,
        expires_at=datetime(2030, 1, 2, 3, 4, tzinfo=UTC),
    )
    assert "Confirm" in subject and templates.verification_link("https://cv.example", token) in body
    assert "2030-01-02 03:04 UTC" in body
