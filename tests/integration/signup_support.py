"""Helpers for the signup, mail, invitation-mail and onboarding tests: an app with onboarding settings,
signup bodies, the outbox and onboarding rows as the database has them, links out of received mails,
and a check that a failed signup left nothing anywhere.

Outcomes are read around the code under test (fresh psycopg connections); mails are read from a real
SMTP server (``tests.smtp_harness``).
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

from litestar.testing import AsyncTestClient
from psycopg import sql

from controlplane.app import create_app
from controlplane.http.state import MAIL_STATE_KEY, SIGNUPS_STATE_KEY
from controlplane.mail.sender import MailSender
from controlplane.onboarding.service import Signups
from controlplane.settings import MailSettings, Settings, SignupSettings
from tests.integration.tenant_support import Row, fetch, server_databases, server_roles

Client = AsyncTestClient[Any]

#: ``CARDVAULT_PUBLIC_URL`` of the tests: links in mails start with it.
PUBLIC_URL = "https://cardvault.example"
SIGNUP_PASSWORD = "a long signup passphrase"
_LINK = re.compile(r"https?://\S+")


def onboarding_settings(
    settings: Settings, *, smtp_url: str = "", mail_interval: float = 0, failpoints: str = "", **signup: Any
) -> Settings:
    """``settings`` with a public URL, the SMTP server, the mail job's interval (0: off, tests deliver
    with ``MailSender.deliver``) and signup settings."""
    return settings.replace(
        http=dataclasses.replace(settings.http, public_url=PUBLIC_URL),
        mail=MailSettings(smtp_url=smtp_url, interval=mail_interval),
        signup=dataclasses.replace(SignupSettings(), **signup),
        failpoints=failpoints,
    )


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Client]:
    """A client of the app (lifespan run) with no credentials of its own."""
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield client


def sender(client: Client) -> MailSender:
    mail: MailSender = client.app.state[MAIL_STATE_KEY]
    return mail


def signups(client: Client) -> Signups:
    service: Signups = client.app.state[SIGNUPS_STATE_KEY]
    return service


def signup_body(slug: str, **changes: Any) -> dict[str, Any]:
    return {
        "name": f"{slug.title()} Cards Ltd",
        "slug": slug,
        "email": f"founder@{slug}.test",
        "password": SIGNUP_PASSWORD,
        "tier": "starter",
        **changes,
    }


async def sign_up(client: Client, slug: str, **changes: Any) -> dict[str, Any]:
    """``POST /signup`` that must succeed; its 201 body."""
    response = await client.post("/signup", json=signup_body(slug, **changes))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer_of(body: dict[str, Any]) -> dict[str, str]:
    """The ``Authorization`` header of a signup answer's access token."""
    return {"Authorization": f"Bearer {body['tokens']['access_token']}"}


def link_in(text: str, path: str) -> str:
    """The one link in ``text`` whose path is ``path``."""
    links = [link for link in _LINK.findall(text) if urlsplit(link).path == path]
    assert len(links) == 1, f"expected one link to {path} in:\n{text}"
    return links[0]


def token_of(link: str) -> str:
    (token,) = parse_qs(urlsplit(link).query)["token"]
    return token


def local_part(link: str) -> str:
    """``link`` without scheme and host (to follow it with the test client)."""
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}"


async def outbox_rows(control_dsn: str, kind: str | None = None) -> list[Row]:
    if kind is None:
        return await fetch(control_dsn, "SELECT * FROM mail_outbox ORDER BY id")
    return await fetch(control_dsn, "SELECT * FROM mail_outbox WHERE kind = %s ORDER BY id", (kind,))


async def onboarding_rows(control_dsn: str) -> list[Row]:
    return await fetch(control_dsn, "SELECT * FROM tenant_onboarding ORDER BY created_at")


async def tenant_id_of(control_dsn: str, slug: str) -> uuid.UUID | None:
    rows = await fetch(control_dsn, "SELECT id FROM tenants WHERE slug = %s", (slug,))
    return rows[0]["id"] if rows else None


async def server_objects(admin_dsn: str) -> tuple[set[str], set[str]]:
    """Names of the tenant databases and tenant roles on the server now."""
    return set(await server_databases(admin_dsn)), set(await server_roles(admin_dsn))


async def assert_nothing_left(control_dsn: str, admin_dsn: str, slug: str, before: tuple[set[str], set[str]]) -> None:
    """No registry row for ``slug``, no row at all in the tables a tenant's signup writes (for tests that
    made no other tenant), and no tenant database or role on the server beyond ``before``."""
    assert await tenant_id_of(control_dsn, slug) is None
    for table in ("tenant_quotas", "tenant_billing", "tenant_onboarding", "mail_outbox"):
        rows = await fetch(control_dsn, sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(table)))
        assert rows[0]["n"] == 0, f"{table} keeps {rows[0]['n']} row(s)"
    assert await server_objects(admin_dsn) == before
