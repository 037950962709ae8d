"""Response headers every answer carries: ``X-Content-Type-Options: nosniff`` and ``Cache-Control: no-store``.

Tokens (tenant and platform logins, refreshes, impersonation, an accepted invitation), new API keys and
invitation tokens must never be kept by a browser or proxy cache; neither may anything else this private
API answers, errors included. The one route with a caching policy of its own (a card image: ``private,
max-age=60`` with an ETag; see ``test_image_delivery``) keeps it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from controlplane.platform import Platform
from controlplane.settings import Settings
from tests.integration.auth_support import SUPER_ADMIN_EMAIL, SUPER_ADMIN_PASSWORD, bearer, create_tenant, super_admin

Client = AsyncTestClient[Any]
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200)


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return dataclasses.replace(settings, data_dir=tmp_path / "data")  # uploaded images go here


def assert_private(response: Any, what: str) -> None:
    assert response.headers.get("cache-control") == "no-store", (what, dict(response.headers))
    assert response.headers.get("x-content-type-options") == "nosniff", (what, dict(response.headers))


async def test_tokens_keys_and_invitations_are_never_cached(
    client: Client, platform: Platform, settings: Settings
) -> None:
    t = await create_tenant(client, "headers", tier="enterprise")
    answers: dict[str, tuple[Any, int]] = {}

    login = await client.post(f"/t/{t.slug}/auth/token", json={"email": t.admin_email, "password": t.admin_password})
    answers["tenant login"] = (login, 200)
    refresh = {"refresh_token": login.json()["refresh_token"]}
    answers["tenant refresh"] = (await client.post(f"/t/{t.slug}/auth/refresh", json=refresh), 200)
    key = await client.post(t.api("/api-keys"), json={"name": "k", "role": "user"}, headers=t.auth)
    answers["new API key"] = (key, 201)
    invited = await client.post(t.api("/users"), json={"email": "inv@x.test", "role": "user"}, headers=t.auth)
    answers["invitation"] = (invited, 201)
    reissued = await client.post(t.api(f"/users/{invited.json()['id']}/invitation"), headers=t.auth)
    answers["re-issued invitation"] = (reissued, 200)
    accept = {"invite_token": reissued.json()["invite_token"], "password": "an accepted passphrase"}
    answers["accepted invitation"] = (await client.post(f"/t/{t.slug}/auth/invitations/accept", json=accept), 200)

    _, root = await super_admin(client, platform, settings)
    platform_login = {"email": SUPER_ADMIN_EMAIL, "password": SUPER_ADMIN_PASSWORD}
    answers["platform login"] = (
        await client.post("/auth/token", json=platform_login, headers={"Authorization": ""}),
        200,
    )
    impersonation = await client.post(f"/admin/tenants/{t.slug}/impersonate", json={"reason": "headers"}, headers=root)
    answers["impersonation"] = (impersonation, 200)

    # Everything else too: data, lists, errors, health.
    answers["user list"] = (await client.get(t.api("/users"), headers=t.auth), 200)
    answers["admin list"] = (await client.get("/admin/tenants"), 200)
    answers["401"] = (await client.get(t.api("/me"), headers=bearer("not-a-token")), 401)
    answers["404"] = (await client.get("/admin/tenants/nobody-here"), 404)
    answers["health"] = (await client.get("/health/live"), 200)

    for what, (response, status) in answers.items():
        assert response.status_code == status, (what, response.text)
        assert_private(response, what)


async def test_a_card_image_keeps_its_own_caching_policy(client: Client) -> None:
    t = await create_tenant(client, "headers-image")
    card = (await client.post(t.api("/cards"), json={"cardnumber": "1"}, headers=t.auth)).json()
    put = await client.put(
        t.api(f"/cards/{card['id']}/image"), content=PNG, headers={**t.auth, "content-type": "image/png"}
    )
    assert put.status_code == 200, put.text
    assert_private(put, "image upload")
    image = await client.get(t.api(f"/cards/{card['id']}/image"), headers=t.auth)
    assert image.status_code == 200 and image.content == PNG
    assert image.headers["cache-control"] == "private, max-age=60" and image.headers["etag"]
    assert image.headers["x-content-type-options"] == "nosniff"
