"""The cards pages of the tenant app (``/t/{slug}/cards``): the list with search, filters, sort, pages and
the htmx live search; adding a card with an image (stored, audited and served to ``<img>``); editing,
replacing and removing the image; deleting; refused input leaving everything as it was (form shown again
with the values, the API's quota status); ownership (a plain user changes only their own cards, a user
without ``cards:write_own`` sees no buttons and gets 403); CSRF on every form; and that one workspace's
session reads or changes nothing of another's through these pages."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import httpx
import pytest

from controlplane.platform import Platform
from controlplane.settings import Settings
from controlplane.storage.local import LocalStorage
from tests.integration.auth_support import TenantAdmin, add_user, audit_rows, create_tenant, tenant_rows
from tests.integration.web.collection_support import jpeg, made, png, post_card
from tests.integration.web.web_support import csrf_of, sign_in_tenant

CARD = re.compile(r"/t/acme/cards/(\d+)\?notice=added$")
BASE_DOMAIN = "cards.test"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The tests' settings, with tenants also reached on ``{slug}.cards.test`` (the app at ``/``)."""
    return dataclasses.replace(settings, http=dataclasses.replace(settings.http, base_domain=BASE_DOMAIN))


async def _catalog(api: httpx.AsyncClient, acme: TenantAdmin) -> dict[str, dict[str, Any]]:
    team = await made(api, acme, "/teams", {"name": "Yankees", "league": "AL"})
    return {
        "team": team,
        "jeter": await made(
            api, acme, "/players", {"first_name": "Derek", "last_name": "Jeter", "team_id": team["id"]}
        ),
        "ripken": await made(api, acme, "/players", {"first_name": "Cal", "last_name": "Ripken"}),
        "topps": await made(api, acme, "/manufacturers", {"name": "Topps"}),
    }


async def _card_count(platform: Platform, slug: str) -> int:
    return int((await tenant_rows(platform, slug, "SELECT count(*) AS n FROM cards"))[0]["n"])


async def test_the_list_searches_filters_sorts_and_answers_htmx_with_the_results_only(
    browser: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    acme = await create_tenant(api, "acme")
    cat = await _catalog(api, acme)
    rookie = {"player_id": cat["jeter"]["id"], "manufacturer_id": cat["topps"]["id"], "condition": "mint"}
    await made(api, acme, "/cards", {"cardnumber": "T-93", "year": 1993, "notes": "rookie", **rookie})
    await made(api, acme, "/cards", {"cardnumber": "F-88", "player_id": cat["ripken"]["id"], "year": 1988})
    await made(api, acme, "/cards", {"cardnumber": "U-01", "year": 2001, "condition": "good"})
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)

    everything = await browser.get("/t/acme/cards")
    assert everything.status_code == 200 and all(n in everything.text for n in ("T-93", "F-88", "U-01"))
    assert "Derek Jeter" in everything.text and "Topps" in everything.text and "Add a card" in everything.text
    assert 'hx-get="/t/acme/cards"' in everything.text and 'hx-push-url="true"' in everything.text

    async def shown(query: str) -> set[str]:
        response = await browser.get(f"/t/acme/cards?{query}")
        assert response.status_code == 200, response.text
        return {n for n in ("T-93", "F-88", "U-01") if n in response.text}

    assert await shown("q=ROOKIE") == {"T-93"}  # notes, case-insensitive
    assert await shown("q=f-8") == {"F-88"}  # card number
    assert await shown(f"player_id={cat['ripken']['id']}") == {"F-88"}
    assert await shown(f"manufacturer_id={cat['topps']['id']}") == {"T-93"}
    assert await shown("year_min=1990&year_max=2000") == {"T-93"}
    assert await shown("condition=good&q=&player_id=") == {"U-01"}  # blank fields of a plain GET form: no filter
    assert await shown("q=nothing-like-it") == set()
    ordered = (await browser.get("/t/acme/cards?sort=year")).text
    assert ordered.index("F-88") < ordered.index("T-93") < ordered.index("U-01")
    newest = (await browser.get("/t/acme/cards?sort=-year")).text
    assert newest.index("U-01") < newest.index("T-93") < newest.index("F-88")

    live = await browser.get("/t/acme/cards?q=rookie", headers={"HX-Request": "true"})
    assert live.status_code == 200 and "T-93" in live.text and "F-88" not in live.text
    assert "<html" not in live.text and 'class="filters"' not in live.text

    bad = await browser.get("/t/acme/cards?year_min=1700")
    assert bad.status_code == 400 and "Year from must be a whole number from 1860 to 2100." in bad.text
    assert (await browser.get("/t/acme/cards?player_id=abc")).status_code == 400


