"""Authentication flows over HTTP against the real app: platform and tenant logins, refresh rotation,
logout and replay, forged and altered tokens, key rotation, the login throttle, per-tenant rate limits
(in-process and shared through Redis by two instances), and tenants provisioned with their first admin.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jwt
import psycopg
import pytest
from litestar.testing import AsyncTestClient

from controlplane.app import create_app
from controlplane.auth import repository as admins
from controlplane.auth import tokens
from controlplane.platform import Platform
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN, eventually
from tests.integration.auth_support import (
    SUPER_ADMIN_EMAIL,
    USER_PASSWORD,
    add_user,
    bearer,
    create_tenant,
    login,
    make_admin,
    platform_login,
    tenant_rows,
)

Client = AsyncTestClient[Any]


@pytest.fixture
def anonymous(client: Client) -> Client:
    """The app's client without the automation token."""
    client.headers.pop("Authorization", None)
    return client


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(header))),
        json.loads(base64.urlsafe_b64decode(pad(payload))),
        signature,
    )


# -- platform admins ----------------------------------------------------------------------------


async def test_super_admin_login_reaches_admin_api_and_logout_ends_it(client: Client, platform: Platform) -> None:
    await make_admin(platform)
    client.headers.pop("Authorization")
    pair = await platform_login(client)
    header, claims, _ = _parts(pair["access_token"])
    assert header["alg"] == "HS256" and header["kid"]
    assert claims["aud"] == "platform" and claims["role"] == "super_admin" and "tid" not in claims
    assert (await client.get("/admin/tenants", headers=bearer(pair["access_token"]))).status_code == 200

    assert (await client.post("/auth/logout", headers=bearer(pair["access_token"]))).status_code == 204
    refused = await client.get("/admin/tenants", headers=bearer(pair["access_token"]))
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_token")
    again = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert again.status_code == 401


async def test_platform_refresh_rotates_and_a_replay_revokes_the_session(client: Client, platform: Platform) -> None:
    await make_admin(platform)
    client.headers.pop("Authorization")
    first = await platform_login(client)
    second = (await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert (await client.get("/admin/pools", headers=bearer(second["access_token"]))).status_code == 200
    # Within the grace window the spent token is a retry: the same successor again.
    retry = (await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
    assert retry["refresh_token"] == second["refresh_token"]
    third = (await client.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})).json()
    assert third["refresh_token"] not in (first["refresh_token"], second["refresh_token"])
    # A token spent two rotations ago: a stolen copy is being used; the whole session ends.
    replay = await client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert (replay.status_code, replay.json()["error"]) == (401, "invalid_token")
    assert (await client.get("/admin/pools", headers=bearer(third["access_token"]))).status_code == 401
    assert (await client.post("/auth/refresh", json={"refresh_token": third["refresh_token"]})).status_code == 401


async def test_disabled_admin_loses_access_at_once(client: Client, platform: Platform) -> None:
    await make_admin(platform)
    client.headers.pop("Authorization")
    pair = await platform_login(client)
    async with platform.control.connection() as conn, conn.transaction():
        await admins.set_admin_disabled(conn, SUPER_ADMIN_EMAIL, True)
    assert (await client.get("/admin/tenants", headers=bearer(pair["access_token"]))).status_code == 401
    wrong = await client.post("/auth/token", json={"email": SUPER_ADMIN_EMAIL, "password": USER_PASSWORD})
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_credentials")


async def test_tenant_token_cannot_use_the_admin_api(client: Client) -> None:
    acme = await create_tenant(client, "acme")
    client.headers.pop("Authorization")
    response = await client.get("/admin/tenants", headers=acme.auth)
    assert (response.status_code, response.json()["error"]) == (403, "wrong_tenant")


# -- tenant logins --------------------------------------------------------------------------------


