"""Local Stripe for the tests: one ``localstripe`` and one stand-in per session (per xdist worker).

The real ``stripe`` SDK is pointed at the stand-in (``tests/stripe_standin/server.py``), which serves Prices,
Checkout and Portal sessions and Billing Meters itself and proxies the rest to localstripe. Both run as
processes on 127.0.0.1 on kernel-chosen ports and are killed when the session ends (and by the kernel if
pytest dies: ``PR_SET_PDEATHSIG``). Tests isolate by creating their own customers.

Fixtures: ``stripe_standin`` (session; a :class:`StripeStandin`), ``stripe_settings`` (``settings`` with
``CARDVAULT_BILLING=stripe`` pointed at the stand-in). The :class:`StripeStandin` methods drive the
stand-in's test hooks (see ``tests/stripe_standin/hooks.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.settings import BillingSettings, Settings
from tests.processes import die_with_parent, stop, track
from tests.stripe_standin import objects

API_KEY = "sk_test_cardvault_standin"
WEBHOOK_SECRET = "whsec_cardvault_standin_secret"
ROOT = Path(__file__).resolve().parent.parent


def _start(module: str, args: list[str], log: Path, timeout: float = 30.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m module``; its URL once it printed ``PORT <n>`` and answers HTTP."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            preexec_fn=die_with_parent,
        )
    track(proc)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(proc.stdout.fileno(), 1) if ready else b""
        if not chunk:
            stop(proc)
            raise RuntimeError(f"{module} did not start:\n{log.read_text()}")
        line += chunk
    url = f"http://127.0.0.1:{int(line.split()[1])}"
    while True:
        try:
            httpx.get(f"{url}/_config/none", timeout=1)  # any answer means it listens
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError(f"{module} does not answer:\n{log.read_text()}") from None
            time.sleep(0.02)


@dataclasses.dataclass
class StripeStandin:
    """The running stand-in (``url``: the SDK's API base) and localstripe behind it, with test hooks."""

    url: str
    localstripe_url: str
    api_key: str = API_KEY
    webhook_secret: str = WEBHOOK_SECRET

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:
            answer = await http.request(method, path, json=body)
        assert answer.status_code < 400, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json() if answer.content else None

    async def complete_checkout(self, session_id: str, *, card: str | None = None, deliver: bool = True) -> Any:
        """The customer pays the Checkout Session: ``{session, subscription, deliveries}``."""
        body: dict[str, Any] = {"deliver": deliver} | ({"card": card} if card else {})
        return await self._call("POST", f"/_test/checkout/{session_id}/complete", body)

    async def renew(self, subscription_id: str, *, fail: bool = False, deliver: bool = True) -> Any:
        """Charge a renewal invoice (declined with ``fail``): ``{invoice, subscription, deliveries}``."""
        return await self._call(
            "POST", f"/_test/subscriptions/{subscription_id}/renew", {"fail": fail, "deliver": deliver}
        )

    async def meter_events(self, *, event_name: str | None = None, customer: str | None = None) -> list[dict[str, Any]]:
        """The meter events the stand-in accepted (duplicates by ``identifier`` are not in the list)."""
        query = {k: v for k, v in {"event_name": event_name, "customer": customer}.items() if v is not None}
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:
            found: list[dict[str, Any]] = (await http.get("/_test/meter_events", params=query)).json()["data"]
        return found

    async def duplicate_meter_events(self) -> int:
        """How many meter events were dropped as a repeated ``identifier`` (this session, all tests)."""
        found: int = (await self._call("GET", "/_test/meter_events"))["duplicates"]
        return found

    async def fail_next(self, path: str, count: int, *, status: int = 500, method: str | None = None) -> None:
        """The next ``count`` requests to ``path`` (or below it) answer ``status`` (every attempt counts)."""
        await self._call("POST", "/_test/fail", {"path": path, "count": count, "status": status, "method": method})

    async def clear_failures(self) -> None:
        await self._call("DELETE", "/_test/fail")

    async def send_event(
        self,
        type: str,
        *,
        obj: dict[str, Any] | None = None,
        fixture: str | None = None,
        overrides: dict[str, Any] | None = None,
        url: str | None = None,
        secret: str | None = None,
        timestamp: int | None = None,
        created: int | None = None,
    ) -> Any:
        """A signed event (``obj``, or Stripe's fixture with ``overrides``) to ``url`` or every endpoint:
        ``{event, deliveries}``; ``timestamp`` signs as of that time (stale signatures)."""
        body = {"type": type, "object": obj, "fixture": fixture, "overrides": overrides, "url": url}
        body |= {"secret": secret or self.webhook_secret, "timestamp": timestamp, "created": created}
        return await self._call("POST", "/_test/events", body)

    async def register_webhook(self, url: str, *, secret: str | None = None, events: list[str] | None = None) -> str:
        """Send the stand-in's and localstripe's events to ``url``; the registration id (to unregister)."""
        hook_id = uuid.uuid4().hex
        body = {"url": url, "secret": secret or self.webhook_secret, "events": events}
        await self._call("POST", f"/_config/webhooks/{hook_id}", body)
        return hook_id

    async def unregister_webhook(self, hook_id: str, url: str = "http://127.0.0.1:9/") -> None:
        """Stop sending events for ``hook_id`` (localstripe cannot delete: it keeps it with no event types)."""
        await self._call("POST", f"/_config/webhooks/{hook_id}", {"url": url, "secret": "unused", "events": []})

    @contextlib.asynccontextmanager
    async def webhook(self, url: str, *, events: list[str] | None = None) -> AsyncIterator[str]:
        """Events go to ``url`` inside the block."""
        hook_id = await self.register_webhook(url, events=events)
        try:
            yield hook_id
        finally:
            await self.unregister_webhook(hook_id)

    async def requests_seen(self, path: str | None = None) -> list[tuple[str, str]]:
        """The ``(method, path)`` of every ``/v1`` request the stand-in received (this session)."""
        query = f"?path={path}" if path else ""
        return [tuple(entry) for entry in (await self._call("GET", f"/_test/requests{query}"))["data"]]

    def sign(self, payload: bytes | str, *, secret: str | None = None, timestamp: int | None = None) -> str:
        """The ``Stripe-Signature`` header Stripe would send for ``payload``."""
        return objects.sign(payload, secret or self.webhook_secret, timestamp=timestamp)

    @staticmethod
    def event(type: str, obj: dict[str, Any], *, created: int | None = None) -> dict[str, Any]:
        """An event of ``type`` about ``obj`` (fresh ``evt_`` id), to post yourself."""
        return objects.event(type, obj, created=created)

    def signed(self, event: dict[str, Any], *, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
        """``event``'s body and headers (``Stripe-Signature``, JSON) as Stripe would post them."""
        body = json.dumps(event).encode()
        return body, {"Stripe-Signature": self.sign(body, timestamp=timestamp), "Content-Type": "application/json"}


@contextlib.contextmanager
def running_standin() -> Iterator[StripeStandin]:
    """localstripe and the stand-in, until the block ends."""
    workdir = Path(tempfile.mkdtemp(prefix="cardvault-test-stripe-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        proc, localstripe = _start("tests.stripe_standin.localstripe_main", [], workdir / "localstripe.log")
        procs.append(proc)
        proc, standin = _start("tests.stripe_standin.server", ["--localstripe", localstripe], workdir / "standin.log")
        procs.append(proc)
        yield StripeStandin(url=standin, localstripe_url=localstripe)
    finally:
        for proc in reversed(procs):
            stop(proc)


@pytest.fixture(scope="session")
def stripe_standin() -> Iterator[StripeStandin]:
    """One localstripe and one stand-in for the session (per xdist worker)."""
    with running_standin() as standin:
        yield standin


def stripe_billing(standin: StripeStandin, **overrides: Any) -> BillingSettings:
    """Billing settings for the stand-in; ``overrides`` replace any field (``grace=``, ``on_cancel=``...)."""
    values: dict[str, Any] = {
        "provider": "stripe",
        "stripe_api_key": standin.api_key,
        "stripe_webhook_secret": standin.webhook_secret,
        "stripe_api_base": standin.url,
    }
    return BillingSettings(**(values | overrides))


@pytest.fixture
def stripe_settings(settings: Settings, stripe_standin: StripeStandin) -> Settings:
    """The test's ``settings`` with ``CARDVAULT_BILLING=stripe`` pointed at the stand-in."""
    return dataclasses.replace(settings, billing=stripe_billing(stripe_standin))


def stripe_env(standin: StripeStandin) -> dict[str, str]:
    """The ``CARDVAULT_*`` variables for a ``cardvault`` process using the stand-in."""
    return {
        "CARDVAULT_BILLING": "stripe",
        "CARDVAULT_STRIPE_API_KEY": standin.api_key,
        "CARDVAULT_STRIPE_WEBHOOK_SECRET": standin.webhook_secret,
        "CARDVAULT_STRIPE_API_BASE": standin.url,
    }
