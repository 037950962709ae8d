"""Credentials probed as an attacker (or an unlucky client) would, over HTTP against the real app.

- Refresh rotation: two concurrent refreshes with one token both get the same successor and the session
  lives; the spent token presented after the grace window revokes the session; a made-up secret with a
  real (public) session id is a plain 401 that logs nobody out.
- API keys follow their maker: a demoted maker's key loses the maker's old rights; a key made while
  impersonating answers to the impersonating admin and never outlives the impersonation.
- Impersonation tokens end with the admin's platform session and account.
- The login throttle keys an account exactly as the database looks it up, so spellings that PostgreSQL
  folds onto one address (``vİctim@`` / ``victim@`` under a UTF-8 ``LC_CTYPE``) share one allowance.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg import sql

from controlplane.app import create_app
from controlplane.auth import repository as admins
from controlplane.platform import Platform
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.integration.auth_support import (
    SUPER_ADMIN_EMAIL,
    USER_PASSWORD,
    add_user,
    bearer,
    create_tenant,
    login,
    login_as,
    make_admin,
    platform_login,
    tenant_rows,
)

Client = AsyncTestClient[Any]
#: The refresh grace window of these tests' app (seconds): short, so "after the window" needs no long wait.
GRACE = 1.0


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code, body
    return body


@pytest.fixture
async def app_client(settings: Settings) -> AsyncIterator[Client]:
    """The app with a refresh grace of ``GRACE`` seconds and no principal cache (changes show at once)."""
    auth = dataclasses.replace(settings.auth, refresh_grace=GRACE, principal_cache_ttl=0)
    async with AsyncTestClient(app=create_app(settings.replace(auth=auth))) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        yield client


async def _signed_in(client: Client, platform: Platform, side: str) -> tuple[dict[str, Any], str, str]:
    """A fresh login on ``side`` (a tenant admin of acme, or a platform admin): its token pair, the
    refresh path, and a path the access token may GET."""
    if side == "tenant":
        acme = await create_tenant(client, "acme")
        pair = await login(client, "acme", acme.admin_email, acme.admin_password)
        return pair, "/t/acme/auth/refresh", acme.api("/cards")
    await make_admin(platform)
    return await platform_login(client), "/auth/refresh", "/admin/pools"


async def _refresh(client: Client, path: str, token: str) -> Any:
    return await client.post(path, json={"refresh_token": token}, headers={"Authorization": ""})


# -- refresh rotation ------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["tenant", "platform"])
async def test_concurrent_refreshes_get_the_same_successor_and_the_session_lives(
    app_client: Client, platform: Platform, side: str
) -> None:
    client = app_client
    pair, path, probe = await _signed_in(client, platform, side)

    first, second = await asyncio.gather(
        _refresh(client, path, pair["refresh_token"]), _refresh(client, path, pair["refresh_token"])
    )
    assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
    successor = first.json()["refresh_token"]
    assert second.json()["refresh_token"] == successor != pair["refresh_token"]
    for response in (first, second):
        access = response.json()["access_token"]
        assert _claims(access)["sid"] == _claims(pair["access_token"])["sid"]
        assert (await client.get(probe, headers=bearer(access))).status_code == 200
    # The session lives on: the successor refreshes, and the new access token works.
    after = await _refresh(client, path, successor)
    assert after.status_code == 200, after.text
    assert (await client.get(probe, headers=bearer(after.json()["access_token"]))).status_code == 200


async def test_a_lost_response_is_retried_with_the_same_result(app_client: Client) -> None:
    client = app_client
    acme = await create_tenant(client, "acme")
    pair = await login(client, "acme", acme.admin_email, acme.admin_password)
    lost = await _refresh(client, "/t/acme/auth/refresh", pair["refresh_token"])
    retried = await _refresh(client, "/t/acme/auth/refresh", pair["refresh_token"])
    assert retried.status_code == 200, retried.text
    assert retried.json()["refresh_token"] == lost.json()["refresh_token"]
    assert retried.json()["access_token"] != lost.json()["access_token"], "a fresh access token"


@pytest.mark.parametrize("side", ["tenant", "platform"])
async def test_the_spent_token_after_the_grace_revokes_the_session(
    app_client: Client, platform: Platform, side: str
) -> None:
    client = app_client
    pair, path, probe = await _signed_in(client, platform, side)
    fresh = (await _refresh(client, path, pair["refresh_token"])).json()
    await asyncio.sleep(GRACE + 0.3)

    replay = await _refresh(client, path, pair["refresh_token"])
    _error(replay, 401, "invalid_token")
    assert "revoked" in replay.json()["detail"]
    # The whole session is gone: the legitimate holder's tokens too.
    _error(await client.get(probe, headers=bearer(fresh["access_token"])), 401, "invalid_token")
    _error(await _refresh(client, path, fresh["refresh_token"]), 401, "invalid_token")


@pytest.mark.parametrize("side", ["tenant", "platform"])
async def test_a_made_up_secret_with_a_real_session_id_logs_nobody_out(
    app_client: Client, platform: Platform, side: str
) -> None:
    client = app_client
    pair, path, probe = await _signed_in(client, platform, side)
    sid = _claims(pair["access_token"])["sid"]  # anyone who has seen an access token knows it
    secret = pair["refresh_token"].partition(".")[2]
    generation, _, mac = secret.partition(".")
    for made_up in ("anything", f"{generation}.{'A' * len(mac)}", f"{int(generation) + 1}.{mac}", "0." + "x" * 43):
        response = await _refresh(client, path, f"{sid}.{made_up}")
        body = _error(response, 401, "invalid_token")
        assert body["detail"] == "invalid refresh token", body
    # Still logged in: the access token works and the real refresh token rotates normally.
    assert (await client.get(probe, headers=bearer(pair["access_token"]))).status_code == 200
    assert (await _refresh(client, path, pair["refresh_token"])).status_code == 200


# -- API keys follow their maker ---------------------------------------------------------------------


async def test_a_demoted_makers_key_cannot_do_what_the_maker_no_longer_can(
    app_client: Client, platform: Platform
) -> None:
    client = app_client
    acme = await create_tenant(client, "acme", tier="enterprise")
    maker_id = await add_user(platform, "acme", "maker@acme.test", "tenant_admin")
    maker = await login_as(client, "acme", "maker@acme.test")
    made = await client.post(acme.api("/api-keys"), json={"name": "ops", "role": "tenant_admin"}, headers=maker)
    assert made.status_code == 201, made.text
    key = bearer(made.json()["key"])
    client.headers.pop("Authorization")
    before = await client.post(
        acme.api("/users"),
        json={"email": "before@acme.test", "role": "tenant_admin", "password": USER_PASSWORD},
        headers=key,
    )
    assert before.status_code == 201, before.text

    demoted = await client.patch(acme.api(f"/users/{maker_id}"), json={"role": "user"}, headers=acme.auth)
    assert demoted.status_code == 200, demoted.text
    # The attack: the key was made as a tenant_admin; its maker is a user now.
    attempt = await client.post(
        acme.api("/users"),
        json={"email": "evil@acme.test", "role": "tenant_admin", "password": USER_PASSWORD},
        headers=key,
    )
    _error(attempt, 403, "permission_denied")
    _error(await client.get(acme.api("/users"), headers=key), 403, "permission_denied")
    me = (await client.get(acme.api("/me"), headers=key)).json()
    assert me["kind"] == "api_key" and me["role"] == "user" and "users:manage" not in me["permissions"]
    assert await tenant_rows(platform, "acme", "SELECT id FROM users WHERE email = 'evil@acme.test'") == []

    # A maker denied a permission denies it to their keys too (and promoting the maker back restores the key).
    restored = await client.patch(
        acme.api(f"/users/{maker_id}"),
        json={"role": "tenant_admin", "permissions": {"audit:read": False}},
        headers=acme.auth,
    )
    assert restored.status_code == 200, restored.text
    assert (await client.get(acme.api("/users"), headers=key)).status_code == 200
    _error(await client.get(acme.api("/audit"), headers=key), 403, "permission_denied")


async def _impersonate(client: Client, admin_auth: dict[str, str], slug: str, role: str = "tenant_admin") -> str:
    response = await client.post(
        f"/admin/tenants/{slug}/impersonate", json={"reason": "support ticket", "role": role}, headers=admin_auth
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def test_a_key_made_while_impersonating_answers_to_the_admin_and_ends_with_the_impersonation(
    client: Client, platform: Platform
) -> None:
    # The default app: principals are cached for a second, and a logout here must still end them at once.
    acme = await create_tenant(client, "acme", tier="enterprise")
    admin_id = await make_admin(platform)
    admin = await platform_login(client)
    client.headers.pop("Authorization")
    imp = await _impersonate(client, bearer(admin["access_token"]), "acme")
    claims = _claims(imp)
    assert claims["imp"] == str(admin_id) and claims["sid"] == _claims(admin["access_token"])["sid"]

    made = await client.post(
        acme.api("/api-keys"),
        json={"name": "support", "role": "tenant_admin", "expires_in_days": 30},
        headers=bearer(imp),
    )
    assert made.status_code == 201, made.text
    key = bearer(made.json()["key"])
    ends = dt.datetime.fromtimestamp(claims["exp"], dt.UTC)
    assert dt.datetime.fromisoformat(made.json()["expires_at"]) <= ends, "never outlives the impersonation"
    (row,) = await tenant_rows(
        platform, "acme", "SELECT created_by, created_by_admin, admin_session, expires_at FROM api_keys"
    )
    assert row["created_by"] is None and row["created_by_admin"] == admin_id
    assert str(row["admin_session"]) == claims["sid"] and row["expires_at"] <= ends
    assert (await client.get(acme.api("/users"), headers=key)).status_code == 200

    # The admin logs out: the impersonation and the key made with it end at once.
    out = await client.post("/auth/logout", headers=bearer(admin["access_token"]))
    assert out.status_code == 204
    _error(await client.get(acme.api("/users"), headers=bearer(imp)), 401, "invalid_token")
    _error(await client.get(acme.api("/users"), headers=key), 401, "invalid_token")


async def test_a_key_made_with_such_a_key_is_bound_the_same_way(app_client: Client, platform: Platform) -> None:
    client = app_client
    acme = await create_tenant(client, "acme", tier="enterprise")
    admin_id = await make_admin(platform)
    admin = await platform_login(client)
    client.headers.pop("Authorization")
    imp = await _impersonate(client, bearer(admin["access_token"]), "acme")
    made = await client.post(acme.api("/api-keys"), json={"name": "a", "role": "tenant_admin"}, headers=bearer(imp))
    child = await client.post(
        acme.api("/api-keys"), json={"name": "b", "role": "user"}, headers=bearer(made.json()["key"])
    )
    assert child.status_code == 201, child.text
    rows = await tenant_rows(platform, "acme", "SELECT name, created_by_admin, expires_at FROM api_keys ORDER BY id")
    assert [(r["name"], r["created_by_admin"]) for r in rows] == [("a", admin_id), ("b", admin_id)]
    assert rows[1]["expires_at"] <= rows[0]["expires_at"]


# -- impersonation tokens end with the admin --------------------------------------------------------


async def test_logging_the_admin_out_everywhere_ends_their_impersonations(
    app_client: Client, platform: Platform
) -> None:
    client = app_client
    acme = await create_tenant(client, "acme")
    await make_admin(platform)
    first, second = await platform_login(client), await platform_login(client)
    client.headers.pop("Authorization")
    imp = bearer(await _impersonate(client, bearer(first["access_token"]), "acme"))
    assert (await client.get(acme.api("/cards"), headers=imp)).status_code == 200
    # Ending another of the admin's sessions leaves it alone ...
    third = await platform_login(client)
    assert (await client.post("/auth/logout", headers=bearer(third["access_token"]))).status_code == 204
    assert (await client.get(acme.api("/cards"), headers=imp)).status_code == 200
    # ... logging out everywhere (from another session) ends it.
    everywhere = await client.post("/auth/logout?all_sessions=true", headers=bearer(second["access_token"]))
    assert everywhere.status_code == 204
    body = _error(await client.get(acme.api("/cards"), headers=imp), 401, "invalid_token")
    assert "session has ended" in body["detail"]


async def test_disabling_the_admin_ends_their_impersonations(app_client: Client, platform: Platform) -> None:
    client = app_client
    acme = await create_tenant(client, "acme", tier="enterprise")
    await make_admin(platform)
    admin = await platform_login(client)
    client.headers.pop("Authorization")
    imp = bearer(await _impersonate(client, bearer(admin["access_token"]), "acme"))
    key = bearer(
        (await client.post(acme.api("/api-keys"), json={"name": "k", "role": "user"}, headers=imp)).json()["key"]
    )
    assert (await client.get(acme.api("/cards"), headers=imp)).status_code == 200
    # Disabled in the control database (another instance, or by hand): the account check alone stops it,
    # even before its sessions are revoked.
    async with platform.control.connection() as conn, conn.transaction():
        assert await admins.set_admin_disabled(conn, SUPER_ADMIN_EMAIL, True) is not None
    _error(await client.get(acme.api("/cards"), headers=imp), 401, "invalid_token")
    _error(await client.get(acme.api("/cards"), headers=key), 401, "invalid_token")


async def test_an_impersonation_token_has_no_tenant_session_to_log_out(app_client: Client, platform: Platform) -> None:
    client = app_client
    acme = await create_tenant(client, "acme")
    await make_admin(platform)
    admin = await platform_login(client)
    client.headers.pop("Authorization")
    imp = bearer(await _impersonate(client, bearer(admin["access_token"]), "acme"))
    _error(await client.post("/t/acme/auth/logout", headers=imp), 401, "invalid_token")
    assert (await client.get(acme.api("/cards"), headers=imp)).status_code == 200
    assert (await client.get("/admin/pools", headers=bearer(admin["access_token"]))).status_code == 200


# -- the login throttle and the database's lower() ----------------------------------------------------


@pytest.fixture
def utf8_template(pg_admin_dsn: str) -> Iterator[str]:
    """An empty database with a UTF-8 ``LC_CTYPE`` for provisioning to build its tenant template in.

    The test cluster runs with the C locale, whose ``lower()`` folds ASCII only; production servers
    often run a UTF-8 locale, where ``lower('İ')`` is ``i``. Tenants cloned from this template get that.
    """
    name = f"cvtest_tpl_utf8_{uuid.uuid4().hex[:10]}"
    ident = sql.Identifier(name)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C.utf8' LC_CTYPE 'C.utf8'"
            ).format(ident)
        )
    try:
        yield name
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(ident))
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@pytest.fixture
async def throttled(settings: Settings, utf8_template: str, platform: Platform) -> AsyncIterator[Client]:
    """A client of an app with 3 login failures allowed per account, on a UTF-8 tenant ``acme`` that has
    the user ``victim@example.com``."""
    provisioning = dataclasses.replace(settings.provisioning, template_database=utf8_template)
    auth = dataclasses.replace(settings.auth, login_max_failures=3, login_max_failures_per_address=50)
    app = create_app(settings.replace(provisioning=provisioning, auth=auth))
    async with AsyncTestClient(app=app) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        await create_tenant(client, "acme")
        await add_user(platform, "acme", "victim@example.com", "user")
        client.headers.pop("Authorization")
        yield client


async def test_spellings_the_database_folds_together_share_one_login_allowance(
    throttled: Client, platform: Platform
) -> None:
    client = throttled
    variant = "v\u0130ctim@example.com"  # LATIN CAPITAL LETTER I WITH DOT ABOVE
    # The precondition of the attack: this database folds the variant onto the victim's address
    # (Python does not: it makes "i" + COMBINING DOT ABOVE of it).
    (folded,) = await tenant_rows(platform, "acme", "SELECT lower(%s) AS email", (variant,))
    assert folded["email"] == "victim@example.com" != variant.lower()
    assert (await login(client, "acme", variant))["refresh_token"], "the variant reaches the victim's account"

    async def attempt(email: str, password: str) -> Any:
        return await client.post("/t/acme/auth/token", json={"email": email, "password": password})

    for email in ("victim@example.com", "VICTIM@example.com", "victim@EXAMPLE.com"):
        _error(await attempt(email, "wrong password!!"), 401, "invalid_credentials")
    # The allowance is used up for every spelling: the variant gets no fresh guesses ...
    _error(await attempt(variant, "another guess!!"), 429, "rate_limited")
    _error(await attempt(variant, USER_PASSWORD), 429, "rate_limited")
    _error(await attempt("victim@example.com", USER_PASSWORD), 429, "rate_limited")


async def test_guesses_through_a_variant_count_against_the_account(throttled: Client) -> None:
    client = throttled
    for email in ("v\u0130ctim@example.com", "V\u0130CT\u0130M@example.com", "vict\u0130m@example.com"):
        response = await client.post("/t/acme/auth/token", json={"email": email, "password": "wrong guess!!"})
        _error(response, 401, "invalid_credentials")
    right = await client.post("/t/acme/auth/token", json={"email": "victim@example.com", "password": USER_PASSWORD})
    _error(right, 429, "rate_limited")
