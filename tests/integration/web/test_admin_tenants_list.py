"""The dashboard's tenants list: search, filters, sorts and keyset pages over registry rows; the htmx
partial; the New tenant form (created like ``POST /admin/tenants``, bad input re-rendered, nothing made);
and that nobody but a super-admin reaches any of it."""

from __future__ import annotations

import base64
from typing import Any

import httpx

from controlplane.platform import Platform
from tests.integration.auth_support import create_tenant, tenant_rows
from tests.integration.web.admin_pages_support import (
    Listed,
    default_server,
    listed_slugs,
    next_link,
    register,
    signed_in_admin,
)
from tests.integration.web.web_support import csrf_of, post_form, sign_in_tenant

FLEET = [
    Listed("alpha-books", "Alpha Books", size=5_000, growth=10.0, cards=10, users=1),
    Listed("beta-cards", "Beta 100% Cards", tier="professional", size=9_000, growth=500.0),
    Listed("gamma-vault", "Gamma Vault", status="suspended", tier="enterprise", size=1_000, growth=2_000.0),
    Listed("delta-gamma", "Delta", size=7_000),
    Listed("epsilon", "Epsilon_Two", status="suspended"),
]


async def test_search_filters_and_sorts_pick_and_order_the_right_tenants(
    browser: httpx.AsyncClient, platform: Platform, control: Any
) -> None:
    await signed_in_admin(browser, platform)
    await register(control, FLEET)
    _, server = await default_server(control)

    async def slugs(query: str) -> list[str]:
        response = await browser.get(f"/admin/ui/tenants?{query}")
        assert response.status_code == 200, response.text
        return listed_slugs(response.text)

    assert await slugs("") == ["alpha-books", "beta-cards", "delta-gamma", "epsilon", "gamma-vault"]
    assert await slugs("q=GAMMA") == ["delta-gamma", "gamma-vault"]  # slug or name, any case
    assert await slugs("q=100%25") == ["beta-cards"]  # '%' is a character, not a wildcard
    assert await slugs("q=n_t") == ["epsilon"]  # so is '_' ("Epsilon_Two")...
    assert await slugs("q=a_b") == []  # ... which would match "Alpha Books" as a wildcard
    assert await slugs("status=suspended") == ["epsilon", "gamma-vault"]
    assert await slugs("status=suspended&tier=enterprise") == ["gamma-vault"]
    assert await slugs(f"server={server}&tier=professional") == ["beta-cards"]
    assert await slugs("server=elsewhere") == []
    assert await slugs("sort=size") == ["beta-cards", "delta-gamma", "alpha-books", "gamma-vault", "epsilon"]
    assert await slugs("sort=growth") == ["gamma-vault", "beta-cards", "alpha-books", "delta-gamma", "epsilon"]
    page = (await browser.get("/admin/ui/tenants?q=alpha")).text
    assert "10 B/day" in page and 'aria-label="cards of alpha-books"' in page and "8.8 KiB" not in page


async def test_keyset_pages_cover_every_tenant_once_in_each_order(
    browser: httpx.AsyncClient, platform: Platform, control: Any
) -> None:
    await signed_in_admin(browser, platform)
    fleet = [Listed(f"bulk-{n:03d}", f"Bulk {n % 7}", size=(n * 37) % 101, growth=float(n % 5)) for n in range(120)]
    await register(control, fleet)
    by_slug = {t.slug: t for t in fleet}
    keys = {
        "name": lambda s: (by_slug[s].name, s),
        "size": lambda s: (-(by_slug[s].size or 0), s),
        "growth": lambda s: (-(by_slug[s].growth or 0), s),
    }
    for sort in ("name", "size", "growth"):
        seen: list[str] = []
        url: str | None = f"/admin/ui/tenants?sort={sort}"
        pages = 0
        while url is not None:
            response = await browser.get(url)
            assert response.status_code == 200, response.text
            rows = listed_slugs(response.text)
            assert len(rows) <= 50
            seen += rows
            url = next_link(response.text)
            pages += 1
        assert pages == 3 and sorted(seen) == sorted(t.slug for t in fleet), sort
        assert seen == sorted(seen, key=keys[sort]), sort