async def test_the_list_pages_with_the_apis_keyset_cursor(browser: httpx.AsyncClient, api: httpx.AsyncClient) -> None:
    acme = await create_tenant(api, "acme")
    for n in range(52):
        await made(api, acme, "/cards", {"cardnumber": f"N-{n:03d}", "year": 1990})
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    first = await browser.get("/t/acme/cards?sort=cardnumber")
    found = re.search(r'href="(/t/acme/cards\?[^"]*cursor=[^"]+)" rel="next"', first.text)
    assert found is not None and "N-049" in first.text and "N-050" not in first.text
    second = await browser.get(found.group(1).replace("&amp;", "&"))
    assert second.status_code == 200 and "N-050" in second.text and "N-051" in second.text
    assert "N-049" not in second.text and "First page" in second.text and 'rel="next"' not in second.text
    assert (await browser.get("/t/acme/cards?cursor=forged")).status_code == 400


async def test_a_card_is_added_with_its_image_which_is_stored_audited_and_served(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    cat = await _catalog(api, acme)
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    form = await browser.get("/t/acme/cards/new")
    assert form.status_code == 200 and 'enctype="multipart/form-data"' in form.text
    for label in ("Card number", "Player", "Team", "Manufacturer", "Year", "Condition", "Notes", "Image"):
        assert f">{label}</label>" in form.text
    image = png()
    refs = {
        f"{name}_id": str(cat[key]["id"])
        for name, key in (("player", "jeter"), ("team", "team"), ("manufacturer", "topps"))
    }
    fields = {"cardnumber": " 42-A ", "year": "1996", "condition": "near_mint", "notes": "signed", **refs}
    added = await post_card(
        browser, "/t/acme/cards", fields, from_page="/t/acme/cards/new", image=("a.png", image, "image/png")
    )
    assert added.status_code == 303, added.text
    found = CARD.search(added.headers["location"])
    assert found is not None
    card_id = int(found.group(1))

    row = (await tenant_rows(platform, "acme", "SELECT * FROM cards WHERE id = %s", (card_id,)))[0]
    assert row["cardnumber"] == "42-A" and row["year"] == 1996 and row["condition"] == "near_mint"
    assert row["player_id"] == cat["jeter"]["id"] and row["notes"] == "signed" and row["image"] is not None
    assert [r["entity_id"] for r in await audit_rows(platform, "acme", "card.create")] == [str(card_id)]
    assert len(await audit_rows(platform, "acme", "card.image.put")) == 1

    detail = await browser.get(added.headers["location"])
    src = f"/t/acme/cards/{card_id}/image?v="
    assert detail.status_code == 200 and src in detail.text and "Derek Jeter" in detail.text and "Added." in detail.text
    served = await browser.get(f"/t/acme/cards/{card_id}/image")
    assert served.status_code == 200 and served.content == image and served.headers["content-type"] == "image/png"
    again = await browser.get(f"/t/acme/cards/{card_id}/image", headers={"If-None-Match": served.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert src in (await browser.get("/t/acme/cards")).text  # the thumbnail


async def test_refused_input_shows_the_form_again_and_changes_nothing(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    new = "/t/acme/cards/new"
    late = await post_card(
        browser, "/t/acme/cards", {"cardnumber": "K-1", "year": "1700", "notes": "kept"}, from_page=new
    )
    assert late.status_code == 400 and "Year must be a whole number from 1860 to 2100." in late.text
    assert 'value="K-1"' in late.text and ">kept</textarea>" in late.text and 'value="1700"' in late.text
    blank = await post_card(browser, "/t/acme/cards", {"cardnumber": "  "}, from_page=new)
    assert blank.status_code == 400 and "Card number is required" in blank.text
    ghost = await post_card(browser, "/t/acme/cards", {"cardnumber": "K-2", "player_id": "999"}, from_page=new)
    assert ghost.status_code == 400 and "player_id 999 does not name an existing player" in ghost.text
    not_image = ("a.png", b"just some text, not a picture", "image/png")
    refused = await post_card(browser, "/t/acme/cards", {"cardnumber": "K-3"}, from_page=new, image=not_image)
    assert refused.status_code == 415 and "unrecognised signature" in refused.text and 'value="K-3"' in refused.text
    liar = ("a.jpg", png(), "image/jpeg")
    assert (
        await post_card(browser, "/t/acme/cards", {"cardnumber": "K-4"}, from_page=new, image=liar)
    ).status_code == 415
    assert await _card_count(platform, "acme") == 0  # the refused image took its card with it
    assert await tenant_rows(platform, "acme", "SELECT * FROM files") == []
    assert await audit_rows(platform, "acme", "card.create") == []

    assert (await api.put("/admin/tenants/acme/quotas", json={"limits": {"cards": 1}})).status_code == 200
    assert (await post_card(browser, "/t/acme/cards", {"cardnumber": "Q-1"}, from_page=new)).status_code == 303
    full = await post_card(browser, "/t/acme/cards", {"cardnumber": "Q-2"}, from_page=new)
    assert full.status_code == 403 and "the cards quota is 1" in full.text and 'value="Q-2"' in full.text
    assert await _card_count(platform, "acme") == 1


async def test_a_card_is_edited_its_image_replaced_and_removed_then_it_is_deleted(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform, settings: Settings
) -> None:
    acme = await create_tenant(api, "acme")
    stored = LocalStorage(settings.data_dir / "storage").tenant_dir(acme.id)

    def objects() -> list[bytes]:
        return [path.read_bytes() for path in stored.iterdir()] if stored.exists() else []

    cat = await _catalog(api, acme)
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    fields = {"cardnumber": "E-1", "year": "1990", "player_id": str(cat["ripken"]["id"])}
    added = await post_card(
        browser, "/t/acme/cards", fields, from_page="/t/acme/cards/new", image=("a.png", png(), "image/png")
    )
    card_id = int(CARD.search(added.headers["location"]).group(1))  # type: ignore[union-attr]
    edit = f"/t/acme/cards/{card_id}/edit"
    form = await browser.get(edit)
    assert form.status_code == 200 and 'value="E-1"' in form.text and "Remove the current image" in form.text

    fields = {"cardnumber": "E-2", "year": "", "player_id": "", "condition": "fair", "notes": ""}
    saved = await post_card(
        browser, f"/t/acme/cards/{card_id}", fields, from_page=edit, image=("b.jpg", jpeg(), "image/jpeg")
    )
    assert saved.status_code == 303 and saved.headers["location"] == f"/t/acme/cards/{card_id}?notice=saved"
    row = (await tenant_rows(platform, "acme", "SELECT * FROM cards WHERE id = %s", (card_id,)))[0]
    assert (row["cardnumber"], row["year"], row["player_id"], row["condition"]) == ("E-2", None, None, "fair")
    files = await tenant_rows(platform, "acme", "SELECT content_type FROM files")
    assert files == [{"content_type": "image/jpeg"}]  # the PNG's row went with its replacement
    assert (await browser.get(f"/t/acme/cards/{card_id}/image")).content == jpeg()
    assert objects() == [jpeg()]  # the PNG's object was removed after the commit

    bad = await post_card(
        browser, f"/t/acme/cards/{card_id}", {**fields, "cardnumber": "E-3", "year": "x"}, from_page=edit
    )
    assert bad.status_code == 400 and 'value="E-3"' in bad.text
    assert (await tenant_rows(platform, "acme", "SELECT cardnumber FROM cards"))[0]["cardnumber"] == "E-2"

    removed = await post_card(browser, f"/t/acme/cards/{card_id}", {**fields, "remove_image": "yes"}, from_page=edit)
    assert removed.status_code == 303
    assert await tenant_rows(platform, "acme", "SELECT * FROM files") == []
    assert (await browser.get(f"/t/acme/cards/{card_id}/image")).status_code == 404
    assert objects() == []

    again = await post_card(
        browser, f"/t/acme/cards/{card_id}", fields, from_page=edit, image=("c.png", png(), "image/png")
    )
    assert again.status_code == 303 and objects() == [png()]
    detail = await browser.get(f"/t/acme/cards/{card_id}")
    gone = await browser.post(f"/t/acme/cards/{card_id}/delete", data={"csrf_token": csrf_of(detail)})
    assert gone.status_code == 303 and gone.headers["location"] == "/t/acme/cards?notice=deleted"
    assert await _card_count(platform, "acme") == 0 and objects() == []
    assert (await browser.get(f"/t/acme/cards/{card_id}")).status_code == 404
    assert [r["entity_id"] for r in await audit_rows(platform, "acme", "card.delete")] == [str(card_id)]


async def test_a_plain_user_changes_only_their_own_cards_and_one_without_write_sees_no_buttons(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    theirs = await made(api, acme, "/cards", {"cardnumber": "ADMIN-1"})
    await add_user(platform, "acme", "ann@acme.test", "user")
    await sign_in_tenant(browser, "acme", "ann@acme.test")
    other = f"/t/acme/cards/{theirs['id']}"
    detail = await browser.get(other)
    assert detail.status_code == 200 and "ADMIN-1" in detail.text
    assert "Edit card" not in detail.text and "Delete card" not in detail.text
    assert (await browser.get(f"{other}/edit")).status_code == 403
    token = csrf_of(detail)
    changed = await browser.post(other, data={"cardnumber": "MINE", "csrf_token": token})
    assert changed.status_code == 403 and "cards:write_all" in changed.text
    assert (await browser.post(f"{other}/delete", data={"csrf_token": token})).status_code == 403
    assert (await tenant_rows(platform, "acme", "SELECT cardnumber FROM cards"))[0]["cardnumber"] == "ADMIN-1"

    mine = await post_card(browser, "/t/acme/cards", {"cardnumber": "ANN-1"}, from_page="/t/acme/cards/new")
    mine_id = int(CARD.search(mine.headers["location"]).group(1))  # type: ignore[union-attr]
    assert "Edit card" in (await browser.get(f"/t/acme/cards/{mine_id}")).text
    edit = f"/t/acme/cards/{mine_id}/edit"
    assert (
        await post_card(browser, f"/t/acme/cards/{mine_id}", {"cardnumber": "ANN-2"}, from_page=edit)
    ).status_code == 303

    await add_user(platform, "acme", "rex@acme.test", "user", permissions={"cards:write_own": False})
    await sign_in_tenant(browser, "acme", "rex@acme.test")  # the same browser, now signed in as rex
    listing = await browser.get("/t/acme/cards")
    assert listing.status_code == 200 and "ANN-2" in listing.text and "Add a card" not in listing.text
    assert "Edit card" not in (await browser.get(f"/t/acme/cards/{mine_id}")).text
    assert (await browser.get("/t/acme/cards/new")).status_code == 403
    posted = await browser.post("/t/acme/cards", data={"cardnumber": "REX", "csrf_token": csrf_of(listing)})
    assert posted.status_code == 403 and "cards:write_own" in posted.text
    assert await _card_count(platform, "acme") == 2


async def test_every_card_form_needs_its_csrf_token(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    card = await made(api, acme, "/cards", {"cardnumber": "C-1"})
    await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    for path in ("/t/acme/cards", f"/t/acme/cards/{card['id']}", f"/t/acme/cards/{card['id']}/delete"):
        refused = await browser.post(path, data={"cardnumber": "X"})
        assert refused.status_code == 403 and "csrf_failed" in refused.text, path
        forged = await browser.post(path, data={"cardnumber": "X", "csrf_token": "forged"})
        assert forged.status_code == 403, path
    assert [r["cardnumber"] for r in await tenant_rows(platform, "acme", "SELECT cardnumber FROM cards")] == ["C-1"]


async def test_a_workspace_session_reads_and_changes_nothing_of_another_workspace(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    globex = await create_tenant(api, "globex")
    await made(api, acme, "/cards", {"cardnumber": "ACME-1"})
    await made(api, globex, "/cards", {"cardnumber": "GLOBEX-1"})
    secret = await made(api, globex, "/cards", {"cardnumber": "GLOBEX-2", "notes": "globex only"})
    headers = {**globex.auth, "Content-Type": "image/png"}
    upload = await api.put(globex.api(f"/cards/{secret['id']}/image"), content=png(), headers=headers)
    assert upload.status_code == 200
    signed_in = await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)

    # globex's ids under acme's base name acme's own rows, or nothing.
    listing = await browser.get("/t/acme/cards?q=globex")
    assert listing.status_code == 200 and "GLOBEX" not in listing.text
    assert "GLOBEX" not in (await browser.get("/t/acme/cards")).text
    assert (await browser.get(f"/t/acme/cards/{secret['id']}")).status_code == 404
    assert (await browser.get(f"/t/acme/cards/{secret['id']}/image")).status_code == 404
    assert (await browser.get(f"/t/acme/cards/{secret['id']}/edit")).status_code == 404
    token = csrf_of(listing)
    assert (await browser.post(f"/t/acme/cards/{secret['id']}/delete", data={"csrf_token": token})).status_code == 404
    same_id = await browser.get("/t/acme/cards/1")
    assert "ACME-1" in same_id.text and "GLOBEX" not in same_id.text

    # acme's session cookie presented to globex's pages signs in nobody there.
    cookie = next(c for c in signed_in.headers.get_list("set-cookie") if c.startswith("cv_access="))
    browser.cookies.set("cv_access", cookie.split(";")[0].split("=", 1)[1], path="/t/globex")
    for path in ("/t/globex/cards", f"/t/globex/cards/{secret['id']}", f"/t/globex/cards/{secret['id']}/image"):
        response = await browser.get(path)
        assert response.status_code == 403 and "GLOBEX" not in response.text, path
    globex_page = await browser.get("/t/globex/sign-in")
    for path in (f"/t/globex/cards/{secret['id']}/delete", f"/t/globex/cards/{secret['id']}"):
        response = await browser.post(path, data={"cardnumber": "pwned", "csrf_token": csrf_of(globex_page)})
        assert response.status_code == 403, path
    rows = await tenant_rows(platform, "globex", "SELECT cardnumber FROM cards ORDER BY id")
    assert [r["cardnumber"] for r in rows] == ["GLOBEX-1", "GLOBEX-2"]
    assert len(await tenant_rows(platform, "globex", "SELECT * FROM files")) == 1


async def test_on_the_tenants_subdomain_the_pages_and_the_image_live_at_the_root(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform
) -> None:
    acme = await create_tenant(api, "acme")
    root = f"http://acme.{BASE_DOMAIN}"
    form = await browser.get(f"{root}/sign-in")
    data = {"email": acme.admin_email, "password": acme.admin_password, "csrf_token": csrf_of(form)}
    assert (await browser.post(f"{root}/sign-in", data=data)).headers["location"] == "/cards"
    image = ("a.png", png(), "image/png")
    added = await post_card(
        browser, f"{root}/cards", {"cardnumber": "SUB-1"}, from_page=f"{root}/cards/new", image=image
    )
    assert added.status_code == 303 and re.fullmatch(r"/cards/\d+\?notice=added", added.headers["location"])
    listing = await browser.get(f"{root}/cards")
    assert 'href="/cards/new"' in listing.text and 'hx-get="/cards"' in listing.text and "/t/acme" not in listing.text
    found = re.search(r'src="(/cards/\d+/image\?v=\w+)"', listing.text)
    assert found is not None and (await browser.get(f"{root}{found.group(1)}")).content == image[1]
    assert [r["cardnumber"] for r in await tenant_rows(platform, "acme", "SELECT cardnumber FROM cards")] == ["SUB-1"]
