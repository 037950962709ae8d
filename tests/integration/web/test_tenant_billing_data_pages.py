"""The billing and data pages of the tenant app.

Billing (``/t/{slug}/billing``): with billing off the plan is shown and the page says billing is not
enabled (its forms answer 409 ``billing_disabled``, nothing audited); with the Stripe stand-in, upgrading
starts a Checkout Session and "Manage billing" a portal session, each audited as the API's, the browser
sent on by a page (a form may not redirect off-site under ``form-action 'self'``); a bad plan is a 400.

Data (``/t/{slug}/data``): a whole-workspace export shows its one-time link, which downloads the archive
once through the page (audited ``export.request`` and ``export.download``); a backup is asked for
(``backup.request``); a user is erased only with their email typed back (``user.erase``), oneself never.

Everywhere: a plain user is refused (403), CSRF is required, and one workspace's session reads or
changes nothing of another's (its exports' links and user ids included)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable

import httpx
import pytest
from litestar import Litestar

from controlplane.http.state import PRIVACY_STATE_KEY
from controlplane.platform import Platform
from controlplane.privacy.service import Privacy
from controlplane.settings import Settings
from tests.conftest import eventually
from tests.integration.auth_support import add_user, audit_rows, create_tenant, tenant_rows
from tests.integration.billing_support import post_event, sync_catalog
from tests.integration.privacy_support import ask, wait_ready
from tests.integration.web.web_support import csrf_of, post_form, sign_in_tenant
from tests.stripe_harness import StripeStandin, stripe_billing

DOWNLOAD = re.compile(r'id="download-link" href="(/t/acme/data/exports/([0-9a-f-]+)/download\?token=[^"]+)"')


# -- billing ----------------------------------------------------------------------------------------


async def test_without_billing_the_plan_is_shown_and_nothing_can_be_bought(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme", tier="professional")
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    page = await browser.get("/t/acme/billing")
    assert page.status_code == 200, page.text
    assert '<strong id="current-tier">professional</strong>' in page.text
    assert "Billing is not enabled" in page.text
    assert "/billing/checkout" not in page.text and "/billing/manage" not in page.text
    for path, data in (("/t/acme/billing/checkout", {"tier": "enterprise"}), ("/t/acme/billing/manage", {})):
        refused = await post_form(browser, path, data, from_page="/t/acme/billing")
        assert refused.status_code == 409 and "billing is off" in refused.text, path
    assert await audit_rows(platform, "acme", "billing.checkout") == []
    assert await audit_rows(platform, "acme", "billing.portal") == []


async def test_billing_is_for_the_workspaces_admins_only(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    await create_tenant(api, "globex")
    await add_user(platform, "acme", "manager@acme.test", "collection_manager")
    await sign_in_tenant(browser, "acme", "manager@acme.test")
    assert (await browser.get("/t/acme/billing")).status_code == 403
    token = csrf_of(await browser.get("/t/acme/usage"))
    refused = await browser.post("/t/acme/billing/checkout", data={"tier": "enterprise", "csrf_token": token})
    assert refused.status_code == 403
    # An admin of acme gets nothing of globex's billing.
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    access = browser.cookies.get("cv_access", path="/t/acme")
    assert access is not None
    browser.cookies.set("cv_access", access, path="/t/globex")
    assert (await browser.get("/t/globex/billing")).status_code == 403


class TestWithStripe:
    @pytest.fixture
    def settings(self, settings: Settings, stripe_standin: StripeStandin) -> Settings:
        return dataclasses.replace(settings, billing=stripe_billing(stripe_standin))

    async def test_upgrading_and_managing_billing_go_to_the_providers_pages_and_are_audited(
        self, browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform, settings: Settings
    ) -> None:
        await sync_catalog(settings)
        acme = await create_tenant(api, "acme", tier="starter")
        await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
        page = await browser.get("/t/acme/billing")
        assert page.status_code == 200 and "Upgrade to professional" in page.text
        assert 'action="/t/acme/billing/manage"' not in page.text  # no customer yet

        bad = await post_form(browser, "/t/acme/billing/checkout", {"tier": "platinum"}, from_page="/t/acme/billing")
        assert bad.status_code == 400 and await audit_rows(platform, "acme", "billing.checkout") == []

        form = {"tier": "professional", "interval": "year"}
        onward = await post_form(browser, "/t/acme/billing/checkout", form, from_page="/t/acme/billing")
        assert onward.status_code == 200, onward.text
        link = re.search(r'id="onward" href="([^"]+)"', onward.text)
        assert link is not None and link.group(1).startswith("http")
        assert f'<meta http-equiv="refresh" content="0; url={link.group(1)}">' in onward.text
        (checkout,) = await audit_rows(platform, "acme", "billing.checkout")
        assert checkout["details"]["tier"] == "professional" and checkout["details"]["interval"] == "year"

        page = await browser.get("/t/acme/billing")
        assert 'action="/t/acme/billing/manage"' in page.text
        portal = await post_form(browser, "/t/acme/billing/manage", {}, from_page="/t/acme/billing")
        assert portal.status_code == 200 and 'id="onward" href="http' in portal.text
        assert len(await audit_rows(platform, "acme", "billing.portal")) == 1
        back = await browser.get("/t/acme/billing?checkout=canceled")
        assert "The checkout was cancelled; nothing changed." in back.text

    async def test_a_running_subscription_changes_plan_and_is_audited(
        self,
        browser: httpx.AsyncClient,
        api: httpx.AsyncClient,
        platform: Platform,
        settings: Settings,
        stripe_standin: StripeStandin,
    ) -> None:
        await sync_catalog(settings)
        acme = await create_tenant(api, "acme", tier="starter")
        plan = {"tier": "professional", "interval": "month"}
        started = await api.post(acme.api("/billing/checkout"), json=plan, headers=acme.auth)
        paid = await stripe_standin.complete_checkout(started.json()["url"].rsplit("/", 1)[1], deliver=False)
        answer, _ = await post_event(api, stripe_standin, "checkout.session.completed", paid["session"])
        assert answer.status_code == 200, answer.text

        async def tier() -> str:
            async with platform.control.connection() as conn:
                cur = await conn.execute("SELECT subscription_tier FROM tenants WHERE id = %s", (acme.id,))
                row = await cur.fetchone()
            assert row is not None
            return str(row["subscription_tier"])

        await eventually(lambda: _is(tier(), "professional"), "the subscription applied")
        await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
        page = await browser.get("/t/acme/billing")
        assert "Change to enterprise" in page.text and 'action="/t/acme/billing/plan"' in page.text

        unknown = await post_form(browser, "/t/acme/billing/plan", {"tier": "platinum"}, from_page="/t/acme/billing")
        assert unknown.status_code == 400 and "flash-error" in unknown.text and await tier() == "professional"
        changed = await post_form(browser, "/t/acme/billing/plan", {"tier": "enterprise"}, from_page="/t/acme/billing")
        assert changed.status_code == 303 and changed.headers["location"] == "/t/acme/billing?done=plan"
        assert await tier() == "enterprise"
        (audited,) = await audit_rows(platform, "acme", "billing.plan")
        assert audited["details"]["tier"] == "enterprise" and audited["details"]["from"] == "professional"
        assert "The plan was changed" in (await browser.get(changed.headers["location"])).text


async def _is(value: Awaitable[str], expected: str) -> bool:
    return await value == expected


# -- data -------------------------------------------------------------------------------------------


async def test_an_export_shows_its_link_once_and_downloads_once_through_the_page(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform, web_app: Litestar
) -> None:
    acme = await create_tenant(api, "acme")
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    empty = await browser.get("/t/acme/data")
    assert empty.status_code == 200 and "No exports yet." in empty.text
    answer = await post_form(browser, "/t/acme/data/exports", {}, from_page="/t/acme/data")
    assert answer.status_code == 200, answer.text
    found = DOWNLOAD.search(answer.text)
    assert found is not None
    link, export_id = found.group(1).replace("&amp;", "&"), found.group(2)
    (asked,) = await audit_rows(platform, "acme", "export.request")
    assert asked["entity_id"] == export_id and asked["details"]["kind"] == "tenant"

    privacy: Privacy = web_app.state[PRIVACY_STATE_KEY]
    await privacy.exports.idle()
    listed = await browser.get("/t/acme/data")
    assert "pill-ready" in listed.text and "download-link" not in listed.text  # the link is not shown again
    archive = await browser.get(link)
    assert archive.status_code == 200 and archive.content[:2] == b"PK", archive.text[:300]
    assert "attachment" in archive.headers["content-disposition"]
    assert [row["entity_id"] for row in await audit_rows(platform, "acme", "export.download")] == [export_id]
    used = await browser.get(link)
    assert used.status_code == 410 and "used already" in used.text
    wrong = await browser.get(link.split("token=")[0] + "token=forged")
    assert wrong.status_code == 404


async def test_a_backup_is_asked_for_and_audited(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    assert "No backups yet." in (await browser.get("/t/acme/data")).text
    asked = await post_form(browser, "/t/acme/data/backups", {}, from_page="/t/acme/data")
    assert asked.status_code == 303 and asked.headers["location"] == "/t/acme/data?done=backup"
    page = await browser.get(asked.headers["location"])
    assert "A backup was asked for" in page.text and "<td>tenant</td>" in page.text
    (audited,) = await audit_rows(platform, "acme", "backup.request")
    assert audited["entity"] == "backup"


async def test_erasing_a_user_needs_their_email_typed_back(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    ann_id = await add_user(platform, "acme", "ann@acme.test", "user")
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    form = await browser.get(f"/t/acme/data/erase/{ann_id}")
    assert form.status_code == 200 and 'data-confirm="ann@acme.test"' in form.text and 'name="confirm"' in form.text
    path = f"/t/acme/data/erase/{ann_id}"
    for typed in ("", "bob@acme.test"):
        wrong = await post_form(browser, path, {"confirm": typed})
        assert wrong.status_code == 400 and "flash-error" in wrong.text, typed
    assert await tenant_rows(platform, "acme", "SELECT id FROM users WHERE id = %s", (ann_id,))
    assert await audit_rows(platform, "acme", "user.erase") == []

    me = (await tenant_rows(platform, "acme", "SELECT id FROM users WHERE email = %s", (acme.admin_email,)))[0]["id"]
    own = await post_form(browser, f"/t/acme/data/erase/{me}", {"confirm": acme.admin_email})
    assert own.status_code == 403 and "cannot erase yourself" in own.text

    erased = await post_form(browser, path, {"confirm": "ANN@acme.test", "delete_files": "on"})
    assert erased.status_code == 303 and erased.headers["location"] == "/t/acme/data?done=erased"
    assert await tenant_rows(platform, "acme", "SELECT id FROM users WHERE id = %s", (ann_id,)) == []
    (audited,) = await audit_rows(platform, "acme", "user.erase")
    assert audited["entity_id"].startswith("erased:") and "ann@acme.test" not in str(audited)
    assert (await browser.get(path)).status_code == 404


async def test_a_plain_user_is_refused_and_the_forms_need_their_csrf_token(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    bob_id = await add_user(platform, "acme", "bob@acme.test", "user")
    await add_user(platform, "acme", "ann@acme.test", "user")
    await sign_in_tenant(browser, "acme", "ann@acme.test")
    for path in ("/t/acme/data", f"/t/acme/data/erase/{bob_id}"):
        assert (await browser.get(path)).status_code == 403, path
    token = csrf_of(await browser.get("/t/acme/usage"))
    for path, data in (
        ("/t/acme/data/exports", {}),
        ("/t/acme/data/backups", {}),
        (f"/t/acme/data/erase/{bob_id}", {"confirm": "bob@acme.test"}),
    ):
        assert (await browser.post(path, data={**data, "csrf_token": token})).status_code == 403, path
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    for data in ({"confirm": "bob@acme.test"}, {"confirm": "bob@acme.test", "csrf_token": token}):
        assert (await browser.post(f"/t/acme/data/erase/{bob_id}", data=data)).status_code == 403
    assert await tenant_rows(platform, "acme", "SELECT id FROM users WHERE id = %s", (bob_id,))
    for action in ("export.request", "backup.request", "user.erase"):
        assert await audit_rows(platform, "acme", action) == [], action


async def test_one_workspaces_session_gets_nothing_of_anothers_data(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    globex = await create_tenant(api, "globex")
    victim = await add_user(platform, "globex", "secret-person@globex.test", "user")
    theirs = await ask(api, globex, "/exports", globex.auth)
    await wait_ready(api, globex, theirs["id"], globex.auth)
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    own = await browser.get("/t/acme/data")
    assert theirs["id"] not in own.text and "secret-person" not in own.text
    # globex's export link (right token) under acme's base: no such export of acme.
    stolen = f"/t/acme/data/exports/{theirs['id']}/download?token={theirs['download_token']}"
    assert (await browser.get(stolen)).status_code == 404
    # globex's user id under acme's base names no user of globex.
    token = csrf_of(own)
    assert (await browser.get(f"/t/acme/data/erase/{victim}")).status_code == 404
    missing = await browser.post(
        f"/t/acme/data/erase/{victim}", data={"confirm": "secret-person@globex.test", "csrf_token": token}
    )
    assert missing.status_code == 404
    # acme's session on globex's pages: refused.
    access = browser.cookies.get("cv_access", path="/t/acme")
    assert access is not None
    browser.cookies.set("cv_access", access, path="/t/globex")
    for path in ("/t/globex/data", f"/t/globex/data/erase/{victim}", f"/t/globex/{stolen.split('/', 3)[3]}"):
        response = await browser.get(path)
        assert response.status_code == 403 and "secret-person" not in response.text, path
    assert (await browser.post("/t/globex/data/exports", data={"csrf_token": token})).status_code == 403
    assert await tenant_rows(platform, "globex", "SELECT id FROM users WHERE id = %s", (victim,))
    assert await audit_rows(platform, "globex", "export.download") == []
