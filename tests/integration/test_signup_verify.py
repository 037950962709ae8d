"""Email verification: the link in the mail a real SMTP server received is followed; a used, expired,
unknown or malformed link is refused with a clear error."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from controlplane.onboarding.errors import VerificationExpired
from controlplane.settings import Settings
from tests.integration.signup_support import (
    PUBLIC_URL,
    bearer_of,
    link_in,
    local_part,
    onboarding_rows,
    onboarding_settings,
    running,
    sender,
    sign_up,
    signups,
    token_of,
)
from tests.integration.tenant_support import execute
from tests.smtp_harness import SmtpServer


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code, body
    return body


async def test_following_the_link_in_the_received_mail_verifies_the_address(
    settings: Settings, smtp_server: SmtpServer
) -> None:
    async with running(onboarding_settings(settings, smtp_url=smtp_server.url)) as client:
        body = await sign_up(client, "verify-me", email="Owner@Verify.test")
        checklist = await client.get("/t/verify-me/api/onboarding", headers=bearer_of(body))
        assert checklist.json()["email_verified"] is False

        assert (await sender(client).deliver()).sent == 1
        (mail,) = await smtp_server.wait_for(1)
        assert mail.rcpt_tos == ["Owner@Verify.test"] and "verify-me" in mail.body
        link = link_in(mail.body, "/signup/verify")
        assert link.startswith(f"{PUBLIC_URL}/signup/verify?token=")

        verified = await client.get(local_part(link))
        assert verified.status_code == 200, verified.text
        answer = verified.json()
        assert answer["slug"] == "verify-me" and answer["email"] == "Owner@Verify.test" and answer["verified_at"]
        checklist = await client.get("/t/verify-me/api/onboarding", headers=bearer_of(body))
        assert checklist.json()["email_verified"] is True

        # The link works once; then it says so.
        _error(await client.get(local_part(link)), 400, "verification_used")
        # Anything else is unknown (a malformed or absurdly long one is a request error).
        token = token_of(link)
        for other in (token[:-1] + ("A" if token[-1] != "A" else "B"), "A" * 43, "short", "not a token!"):
            _error(await client.get("/signup/verify", params={"token": other}), 404, "verification_not_found")
        _error(await client.get("/signup/verify", params={"token": "x" * 300}), 400, "validation_failed")
        _error(await client.get("/signup/verify"), 400, "validation_failed")
    (row,) = await onboarding_rows(settings.database.url)
    assert row["email_verified_at"] is not None


async def test_an_expired_link_is_refused_and_verifies_nothing(settings: Settings, smtp_server: SmtpServer) -> None:
    control = settings.database.url
    async with running(onboarding_settings(settings, smtp_url=smtp_server.url, verify_ttl=3600)) as client:
        await sign_up(client, "too-late")
        await sender(client).deliver()
        (mail,) = await smtp_server.wait_for(1)
        token = token_of(link_in(mail.body, "/signup/verify"))
        (row,) = await onboarding_rows(control)
        assert row["verify_expires_at"] - row["created_at"] < timedelta(seconds=3600 + 60)

        # Time moved past the expiry (the domain function takes ``now``) ...
        with pytest.raises(VerificationExpired):
            await signups(client).verify(token, now=row["verify_expires_at"] + timedelta(seconds=1))
        # ... and over HTTP, once the expiry has passed.
        await execute(control, "UPDATE tenant_onboarding SET verify_expires_at = now() - interval '1 second'")
        _error(await client.get("/signup/verify", params={"token": token}), 400, "verification_expired")
    (row,) = await onboarding_rows(control)
    assert row["email_verified_at"] is None
