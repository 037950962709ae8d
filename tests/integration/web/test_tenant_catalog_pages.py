"""The catalog pages of the tenant app (``/t/{slug}/players``, ``/teams``, ``/manufacturers``): lists with
search, filters and the htmx live search; adding, editing and deleting (audited like the API); refused
input (blank, duplicate, still used by a card) showing the form again and changing nothing; a plain user
reads but sees no buttons and gets 403 on every change; CSRF; and that one workspace's session reads or
changes nothing of another's through these pages."""

from __future__ import annotations

import httpx
import pytest

from controlplane.platform import Platform
from tests.integration.auth_support import add_user, audit_rows, create_tenant, tenant_rows
from tests.integration.web.collection_support import made
from tests.integration.web.web_support import csrf_of, post_form, sign_in_tenant

EVERY_ROW = {name: f"SELECT * FROM {name}" for name in ("players", "teams", "manufacturers")}  # noqa: S608 (fixed names)


async def test_players_are_searched_filtered_by_team_and_live_searched(
    browser: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    acme = await create_tenant(api, "acme")
    yankees = await made(api, acme, "/teams", {"name": "Yankees", "city": "New York", "league": "AL"})
    orioles = await made(api, acme, "/teams", {"name": "Orioles", "league": "AL"})
    await made(api, acme, "/players", {"first_name": "Derek", "last_name": "Jeter", "team_id": yankees["id"]})
    await made(api, acme, "/players", {"first_name": "Cal", "last_name": "Ripken", "team_id": orioles["id"]})
    await made(api, acme, "/players", {"last_name": "Nobody", "position": "P"})
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)

    everyone = await browser.get("/t/acme/players")
    assert everyone.status_code == 200 and all(n in everyone.text for n in ("Derek Jeter", "Cal Ripken", "Nobody"))
    assert "Yankees (AL)" in everyone.text and "Add a player" in everyone.text
    assert everyone.text.index("Derek Jeter") < everyone.text.index("Nobody") < everyone.text.index("Cal Ripken")
    assert 'href="/t/acme/cards?player_id=' in everyone.text
    found = await browser.get("/t/acme/players?q=rIPk")
    assert "Cal Ripken" in found.text and "Derek Jeter" not in found.text
    by_team = await browser.get(f"/t/acme/players?team_id={yankees['id']}&q=")
    assert "Derek Jeter" in by_team.text and "Cal Ripken" not in by_team.text and "Nobody" not in by_team.text
    live = await browser.get("/t/acme/players?q=jeter", headers={"HX-Request": "true"})
    assert live.status_code == 200 and "Derek Jeter" in live.text and "Nobody" not in live.text
    assert "<html" not in live.text
    assert (await browser.get("/t/acme/players?team_id=zero")).status_code == 400

    teams = await browser.get("/t/acme/teams?league=AL&q=york")
    assert teams.status_code == 200 and "Yankees" in teams.text and "Orioles" not in teams.text
    assert "New York" in teams.text


