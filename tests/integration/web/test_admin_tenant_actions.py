"""The tenant detail page's actions: each does what the admin API does and leaves the same platform audit
row; destructive ones need the slug typed; refusals re-render the page with nothing changed."""

from __future__ import annotations

import uuid

import httpx
from litestar import Litestar

from controlplane.backups.service import BackupService
from controlplane.http.state import BACKUPS_STATE_KEY
from controlplane.platform import Platform
from tests.integration.auth_support import add_user, create_tenant
from tests.integration.conftest import REMOTE
from tests.integration.web.admin_tenant_support import (
    audit_actions,
    quota_limits,
    signed_in_admin,
    tenant_row,
)
from tests.integration.web.web_support import csrf_of, post_form, sign_in_tenant

PAGE = "/admin/ui/tenants/acme"
_GIB = 1024**3


async def _post(browser: httpx.AsyncClient, action: str, data: dict[str, str]) -> httpx.Response:
    return await post_form(browser, f"{PAGE}/{action}", data, from_page=PAGE)


async def _done(browser: httpx.AsyncClient, response: httpx.Response, code: str) -> str:
    """The page the action redirected to (asserting the redirect), as the browser then shows it."""
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"{PAGE}?done={code}"
    page = await browser.get(response.headers["location"])
    assert page.status_code == 200
    return page.text


