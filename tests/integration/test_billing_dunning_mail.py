"""Dunning mail: when a payment fails and when the tenant is suspended for it, its billing contact is mailed
the grace deadline and a link to pay, which opens the Billing Portal even while the tenant's API is 423.

Stripe's side is real (localstripe through the stand-in); the mails are read from ``mail_outbox``, where
they are queued in the transaction of the billing state they announce; the grace job runs with ``now``
given. Proven here: one mail when the grace period starts (not again for later events of the same
episode) and one when the tenant is suspended, both to the signup admin's address; without a signup, to
the Stripe customer's email; with neither, no mail and the dunning goes on; the link redirects (303) to a
fresh portal session for that tenant's customer while the tenant is suspended; a tampered, foreign or
expired link is 404 ``portal_link_invalid``.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controlplane.billing.dunning import LINK_TTL, PortalLinks
from controlplane.billing.errors import PortalLinkInvalid
from controlplane.settings import Settings
from tests.integration.auth_support import TenantAdmin, create_tenant
from tests.integration.billing_support import Billed, open_billed
from tests.stripe_harness import StripeStandin

LINK = re.compile(r"https?://\S+(/billing/portal\?token=[A-Za-z0-9_-]+)")


@pytest.fixture
async def billed(stripe_settings: Settings, stripe_standin: StripeStandin) -> AsyncIterator[Billed]:
    async with open_billed(stripe_settings, stripe_standin) as opened:
        yield opened


async def signed_up_by(billed: Billed, tenant: TenantAdmin, email: str) -> None:
    """The tenant's onboarding record, as a self-serve signup leaves it (the admin's address)."""
    async with billed.platform.control.connection() as conn:
        await conn.execute(
            "INSERT INTO tenant_onboarding (tenant_id, admin_email, verify_hash, verify_expires_at)"
            " VALUES (%s, %s, %s, now() + interval '1 day')",
            (tenant.id, email, secrets.token_bytes(32)),
        )


async def mails(billed: Billed, tenant: TenantAdmin) -> list[dict[str, Any]]:
    return await billed.rows(
        "SELECT kind, recipient, subject, body FROM mail_outbox WHERE tenant_id = %s ORDER BY id", (tenant.id,)
    )


async def fail_payment(billed: Billed, tenant: TenantAdmin, subscription_id: str) -> datetime:
    failed = await billed.standin.renew(subscription_id, fail=True, deliver=False)
    answer, _ = await billed.post_event("invoice.payment_failed", failed["invoice"])
    assert answer.status_code == 200, answer.text
    state = await billed.tenant_state(tenant.id)
    assert state["subscription_status"] == "past_due"
    deadline: datetime = state["grace_deadline"]
    return deadline


def when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


async def test_grace_start_and_suspension_mail_the_signup_admin_a_link_that_works_while_suspended(
    billed: Billed,
) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    await signed_up_by(billed, acme, "boss@acme.test")
    subscription = await billed.subscribe(acme, "professional")
    assert await mails(billed, acme) == []
    deadline = await fail_payment(billed, acme, subscription["id"])

    (past_due,) = await mails(billed, acme)
    assert (past_due["kind"], past_due["recipient"]) == ("payment_past_due", "boss@acme.test")
    assert "acme" in past_due["subject"] and when(deadline) in past_due["body"]
    # More events of the same episode (Stripe's update about the past_due subscription) mail nothing more.
    again, _ = await billed.post_event("customer.subscription.updated", subscription)
    assert again.status_code == 200 and len(await mails(billed, acme)) == 1

    assert await billed.billing.expire_grace(now=deadline) == "grace: 1 grace_expired"
    suspended = (await mails(billed, acme))[1]
    assert (suspended["kind"], suspended["recipient"]) == ("payment_suspended", "boss@acme.test")
    assert "suspended" in suspended["subject"] and when(deadline) in suspended["body"]
    assert (await billed.client.get(acme.api("/cards"), headers=acme.auth)).status_code == 423

    for mail in (past_due, suspended):  # both links open the portal of acme's customer, without signing in
        match = LINK.search(mail["body"])
        assert match is not None, mail["body"]
        opened = await billed.client.get(match.group(1), headers={"Authorization": ""}, follow_redirects=False)
        assert opened.status_code == 303, opened.text
        assert opened.headers["location"].startswith(f"{billed.standin.url}/portal/bps_")

    await billed.standin.renew(subscription["id"], deliver=False)  # paid: resumed, and no further mail
    assert await billed.billing.sync(acme.id) == "paid"
    assert [m["kind"] for m in await mails(billed, acme)] == ["payment_past_due", "payment_suspended"]


async def test_the_customer_email_is_the_contact_without_a_signup_and_no_contact_means_no_mail(
    billed: Billed,
) -> None:
    beta = await create_tenant(billed.client, "beta", tier="starter")
    gamma = await create_tenant(billed.client, "gamma", tier="starter")
    beta_sub = await billed.subscribe(beta, "professional")
    gamma_sub = await billed.subscribe(gamma, "professional")
    customer = (await billed.tenant_state(beta.id))["customer_id"]
    await billed.provider.client.v1.customers.update_async(customer, {"email": "billing@beta.test"})

    await fail_payment(billed, beta, beta_sub["id"])
    await fail_payment(billed, gamma, gamma_sub["id"])

    assert [(m["kind"], m["recipient"]) for m in await mails(billed, beta)] == [
        ("payment_past_due", "billing@beta.test")
    ]
    assert await mails(billed, gamma) == []  # no address anywhere: the grace period runs all the same


async def test_only_a_genuine_unexpired_link_opens_a_portal(billed: Billed) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    await billed.subscribe(acme, "professional")
    links = billed.billing.dunning.links
    now = datetime.now(UTC)
    token = links.token(acme.id, now + LINK_TTL)
    assert links.tenant_of(token, now=now) == acme.id

    foreign = PortalLinks("another deployment's secret key, 32+ chars", "http://x").token(acme.id, now + LINK_TTL)
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    nobody = links.token(uuid.uuid4(), now + LINK_TTL)  # a genuine link of a tenant that is gone
    for bad in (foreign, tampered, "garbage", nobody):
        answer = await billed.client.get(
            "/billing/portal", params={"token": bad}, headers={"Authorization": ""}, follow_redirects=False
        )
        assert (answer.status_code, answer.json()["error"]) == (404, "portal_link_invalid"), bad
    missing = await billed.client.get("/billing/portal", headers={"Authorization": ""})
    assert missing.status_code == 400
    with pytest.raises(PortalLinkInvalid, match="expired"):
        await billed.billing.portal_from_link(token, now=now + LINK_TTL + timedelta(seconds=1))