async def test_the_htmx_refresh_answers_the_rows_only(
    browser: httpx.AsyncClient, platform: Platform, control: Any
) -> None:
    await signed_in_admin(browser, platform)
    await register(control, FLEET)
    partial = await browser.get("/admin/ui/tenants?q=beta", headers={"HX-Request": "true"})
    assert partial.status_code == 200
    body = partial.text.strip()
    assert body.startswith("<tr>") and "<html" not in body and "<table" not in body
    assert listed_slugs(body) == ["beta-cards"]
    full = await browser.get("/admin/ui/tenants?q=beta")
    assert 'hx-get="/admin/ui/tenants"' in full.text and 'hx-target="#tenant-rows"' in full.text
    assert 'hx-push-url="true"' in full.text and '<form method="get" action="/admin/ui/tenants"' in full.text


async def test_bad_filters_and_foreign_cursors_are_400_pages(
    browser: httpx.AsyncClient, platform: Platform, control: Any
) -> None:
    await signed_in_admin(browser, platform)
    await register(control, [Listed(f"many-{n:02d}", f"Many {n}") for n in range(55)])
    huge = base64.urlsafe_b64encode(b'["tenants:size", 1e30, "a"]').decode().rstrip("=")
    bad = ("sort=price", "status=gone", "tier=gold", "cursor=garbage", "q=" + "x" * 101, "q=%00", "server=%00")
    for query in (*bad, f"sort=size&cursor={huge}"):
        response = await browser.get(f"/admin/ui/tenants?{query}")
        assert response.status_code == 400, query
        assert "<html" in response.text
    link = next_link((await browser.get("/admin/ui/tenants")).text)
    assert link is not None
    cursor = link.split("cursor=")[1]
    response = await browser.get(f"/admin/ui/tenants?sort=size&cursor={cursor}")  # issued for another order
    assert response.status_code == 400 and "start again" in response.text


async def test_an_admin_creates_a_tenant_with_its_first_admin(
    browser: httpx.AsyncClient, platform: Platform, control: Any
) -> None:
    await signed_in_admin(browser, platform)
    form = {"slug": "new-shop", "name": "New Shop", "tier": "professional", "admin_email": "owner@new.test"}
    response = await post_form(browser, "/admin/ui/tenants", {**form, "admin_password": "a fine long password"})
    assert response.status_code == 303 and response.headers["location"] == "/admin/ui/tenants/new-shop"
    row = await (
        await control.execute("SELECT status, subscription_tier FROM tenants WHERE slug = 'new-shop'")
    ).fetchone()
    assert row == ("active", "professional")
    users = await tenant_rows(platform, "new-shop", "SELECT email, tenant_role, invite_hash FROM users")
    assert [(u["email"], u["tenant_role"], u["invite_hash"]) for u in users] == [
        ("owner@new.test", "tenant_admin", None)
    ]
    await sign_in_tenant(browser, "new-shop", "owner@new.test", "a fine long password")
    audit = await control.execute(
        "SELECT outcome, actor, details->>'admin_email' FROM platform_audit"
        " WHERE action = 'tenant.create' AND tenant_slug = 'new-shop'"
    )
    [(outcome, actor, email)] = await audit.fetchall()
    assert outcome == "succeeded" and actor.startswith("admin:") and email == "owner@new.test"