async def test_tenant_login_refresh_logout_and_replay(client: Client) -> None:
    acme = await create_tenant(client, "acme")
    pair = await login(client, "acme", acme.admin_email, acme.admin_password)
    _, claims, _ = _parts(pair["access_token"])
    assert claims["aud"] == "tenant" and claims["tid"] == str(acme.id) and claims["role"] == "tenant_admin"
    cards = acme.api("/cards")
    assert (await client.get(cards, headers=bearer(pair["access_token"]))).status_code == 200

    fresh = (await client.post("/t/acme/auth/refresh", json={"refresh_token": pair["refresh_token"]})).json()
    assert (await client.get(cards, headers=bearer(fresh["access_token"]))).status_code == 200

    out = await client.post("/t/acme/auth/logout", headers=bearer(fresh["access_token"]))
    assert out.status_code == 204
    # After logout: the access token, the current refresh token and the spent one are all dead.
    assert (await client.get(cards, headers=bearer(fresh["access_token"]))).status_code == 401
    for spent in (fresh["refresh_token"], pair["refresh_token"]):
        replay = await client.post("/t/acme/auth/refresh", json={"refresh_token": spent})
        assert (replay.status_code, replay.json()["error"]) == (401, "invalid_token")
    # The admin's other login (made by create_tenant) is untouched.
    assert (await client.get(cards, headers=acme.auth)).status_code == 200


async def test_login_through_header_and_subdomain_is_the_same_tenant(settings: Settings) -> None:
    app = create_app(settings.replace(http=dataclasses.replace(settings.http, base_domain="cardvault.test")))
    async with AsyncTestClient(app=app) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        acme = await create_tenant(client, "acme")
        client.headers.pop("Authorization")
        body = {"email": acme.admin_email, "password": acme.admin_password}
        for headers in ({"X-Tenant": "acme"}, {"Host": "acme.cardvault.test"}):
            response = await client.post("/auth/token", json=body, headers=headers)
            assert response.status_code == 200, response.text
            _, claims, _ = _parts(response.json()["access_token"])
            assert claims["tid"] == str(acme.id)
            listed = await client.get("/api/cards", headers={**headers, **bearer(response.json()["access_token"])})
            assert listed.status_code == 200
        # Without a tenant, /auth/token is the platform login: the tenant admin is no platform admin.
        platform_try = await client.post("/auth/token", json=body)
        assert (platform_try.status_code, platform_try.json()["error"]) == (401, "invalid_credentials")


async def test_forged_and_altered_tokens_are_401(client: Client) -> None:
    acme = await create_tenant(client, "acme")
    client.headers.pop("Authorization")
    token = acme.auth["Authorization"].removeprefix("Bearer ")
    header, claims, signature = _parts(token)
    now = int(time.time())
    forged = {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "altered role": f"{_b64(header)}.{_b64({**claims, 'role': 'tenant_admin', 'sub': 'user:999'})}.{signature}",
        "other key": jwt.encode(claims, "another-key-of-32-bytes-or-more!!", algorithm="HS256", headers=header),
        "expired": jwt.encode(
            {**claims, "iat": now - 7200, "exp": now - 3600},
            "x" * 32,
            algorithm="HS256",
            headers=header,
        ),
        "garbage": "not.a.token",
        "truncated": token[:-5],
    }
    for what, bad in forged.items():
        response = await client.get(acme.api("/cards"), headers=bearer(bad))
        assert (response.status_code, response.json()["error"]) == (401, "invalid_token"), what
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), what


