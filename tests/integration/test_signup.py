"""``POST /signup`` and ``GET /signup/slug-available``: a working tenant with a logged-in admin and a
queued verification mail; strict input with clear errors; closed when turned off; slug availability.

Failures, the race for one slug and the rate limits are in ``test_signup_failures.py``.
"""

from __future__ import annotations

from typing import Any

from controlplane.auth.service import hash_secret
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.settings import Settings
from tests.integration.auth_support import tenant_rows
from tests.integration.signup_support import (
    PUBLIC_URL,
    SIGNUP_PASSWORD,
    bearer_of,
    link_in,
    onboarding_rows,
    onboarding_settings,
    outbox_rows,
    running,
    sign_up,
    signup_body,
    token_of,
)
from tests.integration.tenant_support import assert_tenant_works, fetch, quotas, registry_row


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code, body
    return body


async def test_signup_makes_a_working_tenant_whose_admin_is_logged_in_and_a_queued_verification_mail(
    settings: Settings, platform: Platform, admin_dsn: str
) -> None:
    control = settings.database.url
    async with running(onboarding_settings(settings)) as client:
        body = await sign_up(client, "acme-cards", tier="professional", email="Founder@Acme.test")

        tenant = body["tenant"]
        assert tenant["slug"] == "acme-cards" and tenant["name"] == "Acme-Cards Cards Ltd"
        # Billing is off: the requested tier is set at once, no checkout.
        assert tenant["tier"] == "professional" and tenant["status"] == "active"
        assert body["requested_tier"] == "professional" and body["checkout_url"] is None
        assert body["verification_mail"] == "queued"
        row = await registry_row(control, tenant["id"])
        assert row is not None and row["subscription_tier"] == "professional"
        assert await quotas(control, row["id"]) == {"users": 10, "cards": 50_000, "storage_bytes": 25 * 1024**3,
                                                    "api_calls_per_hour": 10_000}  # fmt: skip
        async with platform.control.connection() as conn:
            created = await registry.get_by_slug(conn, "acme-cards")
        assert created is not None
        await assert_tenant_works(platform, admin_dsn, created)

        # The answer's tokens work at once: no second login (and no second password hash).
        tokens = body["tokens"]
        assert tokens["token_type"] == "Bearer" and tokens["refresh_token"]
        me = await client.get("/t/acme-cards/api/me", headers=bearer_of(body))
        assert me.status_code == 200, me.text
        assert me.json()["role"] == "tenant_admin" and me.json()["email"] == "Founder@Acme.test"
        refreshed = await client.post("/t/acme-cards/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.text
        # The password chosen at signup is the admin's.
        login = await client.post(
            "/t/acme-cards/auth/token", json={"email": "founder@acme.test", "password": SIGNUP_PASSWORD}
        )
        assert login.status_code == 200, login.text

    # One verification mail in the outbox, not sent yet; the onboarding row keeps only the token's hash.
    (mail,) = await outbox_rows(control)
    assert mail["kind"] == "verify_email" and mail["recipient"] == "Founder@Acme.test"
    assert mail["tenant_id"] == created.id and mail["sent_at"] is None and mail["attempts"] == 0
    link = link_in(mail["body"], "/signup/verify")
    assert link.startswith(f"{PUBLIC_URL}/signup/verify?token=")
    (onboarding,) = await onboarding_rows(control)
    assert onboarding["tenant_id"] == created.id and onboarding["admin_email"] == "Founder@Acme.test"
    assert bytes(onboarding["verify_hash"]) == hash_secret(token_of(link))
    assert onboarding["email_verified_at"] is None
    assert (onboarding["verify_expires_at"] - onboarding["created_at"]).total_seconds() > 3 * 86400 - 60

    # Audited: in the platform trail (actor signup) and in the tenant's own log.
    (audit,) = await fetch(control, "SELECT * FROM platform_audit WHERE action = 'tenant.signup'")
    assert audit["actor"] == "signup" and audit["outcome"] == "succeeded" and audit["tenant_id"] == created.id
    own = await tenant_rows(
        platform, "acme-cards", "SELECT actor, action FROM audit_log WHERE action = 'tenant.signup'"
    )
    assert len(own) == 1 and own[0]["actor"].startswith("user:")


async def test_signup_refuses_bad_input_with_clear_errors_and_creates_nothing(settings: Settings) -> None:
    control = settings.database.url
    async with running(onboarding_settings(settings)) as client:
        cases: list[tuple[dict[str, Any], int, str]] = [
            (signup_body("unknown-field", coupon="FREE"), 400, "validation_failed"),
            ({k: v for k, v in signup_body("no-password").items() if k != "password"}, 400, "validation_failed"),
            (signup_body("admin"), 400, "invalid_slug"),
            (signup_body("billing"), 400, "invalid_slug"),
            (signup_body("Not_A_Slug"), 400, "invalid_slug"),
            (signup_body("ab"), 400, "invalid_slug"),
            (signup_body("trailing-"), 400, "invalid_slug"),
            (signup_body("double--hyphen"), 400, "invalid_slug"),
            (signup_body("x" * 101), 400, "validation_failed"),
            (signup_body("good-slug", tier="platinum"), 400, "invalid_tier"),
            (signup_body("good-slug", password="short"), 400, "validation_failed"),
            (signup_body("good-slug", email="not an address"), 400, "validation_failed"),
            (signup_body("good-slug", email="a@b\x00c"), 400, "validation_failed"),
            (signup_body("good-slug", name="   "), 400, "validation_failed"),
            (signup_body("good-slug", name="bad\nname"), 400, "validation_failed"),
            (signup_body("good-slug", interval="week"), 400, "validation_failed"),
        ]
        for body, status, code in cases:
            answer = _error(await client.post("/signup", json=body), status, code)
            assert answer["detail"], answer
        reserved = _error(await client.post("/signup", json=signup_body("admin")), 400, "invalid_slug")
        assert "reserved" in reserved["detail"]
        _error(await client.post("/signup", content=b"{not json", headers={"content-type": "application/json"}),
               400, "validation_failed")  # fmt: skip
    assert await fetch(control, "SELECT slug FROM tenants") == []
    assert await outbox_rows(control) == [] and await onboarding_rows(control) == []


async def test_signup_is_closed_when_turned_off(settings: Settings) -> None:
    async with running(onboarding_settings(settings, enabled=False)) as client:
        _error(await client.post("/signup", json=signup_body("closed-shop")), 403, "signup_closed")
        _error(await client.get("/signup/slug-available", params={"slug": "closed-shop"}), 403, "signup_closed")
        # Super-admins still create tenants.
        made = await client.post(
            "/admin/tenants",
            json={"name": "Made", "slug": "made-by-admin"},
            headers={"Authorization": "Bearer test-admin-token"},
        )
        assert made.status_code == 201, made.text
    assert await fetch(settings.database.url, "SELECT slug FROM tenants") == [{"slug": "made-by-admin"}]


async def test_slug_availability_says_why_without_erring(settings: Settings) -> None:
    async with running(onboarding_settings(settings)) as public:

        async def check(slug: str) -> dict[str, Any]:
            response = await public.get("/signup/slug-available", params={"slug": slug})
            assert response.status_code == 200, response.text
            answer: dict[str, Any] = response.json()
            assert answer["slug"] == slug
            return answer

        assert await check("fresh-slug") == {"slug": "fresh-slug", "available": True, "reason": None, "detail": None}
        await sign_up(public, "fresh-slug")
        taken = await check("fresh-slug")
        assert taken["available"] is False and taken["reason"] == "taken"
        for reserved in ("admin", "www", "api"):
            answer = await check(reserved)
            assert answer["available"] is False and answer["reason"] == "reserved" and "reserved" in answer["detail"]
        for invalid in ("A", "UPPER", "-lead", "a" * 64, "ünï", "a b", "x\x00y"):
            answer = await check(invalid)
            assert answer["available"] is False and answer["reason"] == "invalid", answer
        # A missing or absurdly long parameter is a request error.
        _error(await public.get("/signup/slug-available"), 400, "validation_failed")
        _error(await public.get("/signup/slug-available", params={"slug": "a" * 300}), 400, "validation_failed")