@pytest.mark.parametrize(
    ("path", "fields", "changed", "shown"),
    [
        (
            "players",
            {"last_name": "Mantle", "first_name": "Mickey", "position": "CF"},
            {"position": "1B"},
            "Mickey Mantle",
        ),
        ("teams", {"name": "Dodgers", "city": "Brooklyn", "league": "NL"}, {"city": "Los Angeles"}, "Dodgers"),
        ("manufacturers", {"name": "Bowman"}, {"name": "Bowman Gum"}, "Bowman"),
    ],
)
async def test_a_catalog_row_is_added_edited_and_deleted_with_audit_rows(
    browser: httpx.AsyncClient,
    api: httpx.AsyncClient,
    platform: Platform,
    path: str,
    fields: dict[str, str],
    changed: dict[str, str],
    shown: str,
) -> None:
    acme = await create_tenant(api, "acme")
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    form = await browser.get(f"/t/acme/{path}/new")
    assert form.status_code == 200
    added = await post_form(browser, f"/t/acme/{path}", fields, from_page=f"/t/acme/{path}/new")
    assert added.status_code == 303 and added.headers["location"] == f"/t/acme/{path}?notice=added"
    listing = await browser.get(added.headers["location"])
    assert shown in listing.text and "Added." in listing.text
    rows = await tenant_rows(platform, "acme", EVERY_ROW[path])
    assert len(rows) == 1 and all(rows[0][k] == v for k, v in fields.items())
    row_id = rows[0]["id"]

    edit = f"/t/acme/{path}/{row_id}/edit"
    saved = await post_form(browser, f"/t/acme/{path}/{row_id}", {**fields, **changed}, from_page=edit)
    assert saved.status_code == 303 and saved.headers["location"] == f"/t/acme/{path}?notice=saved"
    row = (await tenant_rows(platform, "acme", EVERY_ROW[path]))[0]
    assert all(row[k] == v for k, v in changed.items())

    gone = await post_form(browser, f"/t/acme/{path}/{row_id}/delete", {}, from_page=edit)
    assert gone.status_code == 303 and gone.headers["location"] == f"/t/acme/{path}?notice=deleted"
    assert await tenant_rows(platform, "acme", EVERY_ROW[path]) == []
    singular = path.removesuffix("s")
    audited = [len(await audit_rows(platform, "acme", f"{singular}.{a}")) for a in ("create", "update", "delete")]
    assert audited == [1, 1, 1]
    assert (await browser.get(edit)).status_code == 404


async def test_refused_catalog_input_shows_the_form_again_and_changes_nothing(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    topps = await made(api, acme, "/manufacturers", {"name": "Topps"})
    yankees = await made(api, acme, "/teams", {"name": "Yankees"})
    await made(api, acme, "/cards", {"cardnumber": "1", "manufacturer_id": topps["id"]})
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)

    blank = await post_form(
        browser, "/t/acme/players", {"last_name": " ", "first_name": "Kept"}, from_page="/t/acme/players/new"
    )
    assert blank.status_code == 400 and "Last name is required" in blank.text and 'value="Kept"' in blank.text
    long = await post_form(
        browser, "/t/acme/players", {"last_name": "Ok", "position": "x" * 101}, from_page="/t/acme/players/new"
    )
    assert long.status_code == 400 and "Position may be at most 100 characters." in long.text
    ghost = await post_form(
        browser, "/t/acme/players", {"last_name": "Ghost", "team_id": "999"}, from_page="/t/acme/players/new"
    )
    assert ghost.status_code == 400 and "team_id 999 does not name an existing team" in ghost.text
    assert await tenant_rows(platform, "acme", "SELECT * FROM players") == []

    twice = await post_form(browser, "/t/acme/manufacturers", {"name": "Topps"}, from_page="/t/acme/manufacturers/new")
    assert twice.status_code == 409 and "already has this" in twice.text and 'value="Topps"' in twice.text
    edit = f"/t/acme/teams/{yankees['id']}/edit"
    renamed = await post_form(browser, f"/t/acme/teams/{yankees['id']}", {"name": ""}, from_page=edit)
    assert renamed.status_code == 400 and "Name is required" in renamed.text
    used = await post_form(
        browser, f"/t/acme/manufacturers/{topps['id']}/delete", {}, from_page="/t/acme/manufacturers"
    )
    assert used.status_code == 409 and "still used by" in used.text and 'value="Topps"' in used.text
    assert [r["name"] for r in await tenant_rows(platform, "acme", "SELECT name FROM manufacturers")] == ["Topps"]
    assert [r["name"] for r in await tenant_rows(platform, "acme", "SELECT name FROM teams")] == ["Yankees"]
    assert (await browser.get("/t/acme/teams/999/edit")).status_code == 404


