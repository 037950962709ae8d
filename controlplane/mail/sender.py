"""Delivering the outbox over SMTP: one bounded batch per round, run by a scheduler job.

A round claims up to ``batch`` due mails (``outbox.claim``: ``FOR UPDATE SKIP LOCKED`` plus a lease,
committed at once), sends them over one SMTP connection with ``smtplib`` in a worker thread (no
transaction is open meanwhile), then records each outcome:

- accepted: ``sent_at`` set, the body emptied;
- refused for good (a 5xx answer to the recipient or the data, e.g. an unknown mailbox): ``failed_at``;
- anything else (server down, timeouts, 4xx, a lost connection): ``attempts + 1``, ``last_error`` and
  ``send_after`` moved by an exponential backoff (30 s doubling, at most an hour). A mail is never given
  up because SMTP is down; it waits for it.

Without ``CARDVAULT_SMTP_URL`` mails stay in the outbox (logged once) and are sent once a URL is set.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from psycopg_pool import AsyncConnectionPool

from controlplane.db import AsyncConn
from controlplane.errors import ConfigError
from controlplane.mail import outbox
from controlplane.mail.models import Delivery, OutgoingMail, SmtpTarget
from controlplane.settings import MailSettings

log = logging.getLogger(__name__)

#: Mails claimed per round at most.
BATCH = 50
#: Seconds a claimed mail is held by its deliverer before another may claim it (longer than a batch
#: can take: every SMTP step is bounded by ``SMTP_TIMEOUT``).
LEASE = 600.0
#: Seconds each SMTP step may take.
SMTP_TIMEOUT = 10.0
#: Backoff after a failed attempt: ``BACKOFF_BASE * 2 ** (attempts - 1)`` seconds, at most ``BACKOFF_MAX``.
BACKOFF_BASE = 30.0
BACKOFF_MAX = 3600.0
#: Sent and refused mails are forgotten after this many seconds.
RETENTION = 30 * 86400.0

#: Outcome of one mail: None (accepted), or (permanent?, error).
Outcome = tuple[bool, str] | None


def backoff(attempts: int) -> timedelta:
    """How long to wait after the ``attempts``-th failed attempt (1, 2, ...)."""
    return timedelta(seconds=min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, min(attempts - 1, 20))))


def _permanent(code: int) -> bool:
    return 500 <= code < 600


def _message(mail: OutgoingMail, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.recipient
    message["Subject"] = mail.subject
    message["Date"] = formatdate(usegmt=True)
    domain = parseaddr(sender)[1].rpartition("@")[2] or None
    message["Message-ID"] = make_msgid(idstring=f"cardvault.{mail.id}", domain=domain)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(mail.body)
    return message


def _connect(target: SmtpTarget) -> smtplib.SMTP:
    if target.implicit_tls:
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            target.host, target.port, timeout=SMTP_TIMEOUT, context=ssl.create_default_context()
        )
    else:
        client = smtplib.SMTP(target.host, target.port, timeout=SMTP_TIMEOUT)
    try:
        client.ehlo()
        if target.starttls:
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
        if target.username is not None:
            client.login(target.username, target.password or "")
    except BaseException:
        client.close()
        raise
    return client


def _send_one(client: smtplib.SMTP, mail: OutgoingMail, sender: str) -> Outcome:
    try:
        client.send_message(_message(mail, sender), from_addr=parseaddr(sender)[1], to_addrs=[mail.recipient])
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        return all(_permanent(c) for c in codes), f"recipient refused: {exc.recipients}"
    except smtplib.SMTPDataError as exc:
        return _permanent(exc.smtp_code), f"message refused: {exc.smtp_code} {exc.smtp_error!r}"
    except smtplib.SMTPResponseException as exc:  # the sender refused, or another step
        return False, f"{type(exc).__name__}: {exc.smtp_code} {exc.smtp_error!r}"
    except ValueError as exc:  # a header the email package refuses: it will never go out
        return True, f"not a valid message: {exc}"
    return None


def send_batch(target: SmtpTarget, sender: str, mails: Sequence[OutgoingMail]) -> list[Outcome]:
    """Send ``mails`` over one connection (blocking; run it in a thread). A connection that cannot be
    made, or is lost, defers every mail not yet accepted."""
    outcomes: list[Outcome] = []
    try:
        client = _connect(target)
    except (OSError, smtplib.SMTPException) as exc:
        error = f"cannot reach {target}: {type(exc).__name__}: {exc}"
        return [(False, error) for _ in mails]
    try:
        for mail in mails:
            try:
                outcomes.append(_send_one(client, mail, sender))
            except (OSError, smtplib.SMTPException) as exc:
                error = f"connection to {target} lost: {type(exc).__name__}: {exc}"
                outcomes.extend((False, error) for _ in mails[len(outcomes) :])
                break
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()
    return outcomes


class MailSender:
    """Delivers the outbox of the control database to the SMTP server of ``MailSettings``."""

    def __init__(self, control: AsyncConnectionPool[AsyncConn], settings: MailSettings, *, batch: int = BATCH) -> None:
        self._control = control
        self._settings = settings
        #: Parsed when the service starts: a bad URL stops it (``ConfigError``) instead of every round.
        self.target = SmtpTarget.parse(settings.smtp_url) if settings.smtp_url else None
        if "@" not in parseaddr(settings.sender)[1]:
            raise ConfigError(f"CARDVAULT_MAIL_FROM is not an address: {settings.sender!r}")
        self._batch = batch
        self._warned = False

    async def deliver(self, *, now: datetime | None = None) -> Delivery:
        """One round: claim what is due at ``now``, send it, record the outcomes."""
        if self.target is None:
            return Delivery()
        now = now or datetime.now(UTC)
        async with self._control.connection() as conn, conn.transaction():
            mails = await outbox.claim(conn, now=now, lease_until=now + timedelta(seconds=LEASE), limit=self._batch)
        if not mails:
            return Delivery()
        outcomes = await asyncio.to_thread(send_batch, self.target, self._settings.sender, mails)
        sent = deferred = failed = 0
        async with self._control.connection() as conn, conn.transaction():
            for mail, outcome in zip(mails, outcomes, strict=True):
                if outcome is None:
                    await outbox.mark_sent(conn, mail.id, now=now)
                    sent += 1
                elif outcome[0]:
                    await outbox.mark_failed(conn, mail.id, outcome[1], now=now)
                    log.error("mail %d (%s) to %s refused for good: %s", mail.id, mail.kind, mail.recipient, outcome[1])
                    failed += 1
                else:
                    await outbox.mark_deferred(conn, mail.id, outcome[1], retry_at=now + backoff(mail.attempts + 1))
                    deferred += 1
        if deferred:
            log.warning("%d mail(s) deferred: %s", deferred, next(o[1] for o in outcomes if o and not o[0]))
        return Delivery(sent=sent, deferred=deferred, failed=failed)

    async def job(self) -> str:
        """The scheduler job: deliver until nothing is due (a round at most ``batch`` mails), then forget
        old sent ones."""
        if self.target is None:
            async with self._control.connection() as conn:
                pending = await outbox.pending_count(conn)
            if not self._warned:
                log.warning("CARDVAULT_SMTP_URL is not set: mail stays in the outbox (%d pending)", pending)
                self._warned = True
            return f"no SMTP URL: {pending} mail(s) kept in the outbox"
        total = Delivery()
        while True:
            round_ = await self.deliver()
            total = Delivery(
                sent=total.sent + round_.sent,
                deferred=total.deferred + round_.deferred,
                failed=total.failed + round_.failed,
            )
            if round_.sent + round_.failed < self._batch:  # nothing more due, or the server is not taking it
                break
        async with self._control.connection() as conn:
            forgotten = await outbox.delete_done_before(conn, datetime.now(UTC) - timedelta(seconds=RETENTION))
        return total.line() + (f"; {forgotten} old mail(s) forgotten" if forgotten else "")
