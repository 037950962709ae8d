"""``GET /t/{slug}/api/onboarding``: the checklist follows what the tenant does (email verified, plan
chosen, first card, first invited user), every identity of the tenant may read it, and only its own:
tenant A's token cannot read B's, by path or by header."""

from __future__ import annotations

from typing import Any

from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.integration.signup_support import (
    bearer_of,
    onboarding_settings,
    outbox_rows,
    running,
    sign_up,
    signups,
    tenant_id_of,
    token_of,
)
from tests.integration.tenant_support import execute

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _checklist(client: Any, slug: str, auth: dict[str, str]) -> dict[str, Any]:
    response = await client.get(f"/t/{slug}/api/onboarding", headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _verification_token(control: str, email: str) -> str:
    (mail,) = [r for r in await outbox_rows(control, "verify_email") if r["recipient"] == email]
    link = next(word for word in mail["body"].split() if "/signup/verify?" in word)
    return token_of(link)


async def test_the_checklist_follows_what_the_tenant_does(settings: Settings) -> None:
    control = settings.database.url
    async with running(onboarding_settings(settings)) as client:
        auth = bearer_of(await sign_up(client, "step-by-step"))
        assert await _checklist(client, "step-by-step", auth) == {
            "email_verified": False,
            "plan_chosen": False,
            "first_card": False,
            "first_invited_user": False,
            "complete": False,
        }
        await signups(client).verify(await _verification_token(control, "founder@step-by-step.test"))
        assert (await _checklist(client, "step-by-step", auth))["email_verified"] is True

        # A subscription at the provider counts as a chosen plan, even before the tier follows.
        tenant_id = await tenant_id_of(control, "step-by-step")
        await execute(
            control,
            "INSERT INTO tenant_billing (tenant_id, provider, customer_id, subscription_id) VALUES (%s, %s, %s, %s)",
            (tenant_id, "stripe", "cus_test", "sub_test"),
        )
        assert (await _checklist(client, "step-by-step", auth))["plan_chosen"] is True
        await execute(control, "DELETE FROM tenant_billing")
        assert (await _checklist(client, "step-by-step", auth))["plan_chosen"] is False
        # ... and so does a paid tier (here set by a super-admin).
        upgraded = await client.patch("/admin/tenants/step-by-step", json={"tier": "professional"}, headers=ADMIN)
        assert upgraded.status_code == 200, upgraded.text
        assert (await _checklist(client, "step-by-step", auth))["plan_chosen"] is True

        card = await client.post("/t/step-by-step/api/cards", json={"cardnumber": "T-1"}, headers=auth)
        assert card.status_code == 201, card.text
        assert (await _checklist(client, "step-by-step", auth))["first_card"] is True

        invited = await client.post(
            "/t/step-by-step/api/users", json={"email": "second@x.test", "role": "user"}, headers=auth
        )
        assert invited.status_code == 201, invited.text
        assert await _checklist(client, "step-by-step", auth) == {
            "email_verified": True,
            "plan_chosen": True,
            "first_card": True,
            "first_invited_user": True,
            "complete": True,
        }
        # Any identity of the tenant may read it (settings:read): the invitee, once accepted, too.
        accepted = await client.post(
            "/t/step-by-step/auth/invitations/accept",
            json={"invite_token": invited.json()["invite_token"], "password": "another long passphrase"},
        )
        assert accepted.status_code == 200, accepted.text
        user = {"Authorization": f"Bearer {accepted.json()['access_token']}"}
        assert (await _checklist(client, "step-by-step", user))["complete"] is True


async def test_a_tenant_reads_only_its_own_checklist(settings: Settings) -> None:
    control = settings.database.url
    async with running(onboarding_settings(settings)) as client:
        a = bearer_of(await sign_up(client, "tenant-a", tier="professional"))
        b = bearer_of(await sign_up(client, "tenant-b"))
        await signups(client).verify(await _verification_token(control, "founder@tenant-b.test"))
        card = await client.post("/t/tenant-b/api/cards", json={"cardnumber": "B-1"}, headers=b)
        assert card.status_code == 201, card.text

        for path, headers in (
            ("/t/tenant-b/api/onboarding", a),
            ("/api/onboarding", {**a, "X-Tenant": "tenant-b"}),
            ("/t/tenant-a/api/onboarding", b),
        ):
            refused = await client.get(path, headers=headers)
            assert refused.status_code == 403 and refused.json()["error"] == "wrong_tenant", refused.text
        assert (await client.get("/t/tenant-b/api/onboarding")).status_code == 401

        # Each sees its own state, not the other's.
        mine = await _checklist(client, "tenant-a", a)
        assert mine["email_verified"] is False and mine["first_card"] is False and mine["plan_chosen"] is True
        by_header = await client.get("/api/onboarding", headers={**b, "X-Tenant": "tenant-b"})
        assert by_header.status_code == 200, by_header.text
        theirs = by_header.json()
        assert theirs["email_verified"] is True and theirs["first_card"] is True and theirs["plan_chosen"] is False