async def test_key_rotation_keeps_issued_tokens_valid(client: Client, platform: Platform) -> None:
    acme = await create_tenant(client, "acme")
    old_kid = _parts(acme.auth["Authorization"].removeprefix("Bearer "))[0]["kid"]
    async with platform.control.connection() as conn, conn.transaction():
        new_kid = await tokens.rotate(conn, platform.box, verify_for=600)
    assert new_kid != old_kid
    # Issued before the rotation: still valid.
    assert (await client.get(acme.api("/cards"), headers=acme.auth)).status_code == 200
    # This instance has not reloaded yet; a token signed with the new key (say, by another instance)
    # makes it reload on the unknown kid, once.
    pair = await login(client, "acme", acme.admin_email, acme.admin_password)
    async with platform.control.connection() as conn:
        ring = await tokens.KeyRing.load(conn, platform.box)
    signer = tokens.TokenSigner(ring)
    _, claims, _ = _parts(pair["access_token"])
    other_instance = signer.issue(
        audience="tenant",
        subject=claims["sub"],
        role=claims["role"],
        ttl=60,
        tenant_id=acme.id,
        session_id=uuid.UUID(claims["sid"]),
    )
    assert _parts(other_instance)[0]["kid"] == new_kid
    assert (await client.get(acme.api("/cards"), headers=bearer(other_instance))).status_code == 200


# -- first admin with the tenant ----------------------------------------------------------------