async def test_suspend_needs_the_slug_then_suspends_and_resume_reopens(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    admin_id = await signed_in_admin(browser, platform)
    await create_tenant(api, "acme")
    page = (await browser.get(PAGE)).text
    assert 'data-confirm="acme"' in page and '<label for="suspend-confirm">Type the slug to confirm</label>' in page
    wrong = await _post(browser, "suspend", {"confirm": "acm"})
    assert wrong.status_code == 400 and "Type the slug &#39;acme&#39; to confirm." in wrong.text
    assert "<h1>acme" in wrong.text  # the page again, with the error
    assert (await tenant_row(platform, "acme"))["status"] == "active"
    assert not [r for r in await audit_actions(platform, "acme") if r["action"] == "tenant.suspend"]

    shown = await _done(browser, await _post(browser, "suspend", {"confirm": "acme"}), "suspended")
    assert "acme suspended" in shown and "pill-suspended" in shown and ">Resume</button>" in shown
    assert (await tenant_row(platform, "acme"))["status"] == "suspended"
    shown = await _done(browser, await _post(browser, "resume", {}), "resumed")
    assert "acme resumed" in shown and (await tenant_row(platform, "acme"))["status"] == "active"
    rows = [r for r in await audit_actions(platform, "acme") if r["action"] in ("tenant.suspend", "tenant.resume")]
    assert [(r["action"], r["outcome"], r["actor"]) for r in rows] == [
        ("tenant.suspend", "succeeded", f"admin:{admin_id}"),
        ("tenant.resume", "succeeded", f"admin:{admin_id}"),
    ]


async def test_resuming_an_active_tenant_is_refused_with_the_page(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await signed_in_admin(browser, platform)
    await create_tenant(api, "acme")
    refused = await _post(browser, "resume", {})
    assert refused.status_code == 409 and "flash-error" in refused.text
    assert [r["outcome"] for r in await audit_actions(platform, "acme") if r["action"] == "tenant.resume"] == ["failed"]


async def test_changing_the_tier_resets_quotas_and_is_audited(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await signed_in_admin(browser, platform)
    await create_tenant(api, "acme")
    shown = await _done(browser, await _post(browser, "tier", {"tier": "enterprise"}), "tier")
    assert "acme&#39;s tier changed" in shown
    assert (await tenant_row(platform, "acme"))["subscription_tier"] == "enterprise"
    assert (await quota_limits(platform, "acme"))["users"] is None  # enterprise: unlimited users
    (row,) = [r for r in await audit_actions(platform, "acme") if r["action"] == "tenant.update"]
    assert row["outcome"] == "succeeded" and row["details"]["requested"] == {"tier": "enterprise"}
    bad = await _post(browser, "tier", {"tier": "platinum"})
    assert bad.status_code == 400 and "flash-error" in bad.text
    assert (await tenant_row(platform, "acme"))["subscription_tier"] == "enterprise"


async def test_quota_limits_are_set_from_the_form_and_bad_values_change_nothing(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await signed_in_admin(browser, platform)
    await create_tenant(api, "acme")
    before = await quota_limits(platform, "acme")
    bad = await _post(browser, "quotas", {"limit_cards": "lots", "limit_users": "3"})
    assert bad.status_code == 400 and "The cards limit must be a whole number." in bad.text
    assert 'value="lots"' in bad.text  # the values posted are kept
    assert await quota_limits(platform, "acme") == before
    form = {"limit_users": "3", "limit_cards": "1,500", "limit_storage_bytes": "", "limit_api_calls_per_hour": "200"}
    shown = await _done(browser, await _post(browser, "quotas", form), "quotas")
    assert "acme&#39;s quotas saved" in shown
    assert await quota_limits(platform, "acme") == {
        "users": 3,
        "cards": 1500,
        "storage_bytes": None,
        "api_calls_per_hour": 200,
    }
    (row,) = [r for r in await audit_actions(platform, "acme") if r["action"] == "tenant.quotas.update"]
    assert row["outcome"] == "succeeded" and row["details"]["limits"]["cards"] == 1500


async def test_emergency_storage_is_granted_and_shown(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await signed_in_admin(browser, platform)
    await create_tenant(api, "acme")
    short = await _post(browser, "storage-expansion", {"extra_gib": "2", "hours": "24", "reason": "x"})
    assert short.status_code == 400 and "flash-error" in short.text
    data = {"extra_gib": "2", "hours": "24", "reason": "launch day"}
    shown = await _done(browser, await _post(browser, "storage-expansion", data), "expanded")
    assert "Extra storage granted to acme" in shown and "+2.0 GiB until" in shown and "launch day" in shown
    # The too-short reason was refused before the action, as the API's request validation does.
    (row,) = [r for r in await audit_actions(platform, "acme") if r["action"] == "tenant.storage.expand"]
    assert row["outcome"] == "succeeded" and row["details"]["extra_bytes"] == 2 * _GIB and row["details"]["hours"] == 24


async def test_maintenance_runs_now_and_is_audited(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await signed_in_admin(browser, platform)
    await create_tenant(api, "acme")
    shown = await _done(browser, await _post(browser, "maintenance", {"action": "vacuum"}), "vacuum")
    assert "VACUUM of acme finished" in shown
    assert [r["outcome"] for r in await audit_actions(platform, "acme") if r["action"] == "tenant.vacuum"] == [
        "succeeded"
    ]


async def test_backup_now_then_restore_needs_the_slug_and_restores(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, web_app: Litestar, platform: Platform
) -> None:
    await signed_in_admin(browser, platform)
    acme = await create_tenant(api, "acme")
    shown = await _done(browser, await _post(browser, "backup", {}), "backup")
    assert "Backup of acme started" in shown
    backups: BackupService = web_app.state[BACKUPS_STATE_KEY]
    await backups.wait_background()
    (backup,) = await backups.list_for_tenant("acme")
    assert backup.status.value == "succeeded" and backup.trigger.value == "manual"
    (row,) = [r for r in await audit_actions(platform, "acme") if r["action"] == "tenant.backup"]
    assert row["outcome"] == "succeeded"
    # A card made after the backup is gone once the backup is restored.
    made = await api.post(acme.api("/cards"), json={"cardnumber": "late", "year": 1990}, headers=acme.auth)
    assert made.status_code == 201
    page = (await browser.get(PAGE)).text
    assert f'<option value="{backup.id}"' in page and '<label for="restore-confirm">' in page
    wrong = await _post(browser, "restore", {"backup_id": str(backup.id), "confirm": "globex"})
    assert wrong.status_code == 400 and not [
        r for r in await audit_actions(platform, "acme") if r["action"] == "tenant.restore"
    ]
    unknown = await _post(browser, "restore", {"backup_id": str(uuid.uuid4()), "confirm": "acme"})
    assert unknown.status_code == 404
    data = {"backup_id": str(backup.id), "confirm": "acme"}  # pre_backup unticked: no backup first
    shown = await _done(browser, await _post(browser, "restore", data), "restored")
    assert "acme restored from the backup" in shown
    login = await api.post("/t/acme/auth/token", json={"email": acme.admin_email, "password": acme.admin_password})
    cards = await api.get(acme.api("/cards"), headers={"Authorization": f"Bearer {login.json()['access_token']}"})
    assert [c["cardnumber"] for c in cards.json()["items"]] == []
    rows = [r for r in await audit_actions(platform, "acme") if r["action"] == "tenant.restore"]
    assert [r["outcome"] for r in rows] == ["failed", "succeeded"]  # the unknown backup, then the restore


async def test_a_forged_csrf_token_or_a_tenant_session_changes_nothing(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, web_app: Litestar, platform: Platform
) -> None:
    await signed_in_admin(browser, platform)
    await create_tenant(api, "acme")
    forged = await browser.post(f"{PAGE}/suspend", data={"confirm": "acme", "csrf_token": "forged"})
    assert forged.status_code == 403
    missing = await browser.post(f"{PAGE}/suspend", data={"confirm": "acme"})
    assert missing.status_code == 403
    unknown = await post_form(browser, "/admin/ui/tenants/nobody/suspend", {"confirm": "nobody"}, from_page=PAGE)
    assert unknown.status_code == 404 and "Not found" in unknown.text
    # A tenant admin's session (its cookie carried to the dashboard) is no admin session.
    transport = httpx.ASGITransport(app=web_app, client=(REMOTE, 4711))
    async with httpx.AsyncClient(transport=transport, base_url=str(browser.base_url)) as other:
        await add_user(platform, "acme", "ann@acme.test", "tenant_admin")
        signed_in = await sign_in_tenant(other, "acme", "ann@acme.test")
        token = signed_in.headers.get_list("set-cookie")[0].split(";")[0].split("=", 1)[1]
        other.cookies.set("cv_access", token, path="/admin/ui")
        form = await other.get("/admin/ui/")  # the sign-in form: that session is nobody here
        assert 'action="/admin/ui/sign-in"' in form.text
        refused = await other.post(f"{PAGE}/suspend", data={"confirm": "acme", "csrf_token": csrf_of(form)})
        assert refused.status_code == 303 and refused.headers["location"] == "/admin/ui/"
    assert (await tenant_row(platform, "acme"))["status"] == "active"
    assert not [r for r in await audit_actions(platform, "acme") if r["action"] == "tenant.suspend"]
