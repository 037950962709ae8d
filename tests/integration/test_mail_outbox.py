"""The mail outbox over a real SMTP server (aiosmtpd): a signup never waits for mail, SMTP down keeps the
mail and retries with backoff, the scheduled job delivers it, a permanent refusal is not retried,
concurrent deliverers never send one mail twice, no SMTP URL keeps everything queued."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from controlplane.mail import outbox
from controlplane.mail.models import MailKind
from controlplane.mail.sender import BACKOFF_BASE, MailSender, backoff
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.settings import MailSettings, Settings
from tests.conftest import eventually
from tests.integration.signup_support import (
    PUBLIC_URL,
    link_in,
    onboarding_settings,
    outbox_rows,
    running,
    sender,
    sign_up,
)
from tests.smtp_harness import SmtpServer


async def test_smtp_down_keeps_the_signup_mail_and_it_goes_out_once_smtp_is_up(
    settings: Settings, smtp_port: int
) -> None:
    control = settings.database.url
    # The job runs every 0.2 s against a port where nothing listens yet.
    configured = onboarding_settings(settings, smtp_url=f"smtp://127.0.0.1:{smtp_port}", mail_interval=0.2)
    async with running(configured) as client:
        body = await sign_up(client, "mail-down")
        assert body["verification_mail"] == "queued"

        async def deferred() -> bool:
            rows = await outbox_rows(control)
            return bool(rows and rows[0]["attempts"] >= 1)

        await eventually(deferred, "the delivery job tried and deferred the mail")
        (row,) = await outbox_rows(control)
        assert row["sent_at"] is None and row["failed_at"] is None and "cannot reach" in row["last_error"]
        # Backed off: not due again before 30 s (the job keeps running meanwhile and leaves it alone).
        assert row["send_after"] - datetime.now(UTC) > timedelta(seconds=BACKOFF_BASE - 5)
        attempts = row["attempts"]
        await asyncio.sleep(0.5)
        assert (await outbox_rows(control))[0]["attempts"] == attempts

        server = SmtpServer(smtp_port)
        server.start()
        try:
            # Time is moved, not waited for: the round the job would run once the backoff is over.
            delivered = await sender(client).deliver(now=row["send_after"] + timedelta(seconds=1))
            assert delivered.sent == 1
            (received,) = await server.wait_for(1)
        finally:
            server.stop()
    assert received.rcpt_tos == ["founder@mail-down.test"]
    assert link_in(received.body, "/signup/verify").startswith(PUBLIC_URL)
    (row,) = await outbox_rows(control)
    assert row["sent_at"] is not None and row["body"] == "", "a sent mail's body (with its token) is emptied"


async def test_the_scheduled_job_delivers_without_being_asked(settings: Settings, smtp_server: SmtpServer) -> None:
    async with running(onboarding_settings(settings, smtp_url=smtp_server.url, mail_interval=0.1)) as client:
        await sign_up(client, "mail-job")
        (received,) = await smtp_server.wait_for(1)
    assert received.subject == "Confirm your email address for CardVault"
    assert received.message["From"] == MailSettings().sender and received.message["To"] == "founder@mail-job.test"
    assert received.message["Message-ID"] and received.message["Auto-Submitted"] == "auto-generated"


def _sender(platform: Platform, url: str, *, batch: int = 50) -> MailSender:
    return MailSender(platform.control, MailSettings(smtp_url=url), batch=batch)


async def _queue(platform: Platform, recipients: list[str]) -> list[int]:
    async with platform.control.connection() as conn, conn.transaction():
        return [
            await outbox.enqueue(conn, None, MailKind.INVITATION, to, f"hello {to}", f"body for {to}")
            for to in recipients
        ]


async def test_a_permanent_refusal_is_not_retried_and_does_not_hold_up_the_others(
    platform: Platform, smtp_server: SmtpServer
) -> None:
    smtp_server.refuse.add("nobody@x.test")
    await _queue(platform, ["one@x.test", "nobody@x.test", "two@x.test"])
    delivery = await _sender(platform, smtp_server.url).deliver()
    assert (delivery.sent, delivery.deferred, delivery.failed) == (2, 0, 1)
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == ["one@x.test", "two@x.test"]
    rows = {r["recipient"]: r for r in await outbox_rows(platform.settings.database.url)}
    refused = rows["nobody@x.test"]
    assert refused["failed_at"] is not None and refused["sent_at"] is None and refused["body"] == ""
    assert "550" in refused["last_error"] and refused["attempts"] == 1
    # Never again, however late.
    later = await _sender(platform, smtp_server.url).deliver(now=datetime.now(UTC) + timedelta(days=2))
    assert later.sent + later.failed + later.deferred == 0


async def test_concurrent_deliverers_send_each_mail_exactly_once(platform: Platform, smtp_server: SmtpServer) -> None:
    recipients = [f"r{i}@x.test" for i in range(30)]
    await _queue(platform, recipients)
    senders = [_sender(platform, smtp_server.url, batch=4) for _ in range(4)]

    async def drain(mail: MailSender) -> int:
        total = 0
        while (round_ := await mail.deliver()).sent:
            total += round_.sent
        return total

    counts = await asyncio.gather(*(drain(s) for s in senders))
    assert sum(counts) == 30
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == sorted(recipients)
    rows = await outbox_rows(platform.settings.database.url)
    assert all(r["sent_at"] is not None for r in rows)


async def test_without_an_smtp_url_mail_stays_queued_and_it_is_said_once(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    await _queue(platform, ["queued@x.test"])
    mail = _sender(platform, "")
    assert mail.target is None
    with caplog.at_level(logging.WARNING, logger="controlplane.mail.sender"):
        assert await mail.job() == "no SMTP URL: 1 mail(s) kept in the outbox"
        assert await mail.job() == "no SMTP URL: 1 mail(s) kept in the outbox"
    assert [r.message for r in caplog.records].count(
        "CARDVAULT_SMTP_URL is not set: mail stays in the outbox (1 pending)"
    ) == 1
    (row,) = await outbox_rows(platform.settings.database.url)
    assert row["sent_at"] is None and row["attempts"] == 0


def test_backoff_doubles_from_30_seconds_up_to_an_hour() -> None:
    assert [backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert backoff(8).total_seconds() == 3600 and backoff(10_000).total_seconds() == 3600


async def test_a_mail_of_a_tenant_still_being_provisioned_waits(
    platform: Platform, service: TenantService, smtp_server: SmtpServer
) -> None:
    """A mail written with a tenant's registration is not sent before the tenant is provisioned (a failed
    provisioning removes it with the tenant, unsent)."""
    tenant = await service.create(name="Waiting", slug="waiting", tier="starter")
    async with platform.control.connection() as conn, conn.transaction():
        await outbox.enqueue(conn, tenant.id, MailKind.VERIFY_EMAIL, "w@x.test", "hello", "body")
        await conn.execute("UPDATE tenants SET status = 'provisioning' WHERE id = %s", (tenant.id,))
    assert (await _sender(platform, smtp_server.url).deliver()).sent == 0
    async with platform.control.connection() as conn:
        await conn.execute("UPDATE tenants SET status = 'active' WHERE id = %s", (tenant.id,))
    assert (await _sender(platform, smtp_server.url).deliver()).sent == 1
    assert [m.rcpt_tos for m in smtp_server.messages] == [["w@x.test"]]
