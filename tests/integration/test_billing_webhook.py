"""Stripe's webhook as an inbox: verified, stored by event id, acknowledged, processed once, in any order.

Events are signed exactly as Stripe signs them and posted to the app; what they did is read from the
control database. Proven here: a forged, a missing and a stale signature are 400 ``invalid_signature`` and
store nothing; the same event twice is stored and processed once; an older ``customer.subscription.updated``
after a newer one changes nothing (the subscription's current state is fetched from Stripe); an event
stored but never processed (a crash in between) is processed by the inbox job; an unknown customer's event
is recorded and ignored; a Stripe outage while processing keeps the event pending with its error until a
later run applies it; and end to end, an event the stand-in itself delivers to ``cardvault serve`` upgrades
the tenant.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from controlplane.billing import catalog, repository
from controlplane.billing.models import Outcome
from controlplane.billing.providers import provider_for
from controlplane.billing.service import utcnow
from controlplane.platform import Platform
from controlplane.registry.models import Tier
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN, eventually, serve
from tests.integration.auth_support import create_tenant
from tests.integration.billing_support import WEBHOOK, Billed, open_billed
from tests.integration.tenant_support import fetch, provision_with_admin
from tests.stripe_harness import StripeStandin, stripe_env


@pytest.fixture
async def billed(stripe_settings: Settings, stripe_standin: StripeStandin) -> AsyncIterator[Billed]:
    async with open_billed(stripe_settings, stripe_standin) as opened:
        yield opened


async def test_forged_missing_and_stale_signatures_are_refused_and_store_nothing(billed: Billed) -> None:
    event = billed.standin.event("invoice.paid", {"object": "invoice", "id": "in_x", "customer": "cus_x"})
    body = json.dumps(event).encode()
    forged = billed.standin.sign(body, secret="whsec_not_the_secret")
    stale = billed.standin.sign(body, timestamp=int(time.time()) - 3600)
    tampered = billed.standin.sign(body)
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        ("forged", body, {"Stripe-Signature": forged}),
        ("missing", body, {}),
        ("stale", body, {"Stripe-Signature": stale}),
        ("garbage", body, {"Stripe-Signature": "not a signature"}),
        ("tampered body", body.replace(b"in_x", b"in_y"), {"Stripe-Signature": tampered}),
    ]
    for name, payload, headers in cases:
        answer = await billed.client.post(WEBHOOK, content=payload, headers={**headers, "Authorization": ""})
        assert (answer.status_code, answer.json()["error"]) == (400, "invalid_signature"), (name, answer.text)
    assert await billed.inbox_rows() == []


async def test_a_replayed_event_is_acknowledged_and_processed_once(billed: Billed) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    paid = await billed.standin.complete_checkout(await billed.checkout(acme), deliver=False)
    event = billed.standin.event("checkout.session.completed", paid["session"])
    body, headers = billed.standin.signed(event)
    first = await billed.client.post(WEBHOOK, content=body, headers=headers)
    again = await billed.client.post(WEBHOOK, content=body, headers=headers)
    assert (first.status_code, first.json()["duplicate"]) == (200, False)
    assert (again.status_code, again.json()["duplicate"]) == (200, True)
    (row,) = await billed.inbox_rows()
    assert (row["event_id"], row["outcome"], row["attempts"], row["tenant_id"]) == (event["id"], "applied", 1, acme.id)
    state = await billed.tenant_state(acme.id)
    assert (state["tier"], state["subscription_status"]) == ("professional", "active")
    assert [a["action"] for a in await billed.billing_audit("acme")] == ["billing.tier"]


async def test_an_older_event_after_a_newer_one_changes_nothing(billed: Billed) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    subscription = await billed.subscribe(acme, "professional")
    assert (await billed.tenant_state(acme.id))["tier"] == "professional"
    # The customer moves to enterprise in Stripe's portal: Stripe holds the new price now.
    provider = billed.provider
    current = await provider.subscription(subscription["id"])
    assert current is not None
    await provider.change_price(current, await billed.price(Tier.ENTERPRISE), list(current.overage_items.values()))
    now = int(time.time())
    newer, _ = await billed.post_event("customer.subscription.updated", subscription, created=now)
    assert newer.status_code == 200
    assert (await billed.tenant_state(acme.id))["tier"] == "enterprise"
    # The event of the professional state, sent earlier, arrives last (its object still says professional).
    older, _ = await billed.post_event("customer.subscription.updated", subscription, created=now - 60)
    assert older.status_code == 200
    assert (await billed.tenant_state(acme.id))["tier"] == "enterprise"
    assert [r["outcome"] for r in await billed.inbox_rows()] == ["applied"] * 3
    # A state fetched before the one stored never overwrites it.
    stored = await billed.tenant_state(acme.id)
    async with billed.platform.control.connection() as conn:
        earlier = await repository.store_state(conn, acme.id, None, at=stored["state_at"] - timedelta(seconds=1))
    assert earlier is None and await billed.tenant_state(acme.id) == stored
    tiers = [a["details"]["changes"]["subscription_tier"] for a in await billed.billing_audit("acme")]
    assert tiers == [["starter", "professional"], ["professional", "enterprise"]]


async def test_an_event_stored_but_never_processed_is_processed_by_the_job(billed: Billed) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    paid = await billed.standin.complete_checkout(await billed.checkout(acme), deliver=False)
    body, headers = billed.standin.signed(billed.standin.event("checkout.session.completed", paid["session"]))
    # What the webhook stores before it answers; the process dies before processing it.
    inbox = billed.inbox
    _, stored = await inbox.receive(body, headers["Stripe-Signature"])
    assert stored
    (pending,) = await billed.inbox_rows()
    assert pending["processed_at"] is None and pending["outcome"] is None
    assert (await billed.tenant_state(acme.id))["tier"] == "starter"

    # Two workers reach for it at once (the webhook's own task and the job): one processes it.
    outcomes = await asyncio.gather(inbox.process(pending["event_id"]), inbox.process(pending["event_id"]))
    assert outcomes.count(Outcome.APPLIED) == 1 and outcomes.count(None) == 1
    (done,) = await billed.inbox_rows()
    assert (done["outcome"], done["attempts"]) == ("applied", 1) and done["processed_at"] is not None
    assert (await billed.tenant_state(acme.id))["tier"] == "professional"
    assert await inbox.process_pending() == "0 event(s) due"
    assert [a["action"] for a in await billed.billing_audit("acme")] == ["billing.tier"]


async def test_an_unknown_customers_event_is_recorded_and_ignored(billed: Billed) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    answer, event = await billed.post_event(
        "invoice.payment_failed",
        {"object": "invoice", "id": "in_nobody", "customer": "cus_nobody_we_know", "subscription": "sub_nobody"},
    )
    assert answer.status_code == 200, answer.text
    (row,) = await billed.inbox_rows()
    assert (row["event_id"], row["outcome"], row["tenant_id"]) == (event["id"], "unknown_customer", None)
    assert row["processed_at"] is not None and row["last_error"] is None
    state = await billed.tenant_state(acme.id)
    assert (state["status"], state["tier"]) == ("active", "starter")


async def test_a_stripe_outage_while_processing_keeps_the_event_until_a_retry_applies_it(billed: Billed) -> None:
    acme = await create_tenant(billed.client, "acme", tier="starter")
    paid = await billed.standin.complete_checkout(await billed.checkout(acme), deliver=False)
    await billed.standin.fail_next("/v1/subscriptions", 2, method="GET")
    answer, _ = await billed.post_event("checkout.session.completed", paid["session"])
    assert answer.status_code == 200  # stored and acknowledged: Stripe does not need to send it again
    (row,) = await billed.inbox_rows()
    assert row["processed_at"] is None and row["attempts"] == 1 and row["tenant_id"] == acme.id
    assert "ProviderUnavailable" in row["last_error"]
    assert (await billed.tenant_state(acme.id))["tier"] == "starter"
    # Not due before its backoff; due after it.
    inbox = billed.inbox
    assert await inbox.process_pending() == "0 event(s) due"
    assert await inbox.process_pending(now=utcnow() + timedelta(minutes=5)) == "1 event(s) due: 1 applied"
    assert (await billed.tenant_state(acme.id))["tier"] == "professional"


@pytest.mark.slow
async def test_stripes_own_deliveries_reach_a_running_service(
    stripe_settings: Settings,
    stripe_standin: StripeStandin,
    control_dsn: str,
    tenant_template_name: str,
    tmp_path: Path,
) -> None:
    """End to end: ``cardvault serve`` with Stripe on, the event delivered by the stand-in itself."""
    provider = provider_for(stripe_settings.billing)
    assert provider is not None
    async with Platform.open(stripe_settings, migrate=False) as platform, platform.control.connection() as conn:
        await catalog.sync(conn, provider)
    with serve(control_dsn, tenant_template_name, tmp_path, **stripe_env(stripe_standin)) as served:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=served.url, timeout=30, headers=admin) as http:
            _, auth = await provision_with_admin(http, "acme", tier="starter")
            started = await http.post("/t/acme/api/billing/checkout", json={"tier": "professional"}, headers=auth)
            assert started.status_code == 200, started.text
            url = f"{served.url}/billing/stripe/webhook"
            async with stripe_standin.webhook(url, events=["checkout.session.completed"]):
                done = await stripe_standin.complete_checkout(started.json()["url"].rsplit("/", 1)[1])
            assert [d["status"] for d in done["deliveries"] if d["url"] == url] == [200]

            async def upgraded() -> bool:
                rows = await fetch(control_dsn, "SELECT subscription_tier FROM tenants WHERE slug = 'acme'")
                return bool(rows[0]["subscription_tier"] == "professional")

            await eventually(upgraded, "the delivered event upgraded the tenant")
            shown = await http.get("/t/acme/api/billing", headers=auth)
            assert (shown.json()["tier"], shown.json()["subscription_status"]) == ("professional", "active")