async def test_tenant_created_with_its_admin(client: Client, platform: Platform) -> None:
    acme = await create_tenant(client, "acme", tier="starter")
    rows = await tenant_rows(platform, "acme", "SELECT email, tenant_role, password_hash FROM users")
    assert [(r["email"], r["tenant_role"]) for r in rows] == [(acme.admin_email, "tenant_admin")]
    assert rows[0]["password_hash"].startswith("$argon2id$")
    assert acme.admin_password not in json.dumps((await client.get("/admin/tenants/acme")).json())


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"admin_email": "a@b.test"}, "validation_failed"),
        ({"admin_password": "long enough password"}, "validation_failed"),
        ({"admin_email": "not-an-email", "admin_password": "long enough password"}, "validation_failed"),
        ({"admin_email": "a@b.test", "admin_password": "short"}, "validation_failed"),
    ],
)
async def test_bad_first_admin_is_400_and_creates_nothing(
    client: Client, control_dsn: str, body: dict[str, str], code: str
) -> None:
    response = await client.post("/admin/tenants", json={"name": "Acme", "slug": "acme", **body})
    assert (response.status_code, response.json()["error"]) == (400, code), response.text
    with psycopg.connect(control_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM tenants").fetchone() == (0,)


# -- login throttle -------------------------------------------------------------------------------


@pytest.fixture
async def strict_client(settings: Settings) -> AsyncIterator[Client]:
    """The app with a login throttle of 3 failures per account and 5 per address."""
    auth = dataclasses.replace(settings.auth, login_max_failures=3, login_max_failures_per_address=5)
    async with AsyncTestClient(app=create_app(settings.replace(auth=auth))) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        yield client


async def test_login_throttle_per_account_and_per_address(strict_client: Client, platform: Platform) -> None:
    client = strict_client
    acme = await create_tenant(client, "acme")
    await add_user(platform, "acme", "other@acme.test", "user")
    client.headers.pop("Authorization")

    async def attempt(email: str, password: str) -> Any:
        return await client.post("/t/acme/auth/token", json={"email": email, "password": password})

    for _ in range(3):
        assert (await attempt(acme.admin_email, "wrong password!!")).status_code == 401
    blocked = await attempt(acme.admin_email, acme.admin_password)  # even the right password now
    assert (blocked.status_code, blocked.json()["error"]) == (429, "rate_limited")
    assert int(blocked.headers["Retry-After"]) > 0
    # Another account from the same address still gets in (the address budget is 5 failures).
    assert (await attempt("other@acme.test", USER_PASSWORD)).status_code == 200
    assert (await attempt("other@acme.test", "wrong password!!")).status_code == 401
    assert (await attempt("nobody@acme.test", "wrong password!!")).status_code == 401
    # 5 failures from this address: now every account is refused from here.
    assert (await attempt("other@acme.test", USER_PASSWORD)).status_code == 429


# -- per-tenant rate limits ------------------------------------------------------------------------


async def test_other_instances_notice_a_logout_within_the_principal_cache_ttl(settings: Settings) -> None:
    async with (
        AsyncTestClient(app=create_app(settings)) as one,
        AsyncTestClient(app=create_app(settings)) as two,
    ):
        one.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        acme = await create_tenant(one, "acme")
        pair = await login(one, "acme", acme.admin_email, acme.admin_password)
        token = bearer(pair["access_token"])
        assert (await two.get(acme.api("/teams"), headers=token)).status_code == 200  # now cached on two
        assert (await one.post("/t/acme/auth/logout", headers=token)).status_code == 204
        assert (await one.get(acme.api("/teams"), headers=token)).status_code == 401  # at once here

        async def refused_on_two() -> bool:
            return (await two.get(acme.api("/teams"), headers=token)).status_code == 401

        # The cache lives 1 s: the deadline is generous (a bound for a hang, not a speed assertion).
        await eventually(refused_on_two, "the other instance refuses the ended session", within=10)


def long_principal_cache(settings: Settings) -> Settings:
    """Principals kept for an hour while notifications are heard (1 s otherwise, as by default)."""
    auth = dataclasses.replace(settings.auth, principal_cache_ttl=1.0, principal_cache_max=3600.0)
    return dataclasses.replace(settings, auth=auth)


async def test_other_instances_notice_a_logout_at_once_through_the_change_notification(settings: Settings) -> None:
    settings = long_principal_cache(settings)
    async with (
        AsyncTestClient(app=create_app(settings)) as one,
        AsyncTestClient(app=create_app(settings)) as two,
    ):
        one.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        acme = await create_tenant(one, "acme")
        pair = await login(one, "acme", acme.admin_email, acme.admin_password)
        token = bearer(pair["access_token"])
        assert (await two.get(acme.api("/teams"), headers=token)).status_code == 200  # cached on two for an hour
        assert (await one.post("/t/acme/auth/logout", headers=token)).status_code == 204

        async def refused_on_two() -> bool:
            return (await two.get(acme.api("/teams"), headers=token)).status_code == 401

        # Only the notification can tell two: its cache would keep the principal for an hour.
        await eventually(refused_on_two, "the other instance refuses the ended session", within=10)


async def test_principals_are_not_kept_past_their_session_or_a_lost_notification_channel(
    settings: Settings, platform: Platform
) -> None:
    settings = long_principal_cache(settings)
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        acme = await create_tenant(client, "acme")
        pair = await login(client, "acme", acme.admin_email, acme.admin_password)
        token = bearer(pair["access_token"])
        claims = jwt.decode(pair["access_token"], options={"verify_signature": False})

        # A session about to expire is cached no longer than it lives.
        await tenant_rows(
            platform, "acme", "UPDATE auth_sessions SET expires_at = now() + interval '1 second' WHERE id = %s",
            (claims["sid"],),
        )  # fmt: skip
        assert (await client.get(acme.api("/teams"), headers=token)).status_code == 200

        async def refused() -> bool:
            return (await client.get(acme.api("/teams"), headers=token)).status_code == 401

        await eventually(refused, "the expired session is refused", within=10)

        # A change behind the control plane's back (no notification) is served from the cache...
        second = await login(client, "acme", acme.admin_email, acme.admin_password)
        token = bearer(second["access_token"])
        sid = jwt.decode(second["access_token"], options={"verify_signature": False})["sid"]
        assert (await client.get(acme.api("/teams"), headers=token)).status_code == 200
        await tenant_rows(platform, "acme", "UPDATE auth_sessions SET revoked_at = now() WHERE id = %s", (sid,))
        assert (await client.get(acme.api("/teams"), headers=token)).status_code == 200
        # ... until the notification channel is lost: then nothing cached is trusted any more.
        async with platform.control.connection() as conn:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
                ("%-listen-principals",),
            )
        await eventually(refused, "the revoked session is refused once the channel was lost", within=10)
