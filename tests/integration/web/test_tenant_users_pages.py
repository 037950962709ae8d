"""The users page of the tenant app (``/t/{slug}/users``): the list (email, role, status, last sign-in);
inviting (the one-time link shown, the user row, the API's ``user.create`` audit row and the invitation
mail); changing a role, disabling (the user's session stops working at once), enabling and revoking an
invitation (it can no longer be accepted), each audited as ``PATCH /users/{id}`` is; refused input shown
again with nothing changed (400 bad email or role, 409 email taken, 403 one's own role); a plain user
refused (403); CSRF on every form; and that one workspace's session neither reads nor changes another's
users through these pages."""

from __future__ import annotations

import re

import httpx
from litestar import Litestar

from controlplane.platform import Platform
from tests.integration.auth_support import TenantAdmin, add_user, audit_rows, create_tenant, tenant_rows
from tests.integration.conftest import REMOTE
from tests.integration.web.web_support import csrf_of, post_form, sign_in_tenant

USERS = "/t/acme/users"
LINK = re.compile(r"http[^\s<\"]*/t/acme/invitations/accept\?token=([A-Za-z0-9_-]+)")


async def _user(platform: Platform, slug: str, email: str) -> dict[str, object]:
    rows = await tenant_rows(
        platform,
        slug,
        "SELECT id, tenant_role, disabled, invite_hash IS NOT NULL AS invited FROM users WHERE email = %s",
        (email,),
    )
    assert len(rows) == 1, rows
    return rows[0]


def _another_browser(app: Litestar) -> httpx.AsyncClient:
    """A second browser (its own cookies) on the same running app."""
    transport = httpx.ASGITransport(app=app, client=(REMOTE, 4712))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver.local")


async def _signed_in_admin(browser: httpx.AsyncClient, api: httpx.AsyncClient, slug: str = "acme") -> TenantAdmin:
    tenant = await create_tenant(api, slug)
    await sign_in_tenant(browser, slug, tenant.admin_email, tenant.admin_password)
    return tenant


