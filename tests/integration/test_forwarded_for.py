"""``X-Forwarded-For`` is believed only from ``CARDVAULT_TRUSTED_PROXIES``, on the real ``cardvault serve``.

uvicorn, left to its defaults, believes the header from 127.0.0.1: any local client could then choose
the address that the login throttle counts failures against and that the sessions list and audit rows
show. By default the service trusts no proxy; a configured one is believed. The client address is
observed where it matters: the session a login made (``GET /me/sessions``) and the per-address login
throttle (``CARDVAULT_LOGIN_MAX_FAILURES_PER_ADDRESS``, 2 here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, serve
from tests.integration.tenant_support import TENANT_ADMIN_PASSWORD, create_tenant_as_admin_sync, tenant_admin_email

SPOOFED = "203.0.113.7"


Start = Callable[..., AbstractContextManager[httpx.Client]]


@pytest.fixture
def start(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> Start:
    """``with start(**env) as client``: a client of ``cardvault serve`` run with these extra variables."""

    @contextlib.contextmanager
    def running(**env: str) -> Iterator[httpx.Client]:
        with (
            serve(
                control_dsn, tenant_template_name, tmp_path, CARDVAULT_LOGIN_MAX_FAILURES_PER_ADDRESS="2", **env
            ) as s,
            httpx.Client(base_url=s.url, timeout=30, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client,
        ):
            yield client

    return running


def session_address(client: httpx.Client, slug: str, forwarded_for: str) -> str | None:
    """Log in with ``X-Forwarded-For: forwarded_for``; the address the new session was recorded with."""
    login = {"email": tenant_admin_email(slug), "password": TENANT_ADMIN_PASSWORD}
    response = client.post(f"/t/{slug}/auth/token", json=login, headers={"X-Forwarded-For": forwarded_for})
    assert response.status_code == 200, response.text
    auth = {"Authorization": f"Bearer {response.json()['access_token']}"}
    sessions = client.get(f"/t/{slug}/api/me/sessions", headers=auth).json()
    (current,) = [s for s in sessions if s["current"]]
    address: str | None = current["source_address"]
    return address


def failed_login(client: httpx.Client, slug: str, forwarded_for: str, email: str) -> int:
    """The status of a wrong-password login (each to another account: only the address throttle counts)."""
    body = {"email": email, "password": "not the password"}
    return client.post(f"/t/{slug}/auth/token", json=body, headers={"X-Forwarded-For": forwarded_for}).status_code


def test_by_default_a_spoofed_header_from_localhost_changes_nothing(start: Start) -> None:
    # uvicorn's own setting (FORWARDED_ALLOW_IPS) would trust everyone: the service overrides it.
    with start(FORWARDED_ALLOW_IPS="*") as client:
        create_tenant_as_admin_sync(client, "xff-default")
        assert session_address(client, "xff-default", SPOOFED) == "127.0.0.1"
        # A new made-up address per attempt does not buy new attempts: all of them are 127.0.0.1's.
        statuses = [failed_login(client, "xff-default", f"198.51.100.{i}", f"n{i}@x.test") for i in range(3)]
        assert statuses == [401, 401, 429]


def test_a_configured_proxy_is_believed(start: Start) -> None:
    # A network; and uvicorn's own setting naming another host changes nothing.
    with start(CARDVAULT_TRUSTED_PROXIES="10.9.8.7, 127.0.0.0/8", FORWARDED_ALLOW_IPS="192.0.2.1") as client:
        create_tenant_as_admin_sync(client, "xff-proxy")
        assert session_address(client, "xff-proxy", SPOOFED) == SPOOFED
        # Only the trusted proxy's own entry (the rightmost) counts, not what its client put in front.
        assert session_address(client, "xff-proxy", f"198.51.100.1, {SPOOFED}") == SPOOFED
        # Failures count against the client behind the proxy, not against the proxy.
        statuses = [failed_login(client, "xff-proxy", SPOOFED, f"n{i}@x.test") for i in range(3)]
        assert statuses == [401, 401, 429]
        assert failed_login(client, "xff-proxy", "198.51.100.9", "n9@x.test") == 401
