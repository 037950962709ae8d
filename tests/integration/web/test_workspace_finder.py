"""The workspace finder (``/workspaces``): the same answer whatever the address, the list mailed through the
outbox (only enabled users' workspaces, never another tenant's), rate limits per address and per email,
and the directory behind it: hashed addresses, kept current by the accounts API and provisioning, and
rebuilt by the periodic sync from the tenants' ``users`` tables."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from typing import Any

import httpx

from controlplane.accounts import directory
from controlplane.app import create_app
from controlplane.platform import Platform
from controlplane.settings import Settings
from controlplane.web.tenant.finder import PER_ADDRESS_LIMIT, PER_EMAIL_LIMIT
from tests.conftest import ADMIN_TOKEN, eventually
from tests.integration.auth_support import add_user, create_tenant, tenant_rows
from tests.integration.web.web_support import csrf_of

SENT = "If this email belongs to any workspace, we've sent the list to it."


async def _find(browser: httpx.AsyncClient, email: str) -> httpx.Response:
    form = await browser.get("/workspaces")
    return await browser.post("/workspaces", data={"email": email, "csrf_token": csrf_of(form)})


async def _mails(platform: Platform, recipient: str | None = None) -> list[dict[str, Any]]:
    async with platform.control.connection() as conn:
        cur = await conn.execute(
            "SELECT tenant_id, recipient, subject, body FROM mail_outbox WHERE kind = 'workspace_list' ORDER BY id"
        )
        rows = await cur.fetchall()
    return [row for row in rows if recipient is None or row["recipient"] == recipient]


async def _listed(platform: Platform, email: str) -> list[str]:
    key = directory.directory_key(platform.settings.security.secret_key)
    async with platform.control.connection() as conn:
        return await directory.workspaces_of(conn, key, email)


async def _sync_all(platform: Platform) -> None:
    line = await directory.sync_due(platform)
    assert line.endswith(", 0 failed"), line


async def test_known_and_unknown_addresses_get_the_same_answer_and_only_known_ones_a_mail(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await create_tenant(api, "acme")
    await create_tenant(api, "globex")
    await add_user(platform, "acme", "ann@shared.test", "user")
    await add_user(platform, "globex", "Ann@Shared.test", "tenant_admin")
    await _sync_all(platform)

    form = await browser.get("/workspaces")
    assert form.status_code == 200 and '<label for="f-email">Email</label>' in form.text
    assert 'action="/workspaces"' in form.text and 'method="post"' in form.text

    known = await _find(browser, "ANN@shared.test")
    unknown = await _find(browser, "nobody@nowhere.test")
    assert known.status_code == unknown.status_code == 200
    assert known.text == unknown.text and SENT in known.text
    assert "acme" not in known.text and "globex" not in known.text

    mails = await _mails(platform)
    assert [(m["recipient"], m["tenant_id"]) for m in mails] == [("ANN@shared.test", None)]
    body = mails[0]["body"]
    base_url = platform.settings.http.base_url
    assert f"acme: {base_url}/t/acme/sign-in?email=ANN%40shared.test" in body
    assert f"globex: {base_url}/t/globex/sign-in?email=ANN%40shared.test" in body

    # A malformed address is the form again with the reason (it says nothing about any workspace).
    bad = await _find(browser, "not an address")
    assert (
        bad.status_code == 400 and "Enter a valid email address." in bad.text and 'value="not an address"' in bad.text
    )


async def test_disabled_users_and_other_tenants_users_are_never_listed(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await create_tenant(api, "acme")
    await create_tenant(api, "globex")
    await add_user(platform, "acme", "bob@acme.test", "user")
    await add_user(platform, "acme", "carol@acme.test", "user")
    await tenant_rows(platform, "acme", "UPDATE users SET disabled = true WHERE email = 'carol@acme.test'")
    await add_user(platform, "globex", "dave@globex.test", "user")
    await _sync_all(platform)

    for email in ("bob@acme.test", "carol@acme.test", "dave@globex.test"):
        assert (await _find(browser, email)).status_code == 200
    bob = await _mails(platform, "bob@acme.test")
    assert len(bob) == 1 and "/t/acme/" in bob[0]["body"] and "globex" not in bob[0]["body"]
    assert await _mails(platform, "carol@acme.test") == []
    dave = await _mails(platform, "dave@globex.test")
    assert len(dave) == 1 and "/t/globex/" in dave[0]["body"] and "acme" not in dave[0]["body"]


async def test_the_directory_follows_the_accounts_api_and_the_sync_heals_what_it_missed(
    api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    # The first admin is findable from provisioning on, before any sync.
    assert await _listed(platform, acme.admin_email) == ["acme"]

    created = await api.post(
        acme.api("/users"),
        json={"email": "erin@acme.test", "role": "user", "password": "a long enough passphrase"},
        headers=acme.auth,
    )
    assert created.status_code == 201, created.text
    assert await _listed(platform, "erin@acme.test") == ["acme"]
    disabled = await api.patch(acme.api(f"/users/{created.json()['id']}"), json={"disabled": True}, headers=acme.auth)
    assert disabled.status_code == 200, disabled.text
    assert await _listed(platform, "erin@acme.test") == []

    # Changes the hooks never saw (straight into the tenant database) are healed by the sync.
    await add_user(platform, "acme", "frank@acme.test", "user")
    assert await _listed(platform, "frank@acme.test") == []
    await _sync_all(platform)
    assert await _listed(platform, "frank@acme.test") == ["acme"]
    await tenant_rows(platform, "acme", "DELETE FROM users WHERE email = 'frank@acme.test'")
    await _sync_all(platform)
    assert await _listed(platform, "frank@acme.test") == []

    # The control database holds keyed hashes of lower-cased addresses, never the addresses.
    key = directory.directory_key(platform.settings.security.secret_key)
    async with platform.control.connection() as conn:
        cur = await conn.execute("SELECT email_key FROM workspace_directory WHERE tenant_id = %s", (acme.id,))
        keys = {bytes(row["email_key"]) for row in await cur.fetchall()}
    expected = hmac.new(key, acme.admin_email.lower().encode(), hashlib.sha256).digest()
    assert keys == {expected}


async def test_the_sync_visits_the_least_recently_synced_workspaces_first_a_batch_at_a_time(
    api: httpx.AsyncClient, platform: Platform
) -> None:
    await create_tenant(api, "acme")
    await create_tenant(api, "globex")
    await add_user(platform, "acme", "gil@acme.test", "user")
    await add_user(platform, "globex", "gil@acme.test", "user")
    assert await directory.sync_due(platform, batch=1) == "1 workspace(s) synced to the directory, 0 failed"
    first = await _listed(platform, "gil@acme.test")
    assert len(first) == 1
    await directory.sync_due(platform, batch=1)  # the other one, never synced, comes next
    assert await _listed(platform, "gil@acme.test") == ["acme", "globex"]


async def test_the_finder_is_rate_limited_per_email_and_per_address(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await create_tenant(api, "acme")
    await add_user(platform, "acme", "hal@acme.test", "user")
    await _sync_all(platform)

    # Fixed windows: a window may end during the test, so count the answers up to the first refusal.
    answers = [(await _find(browser, "hal@acme.test")).status_code for _ in range(2 * PER_EMAIL_LIMIT + 1)]
    refused_at = answers.index(429)
    assert refused_at >= PER_EMAIL_LIMIT and set(answers[:refused_at]) == {200}
    refused = await _find(browser, "hal@acme.test")
    assert refused.status_code == 429 and "Too many requests" in refused.text and "Retry-After" in refused.headers
    assert len(await _mails(platform, "hal@acme.test")) == answers.count(200)  # a refused request mails nothing

    # Per address: fresh emails from the same client run out too.
    statuses = [(await _find(browser, f"x{i}@nowhere.test")).status_code for i in range(2 * PER_ADDRESS_LIMIT + 1)]
    assert 429 in statuses


async def test_the_periodic_usage_job_runs_the_sync(settings: Settings, platform: Platform) -> None:
    """The service's own scheduler (leader job ``collect_usage``, here every half second) heals the directory."""
    quick = dataclasses.replace(settings, usage=dataclasses.replace(settings.usage, interval=0.5))
    app = create_app(quick)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local", headers=headers) as api:
            await create_tenant(api, "acme")
        await add_user(platform, "acme", "ivy@acme.test", "user")

        async def listed() -> bool:
            return await _listed(platform, "ivy@acme.test") == ["acme"]

        await eventually(listed, "the collect_usage job rebuilt acme's directory entries", within=30)
