"""Helpers of the overage metering tests: usage history, API-call counts, customers and the ledger as the
control database holds them, all written and read on the test's own superuser connection.

Times are fixed (``NOW``, a Monday morning): the domain functions take ``now=``; nothing sleeps.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from controlplane.billing import catalog_repository
from controlplane.billing.provider import BillingProvider, CatalogMeter
from controlplane.billing.providers import provider_for
from controlplane.platform import Platform
from controlplane.settings import Settings
from tests.stripe_harness import StripeStandin

Control = psycopg.AsyncConnection[Any]
GIB = 1024**3
#: "Now" of the tests; ``DAY1`` is yesterday (closed), ``TODAY`` still open.
NOW = datetime(2031, 5, 12, 9, 30, tzinfo=UTC)
TODAY = datetime(2031, 5, 12, tzinfo=UTC)
DAY1 = TODAY - timedelta(days=1)
DAY0 = TODAY - timedelta(days=2)


async def add_points(control: Control, tenant_id: uuid.UUID, metric: str, *points: tuple[datetime, float]) -> None:
    """History points of ``metric`` (``cards``, ``storage_bytes``) at the given times."""
    for at, value in points:
        await control.execute(
            "INSERT INTO tenant_usage_metrics (tenant_id, metric_name, metric_value, recorded_at)"
            " VALUES (%s, %s, %s, %s)",
            (tenant_id, metric, value, at),
        )


async def add_calls(control: Control, tenant_id: uuid.UUID, *hours: tuple[datetime, int]) -> None:
    """API calls counted for the hours starting at the given times."""
    for hour, calls in hours:
        await control.execute(
            "INSERT INTO tenant_api_calls (tenant_id, hour, calls) VALUES (%s, %s, %s)", (tenant_id, hour, calls)
        )


async def set_customer(
    control: Control, tenant_id: uuid.UUID, customer_id: str | None, *, period_end: datetime | None = None
) -> None:
    """The tenant's billing record with this provider customer (and subscription period end)."""
    await control.execute(
        """
        INSERT INTO tenant_billing (tenant_id, provider, customer_id, current_period_end) VALUES (%s, 'stripe', %s, %s)
        ON CONFLICT (tenant_id) DO UPDATE
           SET customer_id = EXCLUDED.customer_id, current_period_end = EXCLUDED.current_period_end
        """,
        (tenant_id, customer_id, period_end),
    )


async def ledger(control: Control, tenant_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    """Every ledger row (of one tenant), by tenant, meter and period."""
    cur = await control.execute(
        "SELECT * FROM billing_usage_reports WHERE %(t)s::uuid IS NULL OR tenant_id = %(t)s"
        " ORDER BY tenant_id, meter, period_start",
        {"t": tenant_id},
    )
    rows = await cur.fetchall()
    columns = [c.name for c in cur.description or ()]
    return [dict(zip(columns, row, strict=True)) for row in rows]


def brief(rows: list[dict[str, Any]]) -> list[tuple[str, datetime, int, int, int]]:
    """(meter, period start, quantity, usage, limit) of ledger rows."""
    return [(r["meter"], r["period_start"], r["quantity"], r["usage"], r["quota_limit"]) for r in rows]


async def metered_provider(
    settings: Settings, platform: Platform, standin: StripeStandin, meters: Iterable[CatalogMeter]
) -> BillingProvider:
    """The Stripe provider of ``settings`` on the stand-in, ``meters`` recorded in ``billing_meters`` as
    ``billing sync`` does, the stand-in's injected failures cleared."""
    found = provider_for(settings.billing)
    assert found is not None
    async with platform.control.connection() as conn:
        for meter in meters:
            await catalog_repository.record_meter(conn, found.name, meter)
    await standin.clear_failures()
    return found
