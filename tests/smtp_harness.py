"""pytest plugin: a real SMTP server (``aiosmtpd``) on 127.0.0.1 that keeps every message it receives.

Fixtures:

- ``smtp_server`` (function): a running :class:`SmtpServer` on a free port (``.url`` for
  ``CARDVAULT_SMTP_URL``, ``.messages``, ``await .wait_for(n)``).
- ``smtp_port`` (function): a free port with no server yet: ``SmtpServer(port)`` and ``.start()`` it
  later (SMTP down, then up). Every server a fixture made is stopped at teardown.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.processes import free_port


class _Collector:
    """aiosmtpd handler: keeps each message (parsed) with its envelope; refuses listed recipients."""

    def __init__(self, server: SmtpServer) -> None:
        self._server = server

    async def handle_RCPT(
        self, smtp: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self._server.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        assert isinstance(raw, bytes)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._server.lock:
            self._server.messages.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos), message))
        return "250 Message accepted"


class Received:
    """One message the server accepted."""

    def __init__(self, mail_from: str, rcpt_tos: list[str], message: EmailMessage) -> None:
        self.mail_from = mail_from
        self.rcpt_tos = rcpt_tos
        self.message = message

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        content: Any = part.get_content()
        return str(content)


class SmtpServer:
    """An aiosmtpd server on ``127.0.0.1:port`` in a thread of its own; ``start()`` and ``stop()`` may be
    called again (the same port comes back)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[Received] = []
        #: Recipients answered ``550`` (refused for good).
        self.refuse: set[str] = set()
        self.lock = threading.Lock()
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self._controller is None, "already running"
        controller = Controller(_Collector(self), hostname="127.0.0.1", port=self.port, ready_timeout=10)
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, recipient: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if recipient in m.rcpt_tos]

    async def wait_for(self, count: int, within: float = 15.0) -> list[Received]:
        """The messages once at least ``count`` have arrived (fails after ``within`` seconds)."""
        deadline = time.monotonic() + within
        while True:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.messages)} of {count} mail(s) arrived within {within} s")
            await asyncio.sleep(0.02)


@pytest.fixture
def smtp_port() -> Iterator[int]:
    """A free port on 127.0.0.1 where no SMTP server listens yet."""
    yield free_port()


@pytest.fixture
def smtp_server(smtp_port: int) -> Iterator[SmtpServer]:
    """A running SMTP server that keeps what it receives."""
    server = SmtpServer(smtp_port)
    server.start()
    try:
        yield server
    finally:
        server.stop()