async def test_the_list_shows_every_user_with_role_status_and_last_sign_in(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await _signed_in_admin(browser, api)
    await add_user(platform, "acme", "ann@acme.test", "user")
    page = await browser.get("/t/acme/users")
    assert page.status_code == 200, page.text
    assert acme.admin_email in page.text and "ann@acme.test" in page.text
    assert "(you)" in page.text and "Send invitation" in page.text
    assert 'href="/t/acme/users"' in page.text and 'aria-current="page"' in page.text
    row = page.text[page.text.index("ann@acme.test") :].split("</tr>")[0]
    assert "pill-active" in row and "\u2013" in row  # active, never signed in
    mine = page.text[page.text.index(f"<td>{acme.admin_email}") :].split("</tr>")[0]
    assert " UTC" in mine and "/disable" not in mine  # signed in just now; no actions on oneself


async def test_an_invitation_shows_its_link_once_is_audited_and_mailed(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await _signed_in_admin(browser, api)
    answer = await post_form(
        browser, "/t/acme/users/invite", {"email": "new@acme.test", "role": "collection_manager"}, from_page=USERS
    )
    assert answer.status_code == 200, answer.text
    token = LINK.search(answer.text)
    assert token is not None and "An invitation mail is on its way to" in answer.text
    row = await _user(platform, "acme", "new@acme.test")
    assert row["tenant_role"] == "collection_manager" and row["invited"] is True
    (audited,) = await audit_rows(platform, "acme", "user.create")
    assert audited["entity_id"] == str(row["id"]) and audited["actor"].startswith("user:")
    assert (
        audited["details"].items() >= {"email": "new@acme.test", "role": "collection_manager", "invited": True}.items()
    )
    async with platform.control.connection() as conn:
        cur = await conn.execute(
            "SELECT body FROM mail_outbox WHERE tenant_id = %s AND recipient = %s", (acme.id, "new@acme.test")
        )
        mails = await cur.fetchall()
    assert len(mails) == 1 and token.group(1) in mails[0]["body"]
    listed = await browser.get("/t/acme/users")
    assert "pill-pending" in listed.text and token.group(1) not in listed.text  # shown once only
    # The link works: the invitation is accepted with it.
    accepted = await api.post(
        "/t/acme/auth/invitations/accept",
        json={"invite_token": token.group(1), "password": "a fine new password"},
        headers={"Authorization": ""},
    )
    assert accepted.status_code == 200, accepted.text


async def test_refused_input_is_shown_again_and_changes_nothing(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await _signed_in_admin(browser, api)
    await add_user(platform, "acme", "ann@acme.test", "user")
    bad_email = await post_form(
        browser, "/t/acme/users/invite", {"email": "not-an-address", "role": "user"}, from_page=USERS
    )
    assert bad_email.status_code == 400 and 'value="not-an-address"' in bad_email.text
    assert "flash-error" in bad_email.text
    bad_role = await post_form(
        browser, "/t/acme/users/invite", {"email": "x@acme.test", "role": "overlord"}, from_page=USERS
    )
    assert bad_role.status_code == 400 and "flash-error" in bad_role.text
    taken = await post_form(
        browser, "/t/acme/users/invite", {"email": "ANN@acme.test", "role": "user"}, from_page=USERS
    )
    assert taken.status_code == 409 and "already has this email" in taken.text
    assert len(await tenant_rows(platform, "acme", "SELECT id FROM users")) == 2
    # One's own role: refused as the API refuses it.
    me = await _user(platform, "acme", acme.admin_email)
    own = await post_form(browser, f"/t/acme/users/{me['id']}/role", {"role": "user"}, from_page="/t/acme/users")
    assert own.status_code == 403 and "cannot change your own role" in own.text
    assert (await _user(platform, "acme", acme.admin_email))["tenant_role"] == "tenant_admin"
    ann = await _user(platform, "acme", "ann@acme.test")
    nonsense = await post_form(browser, f"/t/acme/users/{ann['id']}/role", {"role": "god"}, from_page="/t/acme/users")
    assert nonsense.status_code == 400 and (await _user(platform, "acme", "ann@acme.test"))["tenant_role"] == "user"
    assert await audit_rows(platform, "acme", "user.update") == []
    assert await audit_rows(platform, "acme", "user.create") == []


async def test_role_disable_enable_and_revoke_act_at_once_and_are_audited(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform, web_app: Litestar
) -> None:
    acme = await _signed_in_admin(browser, api)
    ann_id = await add_user(platform, "acme", "ann@acme.test", "user")
    async with _another_browser(web_app) as ann:
        await sign_in_tenant(ann, "acme", "ann@acme.test")
        assert (await ann.get("/t/acme/usage")).status_code == 200

        changed = await post_form(browser, f"/t/acme/users/{ann_id}/role", {"role": "collection_manager"},
                                  from_page="/t/acme/users")  # fmt: skip
        assert changed.status_code == 303 and changed.headers["location"] == "/t/acme/users?done=role"
        assert "The role was changed." in (await browser.get(changed.headers["location"])).text
        assert (await _user(platform, "acme", "ann@acme.test"))["tenant_role"] == "collection_manager"

        disabled = await post_form(browser, f"/t/acme/users/{ann_id}/disable", {}, from_page="/t/acme/users")
        assert disabled.status_code == 303 and (await _user(platform, "acme", "ann@acme.test"))["disabled"] is True
        gone = await ann.get("/t/acme/usage")  # her session ended with the commit, cached principal or not
        assert gone.status_code == 303 and "/t/acme/sign-in" in gone.headers["location"]

        enabled = await post_form(browser, f"/t/acme/users/{ann_id}/enable", {}, from_page="/t/acme/users")
        assert enabled.status_code == 303 and (await _user(platform, "acme", "ann@acme.test"))["disabled"] is False

    updates = [row["details"] for row in await audit_rows(platform, "acme", "user.update")]
    assert updates[0]["changed"] == ["tenant_role"] and updates[0]["tenant_role"] == "collection_manager"
    assert updates[1]["disabled"] is True and updates[1]["sessions_ended"] == 1
    assert updates[2]["changed"] == ["disabled"] and updates[2]["disabled"] is False
    assert {row["details"]["actor_label"] for row in await audit_rows(platform, "acme", "user.update")} == {
        acme.admin_email
    }

    invited = await post_form(
        browser, "/t/acme/users/invite", {"email": "bob@acme.test", "role": "user"}, from_page=USERS
    )
    token = LINK.search(invited.text)
    assert token is not None
    bob = await _user(platform, "acme", "bob@acme.test")
    revoked = await post_form(browser, f"/t/acme/users/{bob['id']}/revoke", {}, from_page="/t/acme/users")
    assert revoked.status_code == 303 and revoked.headers["location"] == "/t/acme/users?done=revoked"
    accept = {"invite_token": token.group(1), "password": "a fine new password"}
    refused = await api.post("/t/acme/auth/invitations/accept", json=accept, headers={"Authorization": ""})
    assert refused.status_code == 401
    # Revoking is for pending invitations only: an accepted account is disabled instead.
    not_pending = await post_form(browser, f"/t/acme/users/{ann_id}/revoke", {}, from_page="/t/acme/users")
    assert not_pending.status_code == 409 and (await _user(platform, "acme", "ann@acme.test"))["disabled"] is False


async def test_a_new_invitation_link_replaces_the_old_one(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await _signed_in_admin(browser, api)
    first = LINK.search(
        (
            await post_form(browser, "/t/acme/users/invite", {"email": "b@acme.test", "role": "user"}, from_page=USERS)
        ).text
    )
    bob = await _user(platform, "acme", "b@acme.test")
    again = await post_form(browser, f"/t/acme/users/{bob['id']}/invitation", {}, from_page="/t/acme/users")
    second = LINK.search(again.text)
    assert again.status_code == 200 and first is not None and second is not None
    assert first.group(1) != second.group(1)
    assert [row["entity_id"] for row in await audit_rows(platform, "acme", "user.invite")] == [str(bob["id"])]
    accept = {"invite_token": first.group(1), "password": "a fine new password"}
    assert (
        await api.post("/t/acme/auth/invitations/accept", json=accept, headers={"Authorization": ""})
    ).status_code == 401


async def test_a_plain_user_is_refused_and_every_form_needs_its_csrf_token(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform, web_app: Litestar
) -> None:
    acme = await create_tenant(api, "acme")
    await add_user(platform, "acme", "ann@acme.test", "user")
    bob_id = await add_user(platform, "acme", "bob@acme.test", "user")
    await sign_in_tenant(browser, "acme", "ann@acme.test")
    assert (await browser.get("/t/acme/users")).status_code == 403
    token = csrf_of(await browser.get("/t/acme/usage"))
    for path, data in (
        ("/t/acme/users/invite", {"email": "x@acme.test", "role": "user"}),
        (f"/t/acme/users/{bob_id}/disable", {}),
        (f"/t/acme/users/{bob_id}/role", {"role": "tenant_admin"}),
    ):
        refused = await browser.post(path, data={**data, "csrf_token": token})
        assert refused.status_code == 403, (path, refused.text)
    assert len(await tenant_rows(platform, "acme", "SELECT id FROM users")) == 3
    assert (await _user(platform, "acme", "bob@acme.test"))["disabled"] is False

    async with _another_browser(web_app) as admin:
        await sign_in_tenant(admin, "acme", acme.admin_email, acme.admin_password)
        no_token = await admin.post(f"/t/acme/users/{bob_id}/disable", data={})
        forged = await admin.post(f"/t/acme/users/{bob_id}/disable", data={"csrf_token": token})
        assert no_token.status_code == 403 and forged.status_code == 403
    assert (await _user(platform, "acme", "bob@acme.test"))["disabled"] is False


async def test_one_workspaces_session_reads_and_changes_nothing_of_another(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    await _signed_in_admin(browser, api, "acme")
    await create_tenant(api, "globex")
    await add_user(platform, "globex", "secret-person@globex.test", "user")
    victim = await _user(platform, "globex", "secret-person@globex.test")
    token = csrf_of(await browser.get("/t/acme/users"))
    # acme's cookies are not even sent to globex's pages: the sign-in form, nothing of globex.
    away = await browser.get("/t/globex/users")
    assert away.status_code == 303 and "secret-person" not in away.text
    # acme's session presented there anyway (a forged cookie): refused.
    access = browser.cookies.get("cv_access", path="/t/acme")
    assert access is not None
    browser.cookies.set("cv_access", access, path="/t/globex")
    forged = await browser.get("/t/globex/users")
    assert forged.status_code == 403 and "secret-person" not in forged.text
    changed = await browser.post(f"/t/globex/users/{victim['id']}/disable", data={"csrf_token": token})
    assert changed.status_code == 403
    # globex's user id under acme's base names no user of globex (acme has no such user).
    assert int(str(victim["id"])) > 1
    for path in (f"/t/acme/users/{victim['id']}/disable", f"/t/acme/users/{victim['id']}/role"):
        missing = await browser.post(path, data={"csrf_token": token, "role": "user"})
        assert missing.status_code == 404 and "secret-person" not in missing.text
    assert (await _user(platform, "globex", "secret-person@globex.test"))["disabled"] is False
    assert await audit_rows(platform, "globex", "user.update") == []
