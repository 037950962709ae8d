"""All SQL on ``tenant_billing`` (our copy of each tenant's billing state) and ``billing_events`` (the
webhook inbox), and the one read billing makes of onboarding's ``tenant_onboarding`` (the billing
contact). Callers own the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from controlplane.billing.models import BillingRecord, InboxEvent
from controlplane.billing.provider import ProviderEvent, SubscriptionState
from controlplane.db import AsyncConn

_RECORD = sql.SQL(
    """tenant_id, provider, customer_id, subscription_id, subscription_status, price_id, current_period_end,
       grace_deadline, suspended_for_nonpayment, state_at, updated_at"""
)
_EVENT = sql.SQL(
    """event_id, event_type, created, received_at, attempts, last_error, next_attempt_at, tenant_id, outcome,
       processed_at"""
)
_GET = sql.SQL("SELECT {} FROM tenant_billing WHERE tenant_id = %s").format(_RECORD)
_GET_LOCKED = sql.SQL("{} FOR UPDATE").format(_GET)


def _record(row: Mapping[str, Any]) -> BillingRecord:
    return BillingRecord(**{k: row[k] for k in BillingRecord.__struct_fields__})


def _event(row: Mapping[str, Any]) -> InboxEvent:
    return InboxEvent(**{k: row[k] for k in InboxEvent.__struct_fields__})


# -- tenant_billing ---------------------------------------------------------------------------------


async def get(conn: AsyncConn, tenant_id: uuid.UUID, *, lock: bool = False) -> BillingRecord | None:
    """The tenant's record; ``lock``: held (``FOR UPDATE``) until the transaction ends, so one tenant's
    state is fetched and applied by one worker at a time."""
    cur = await conn.execute(_GET_LOCKED if lock else _GET, (tenant_id,))
    row = await cur.fetchone()
    return _record(row) if row else None


async def tenant_of_customer(conn: AsyncConn, customer_id: str) -> uuid.UUID | None:
    cur = await conn.execute("SELECT tenant_id FROM tenant_billing WHERE customer_id = %s", (customer_id,))
    row = await cur.fetchone()
    return row["tenant_id"] if row else None


async def set_customer(conn: AsyncConn, tenant_id: uuid.UUID, provider: str, customer_id: str) -> str:
    """Record the tenant's customer (making its record) unless it has one already; the one it has now."""
    cur = await conn.execute(
        """
        INSERT INTO tenant_billing AS b (tenant_id, provider, customer_id) VALUES (%s, %s, %s)
        ON CONFLICT (tenant_id) DO UPDATE
           SET customer_id = coalesce(b.customer_id, EXCLUDED.customer_id), updated_at = now()
        RETURNING customer_id
        """,
        (tenant_id, provider, customer_id),
    )
    row = await cur.fetchone()
    assert row is not None
    return str(row["customer_id"])


async def store_state(
    conn: AsyncConn, tenant_id: uuid.UUID, state: SubscriptionState | None, *, at: datetime
) -> BillingRecord | None:
    """Store the subscription's state as fetched at ``at``; None (nothing written) if the record holds
    a state fetched later. ``state`` None: the customer has no subscription at all."""
    cur = await conn.execute(
        sql.SQL(
            """
        UPDATE tenant_billing
           SET subscription_id = coalesce(%(sub)s, subscription_id),
               subscription_status = %(status)s, price_id = coalesce(%(price)s, price_id),
               current_period_end = %(end)s, state_at = %(at)s, updated_at = now()
         WHERE tenant_id = %(tenant)s AND (state_at IS NULL OR state_at <= %(at)s)
        RETURNING {}
        """
        ).format(_RECORD),
        {
            "tenant": tenant_id,
            "sub": state.id if state else None,
            "status": state.status if state else None,
            "price": state.price_id if state else None,
            "end": state.current_period_end if state else None,
            "at": at,
        },
    )
    row = await cur.fetchone()
    return _record(row) if row else None


async def set_dunning(
    conn: AsyncConn, tenant_id: uuid.UUID, *, grace_deadline: datetime | None, suspended_for_nonpayment: bool
) -> None:
    await conn.execute(
        """
        UPDATE tenant_billing SET grace_deadline = %s, suspended_for_nonpayment = %s, updated_at = now()
         WHERE tenant_id = %s
        """,
        (grace_deadline, suspended_for_nonpayment, tenant_id),
    )


