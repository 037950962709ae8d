"""Helpers for the billing tests with ``CARDVAULT_BILLING=stripe`` against the local Stripe stand-ins.

``open_stripe_client``: the app with Stripe on (the stand-in as API base), its catalogue synced;
``post_event`` and ``tenant_state`` drive and read it. ``open_billed``: the same app plus the
billing service and inbox of a second "replica" in the test's own event loop (the app runs in the test
client's thread; its jobs are run here, with ``now`` under the test's control, as the leader would).
Webhook events are built and signed exactly as Stripe does (``StripeStandin.signed``) and posted to the
app; ``subscribe`` runs a tenant through a real Checkout Session. Outcomes are read straight from the
control database.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
from litestar.testing import AsyncTestClient
from psycopg.rows import dict_row

from controlplane.app import create_app
from controlplane.billing import catalog
from controlplane.billing.inbox import Inbox
from controlplane.billing.providers import provider_for
from controlplane.billing.service import BillingService
from controlplane.billing.stripe_provider import StripeProvider
from controlplane.http.state import PLATFORM_STATE_KEY
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import Tier
from controlplane.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.integration.auth_support import TenantAdmin
from tests.stripe_harness import StripeStandin

Client = AsyncTestClient[Any]
Row = dict[str, Any]
WEBHOOK = "/billing/stripe/webhook"
_TENANT_STATE = """
    SELECT t.status, t.subscription_tier AS tier, b.customer_id, b.subscription_id, b.subscription_status,
           b.price_id, b.current_period_end, b.grace_deadline, b.suspended_for_nonpayment, b.state_at
      FROM tenants t LEFT JOIN tenant_billing b ON b.tenant_id = t.id WHERE t.id = %s
"""


@dataclasses.dataclass
class Billed:
    """The app (``client``), and billing as the scheduler's leader runs it (``billing``, ``inbox``)."""

    client: Client
    platform: Platform
    billing: BillingService
    inbox: Inbox
    standin: StripeStandin

    @property
    def provider(self) -> StripeProvider:
        assert isinstance(self.billing.provider, StripeProvider)
        return self.billing.provider

    async def rows(self, query: str, params: tuple[Any, ...] = ()) -> list[Row]:
        async with self.platform.control.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def tenant_state(self, tenant_id: uuid.UUID) -> Row:
        """The tenant's registry status and tier with its billing record."""
        (row,) = await self.rows(_TENANT_STATE, (tenant_id,))
        return row

    async def inbox_rows(self) -> list[Row]:
        return await self.rows(
            "SELECT event_id, event_type, attempts, last_error, tenant_id, outcome, processed_at"
            " FROM billing_events ORDER BY received_at, event_id"
        )

    async def billing_audit(self, slug: str) -> list[Row]:
        """``platform_audit`` rows of billing's own actions on ``slug``, oldest first."""
        return await self.rows(
            "SELECT actor, action, outcome, details FROM platform_audit"
            " WHERE tenant_slug = %s AND actor = 'billing' ORDER BY id",
            (slug,),
        )

    async def price(self, tier: Tier, interval: str = "month") -> str:
        async with self.platform.control.connection() as conn:
            price = await catalog.price_for(conn, tier, interval)
        assert price is not None
        return price

    async def post_event(
        self, type: str, obj: dict[str, Any], *, created: int | None = None
    ) -> tuple[httpx.Response, dict[str, Any]]:
        """Sign an event about ``obj`` as Stripe would and post it to the webhook: (response, event)."""
        return await post_event(self.client, self.standin, type, obj, created=created)

    async def checkout(self, tenant: TenantAdmin, tier: str = "professional", interval: str = "month") -> str:
        """The tenant admin starts a checkout: the Checkout Session's id."""
        started = await self.client.post(
            tenant.api("/billing/checkout"), json={"tier": tier, "interval": interval}, headers=tenant.auth
        )
        assert started.status_code == 200, started.text
        return str(started.json()["url"]).rsplit("/", 1)[1]

    async def subscribe(self, tenant: TenantAdmin, tier: str = "professional", interval: str = "month") -> Row:
        """Checkout, payment at the stand-in, Stripe's ``checkout.session.completed``: the subscription."""
        paid = await self.standin.complete_checkout(await self.checkout(tenant, tier, interval), deliver=False)
        answer, _ = await self.post_event("checkout.session.completed", paid["session"])
        assert answer.status_code == 200, answer.text
        subscription: Row = paid["subscription"]
        return subscription


async def sync_catalog(settings: Settings) -> None:
    """``cardvault billing sync`` into the control database of ``settings`` (prices and meters)."""
    provider = provider_for(settings.billing)
    assert provider is not None
    async with await psycopg.AsyncConnection.connect(
        settings.database.url, autocommit=True, row_factory=dict_row
    ) as conn:
        await catalog.sync(conn, provider)


@asynccontextmanager
async def open_stripe_client(settings: Settings) -> AsyncIterator[Client]:
    """The app on ``settings`` (billing on) with the admin token set, its catalogue synced."""
    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        await sync_catalog(settings)
        yield client


@asynccontextmanager
async def open_billed(settings: Settings, standin: StripeStandin) -> AsyncIterator[Billed]:
    """``open_stripe_client`` plus the leader's billing, in the test's event loop."""
    async with open_stripe_client(settings) as client, Platform.open(settings, migrate=False) as platform:
        billing = BillingService(platform, TenantService(platform), provider_for(settings.billing))
        yield Billed(client, platform, billing, Inbox(platform, billing), standin)


async def post_event(
    client: Client, standin: StripeStandin, type: str, obj: dict[str, Any], *, created: int | None = None
) -> tuple[httpx.Response, dict[str, Any]]:
    """Sign an event about ``obj`` as Stripe would and post it to the app's webhook: (response, event)."""
    event = standin.event(type, obj, created=created)
    body, headers = standin.signed(event)
    response = await client.post(WEBHOOK, content=body, headers={**headers, "Authorization": ""})
    return response, event


async def tenant_state(client: Client, tenant_id: uuid.UUID) -> Row:
    """The tenant's registry status and tier with its billing record (read on a connection of its own)."""
    platform: Platform = client.app.state[PLATFORM_STATE_KEY]
    async with await psycopg.AsyncConnection.connect(
        platform.settings.database.url, autocommit=True, row_factory=dict_row
    ) as conn:
        cur = await conn.execute(_TENANT_STATE, (tenant_id,))
        (row,) = await cur.fetchall()
    return row