async def test_without_a_password_the_first_admin_is_invited_by_mail(
    browser: httpx.AsyncClient, platform: Platform, control: Any
) -> None:
    await signed_in_admin(browser, platform)
    form = {"slug": "mailed-shop", "name": "Mailed", "tier": "starter", "admin_email": "Boss@Mailed.test"}
    response = await post_form(browser, "/admin/ui/tenants", form)
    assert response.status_code == 303, response.text
    users = await tenant_rows(platform, "mailed-shop", "SELECT email, password_hash, invite_hash FROM users")
    assert len(users) == 1 and users[0]["password_hash"] == "" and users[0]["invite_hash"] is not None
    mails = await control.execute("SELECT kind, recipient, body FROM mail_outbox")
    [(kind, recipient, body)] = await mails.fetchall()
    assert kind == "invitation" and recipient == "Boss@Mailed.test" and "/t/mailed-shop/invitations/accept" in body


async def test_bad_input_re_renders_the_form_with_the_error_and_creates_nothing(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform, control: Any
) -> None:
    await create_tenant(api, "taken-shop")
    await signed_in_admin(browser, platform)
    count = "SELECT count(*) FROM tenants"
    before = (await (await control.execute(count)).fetchone())[0]
    cases = [
        ({"slug": "taken-shop", "name": "Again"}, 409, "already taken"),
        ({"slug": "Bad Slug!", "name": "Bad"}, 400, "slug must be"),
        ({"slug": "admin", "name": "Reserved"}, 400, "reserved"),
        ({"slug": "fine-slug", "name": ""}, 400, "name"),
        ({"slug": "fine-slug", "name": "Fine", "tier": "gold"}, 400, "unknown tier"),
        ({"slug": "fine-slug", "name": "Fine", "admin_email": "not-an-email"}, 400, "email"),
        ({"slug": "fine-slug", "name": "Fine", "admin_email": "a@b.test", "admin_password": "short"}, 400, "password"),
        ({"slug": "fine-slug", "name": "Fine", "admin_password": "a fine long password"}, 400, "admin email"),
    ]
    for data, status, message in cases:
        response = await post_form(
            browser, "/admin/ui/tenants", {"tier": "starter", **data}, from_page="/admin/ui/tenants"
        )
        assert response.status_code == status, (data, response.text[-500:])
        assert 'class="flash flash-error"' in response.text and message in response.text.lower(), data
        assert f'value="{data["name"]}"' in response.text  # the values are kept
        assert "a fine long password" not in response.text  # never the password
    assert (await (await control.execute(count)).fetchone())[0] == before


async def test_only_a_super_admin_reaches_the_list_and_the_form(
    browser: httpx.AsyncClient, api: httpx.AsyncClient, platform: Platform, control: Any
) -> None:
    acme = await create_tenant(api, "acme")
    signed_out = await browser.get("/admin/ui/tenants")
    assert signed_out.status_code == 303 and signed_out.headers["location"] == "/admin/ui/?next=/admin/ui/tenants"
    signed_out_partial = await browser.get("/admin/ui/tenants", headers={"HX-Request": "true"})
    assert signed_out_partial.headers.get("hx-redirect", "").startswith("/admin/ui/")
    assert "acme" not in signed_out_partial.text
    # A tenant admin's session, even presented on the admin pages' path, is no admin session.
    response = await sign_in_tenant(browser, "acme", acme.admin_email, acme.admin_password)
    token = next(c for c in response.headers.get_list("set-cookie") if c.startswith("cv_access="))
    browser.cookies.set("cv_access", token.split(";")[0].split("=", 1)[1], path="/admin/ui")
    refused = await browser.get("/admin/ui/tenants")
    assert refused.status_code == 303 and refused.headers["location"].startswith("/admin/ui/?next=")
    page = await browser.get("/t/acme/cards")
    created = await browser.post(
        "/admin/ui/tenants", data={"slug": "sneaky", "name": "Sneaky", "tier": "starter", "csrf_token": csrf_of(page)}
    )
    assert created.status_code in (303, 403) and created.headers.get("location", "") != "/admin/ui/tenants/sneaky"
    assert await (await control.execute("SELECT 1 FROM tenants WHERE slug = 'sneaky'")).fetchone() is None