async def signup_email(conn: AsyncConn, tenant_id: uuid.UUID) -> str | None:
    """The address of the admin who signed the tenant up (``tenant_onboarding``, onboarding's table:
    read only), or None for a tenant made otherwise."""
    cur = await conn.execute("SELECT admin_email FROM tenant_onboarding WHERE tenant_id = %s", (tenant_id,))
    row = await cur.fetchone()
    return str(row["admin_email"]) if row else None


async def grace_expired(conn: AsyncConn, now: datetime, *, limit: int) -> list[uuid.UUID]:
    """Active tenants whose grace deadline has passed (billing has not suspended them yet)."""
    cur = await conn.execute(
        """
        SELECT b.tenant_id FROM tenant_billing b JOIN tenants t ON t.id = b.tenant_id AND t.status = 'active'
         WHERE b.grace_deadline <= %s AND NOT b.suspended_for_nonpayment
         ORDER BY b.grace_deadline LIMIT %s
        """,
        (now, limit),
    )
    return [r["tenant_id"] for r in await cur.fetchall()]


# -- billing_events (the inbox) ---------------------------------------------------------------------


async def insert_event(conn: AsyncConn, provider: str, event: ProviderEvent) -> bool:
    """Store a verified event; False when its id is stored already (a replay)."""
    cur = await conn.execute(
        """
        INSERT INTO billing_events (event_id, provider, event_type, created, payload)
        VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING
        """,
        (event.id, provider, event.type, event.created, Jsonb(event.payload)),
    )
    return cur.rowcount == 1


async def claim_event(conn: AsyncConn, event_id: str) -> tuple[InboxEvent, dict[str, Any]] | None:
    """The unprocessed event and its payload, locked for this transaction; None if it is processed or
    another worker holds it."""
    cur = await conn.execute(
        sql.SQL(
            """
        SELECT {}, payload FROM billing_events
         WHERE event_id = %s AND processed_at IS NULL FOR UPDATE SKIP LOCKED
        """
        ).format(_EVENT),
        (event_id,),
    )
    row = await cur.fetchone()
    return (_event(row), row["payload"]) if row else None


async def pending_events(conn: AsyncConn, now: datetime, *, limit: int) -> list[str]:
    """Ids of unprocessed events due at ``now``, oldest first (not locked: each is claimed on its own)."""
    cur = await conn.execute(
        """
        SELECT event_id FROM billing_events WHERE processed_at IS NULL AND next_attempt_at <= %s
         ORDER BY next_attempt_at, received_at, event_id LIMIT %s
        """,
        (now, limit),
    )
    return [r["event_id"] for r in await cur.fetchall()]


async def finish_event(
    conn: AsyncConn, event_id: str, *, outcome: str, tenant_id: uuid.UUID | None, error: str | None = None
) -> None:
    await conn.execute(
        """
        UPDATE billing_events
           SET attempts = attempts + 1, outcome = %s, tenant_id = %s, last_error = %s, processed_at = now()
         WHERE event_id = %s
        """,
        (outcome, tenant_id, error, event_id),
    )


async def fail_attempt(
    conn: AsyncConn, event_id: str, *, error: str, tenant_id: uuid.UUID | None, retry_at: datetime
) -> None:
    """Count a failed attempt; the event stays pending until ``retry_at``."""
    await conn.execute(
        """
        UPDATE billing_events
           SET attempts = attempts + 1, last_error = %s, tenant_id = coalesce(%s, tenant_id), next_attempt_at = %s
         WHERE event_id = %s
        """,
        (error, tenant_id, retry_at, event_id),
    )


async def get_event(conn: AsyncConn, event_id: str) -> InboxEvent | None:
    cur = await conn.execute(sql.SQL("SELECT {} FROM billing_events WHERE event_id = %s").format(_EVENT), (event_id,))
    row = await cur.fetchone()
    return _event(row) if row else None


async def events_of(conn: AsyncConn, tenant_id: uuid.UUID, *, limit: int) -> list[InboxEvent]:
    """The tenant's latest events, newest first."""
    cur = await conn.execute(
        sql.SQL("SELECT {} FROM billing_events WHERE tenant_id = %s ORDER BY created DESC, event_id LIMIT %s").format(
            _EVENT
        ),
        (tenant_id, limit),
    )
    return [_event(r) for r in await cur.fetchall()]