async def test_a_plain_user_reads_the_catalog_but_cannot_change_it(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    team = await made(api, acme, "/teams", {"name": "Yankees"})
    await add_user(platform, "acme", "ann@acme.test", "user")
    await sign_in_tenant(browser, "acme", "ann@acme.test")
    listing = await browser.get("/t/acme/teams")
    assert listing.status_code == 200 and "Yankees" in listing.text
    assert "Add a team" not in listing.text and "/edit" not in listing.text
    assert (await browser.get("/t/acme/teams/new")).status_code == 403
    assert (await browser.get(f"/t/acme/teams/{team['id']}/edit")).status_code == 403
    token = csrf_of(listing)
    for path in ("/t/acme/teams", f"/t/acme/teams/{team['id']}", f"/t/acme/teams/{team['id']}/delete"):
        refused = await browser.post(path, data={"name": "Mets", "csrf_token": token})
        assert refused.status_code == 403 and "catalog:write" in refused.text, path
    assert [r["name"] for r in await tenant_rows(platform, "acme", "SELECT name FROM teams")] == ["Yankees"]


async def test_every_catalog_form_needs_its_csrf_token(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    maker = await made(api, acme, "/manufacturers", {"name": "Topps"})
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    base = "/t/acme/manufacturers"
    for path in (base, f"{base}/{maker['id']}", f"{base}/{maker['id']}/delete"):
        assert (await browser.post(path, data={"name": "Fleer"})).status_code == 403, path
        assert (await browser.post(path, data={"name": "Fleer", "csrf_token": "forged"})).status_code == 403, path
    assert [r["name"] for r in await tenant_rows(platform, "acme", "SELECT name FROM manufacturers")] == ["Topps"]


async def test_a_workspace_session_reads_and_changes_nothing_of_another_workspaces_catalog(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    globex = await create_tenant(api, "globex")
    await made(api, acme, "/players", {"last_name": "AcmePlayer"})
    await made(api, globex, "/players", {"last_name": "GlobexOne"})
    secret = await made(api, globex, "/players", {"last_name": "GlobexTwo"})
    await made(api, globex, "/teams", {"name": "GlobexTeam"})
    signed_in = await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)

    for path in ("/t/acme/players", "/t/acme/players?q=globex", "/t/acme/teams", "/t/acme/manufacturers"):
        response = await browser.get(path)
        assert response.status_code == 200 and "Globex" not in response.text, path
    assert (await browser.get(f"/t/acme/players/{secret['id']}/edit")).status_code == 404
    token = csrf_of(await browser.get("/t/acme/players"))
    changed = await browser.post(f"/t/acme/players/{secret['id']}", data={"last_name": "x", "csrf_token": token})
    assert changed.status_code == 404
    assert (await browser.post(f"/t/acme/players/{secret['id']}/delete", data={"csrf_token": token})).status_code == 404
    same_id = await browser.get("/t/acme/players/1/edit")
    assert 'value="AcmePlayer"' in same_id.text and "Globex" not in same_id.text

    cookie = next(c for c in signed_in.headers.get_list("set-cookie") if c.startswith("cv_access="))
    browser.cookies.set("cv_access", cookie.split(";")[0].split("=", 1)[1], path="/t/globex")
    for path in ("/t/globex/players", "/t/globex/teams", f"/t/globex/players/{secret['id']}/edit"):
        response = await browser.get(path)
        assert response.status_code == 403 and "Globex" not in response.text, path
    globex_page = await browser.get("/t/globex/sign-in")
    for path in ("/t/globex/players", f"/t/globex/players/{secret['id']}", f"/t/globex/players/{secret['id']}/delete"):
        response = await browser.post(path, data={"last_name": "pwned", "csrf_token": csrf_of(globex_page)})
        assert response.status_code == 403, path
    rows = await tenant_rows(platform, "globex", "SELECT last_name FROM players ORDER BY id")
    assert [r["last_name"] for r in rows] == ["GlobexOne", "GlobexTwo"]
