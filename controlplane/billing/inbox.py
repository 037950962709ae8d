"""The webhook inbox: verify, store by event id, acknowledge, then process once.

``receive`` verifies the provider's signature (a bad, missing or stale one stores nothing) and inserts
the event keyed by its id (``ON CONFLICT DO NOTHING``: a replay stores nothing new). ``process`` claims
one unprocessed event (``FOR UPDATE SKIP LOCKED``: two workers never handle the same one), finds the
tenant by the event's customer and syncs that tenant's subscription from the provider
(``BillingService.sync``): the event says *that* something changed, the provider says *what* holds
now. An event of an unknown customer is recorded as ``unknown_customer`` and left alone; a type billing
does not act on as ``ignored``. A failed attempt keeps the event pending with ``last_error`` and a
``next_attempt_at`` (exponential backoff) until ``MAX_ATTEMPTS``, then it is closed as ``failed``.

``process_pending`` (a scheduler job) picks up whatever is due: retries, and events stored by a
process that died before it processed them.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from controlplane.billing import repository as repo
from controlplane.billing.models import HANDLED_EVENTS, Outcome
from controlplane.billing.provider import ProviderEvent
from controlplane.billing.service import BillingService, utcnow
from controlplane.db import AsyncConn
from controlplane.platform import Platform

log = logging.getLogger(__name__)

#: Attempts at one event before it is closed as ``failed`` (the backoff spreads them over ~2 days).
MAX_ATTEMPTS = 12
#: Seconds before the first retry; doubled per attempt, at most ``MAX_BACKOFF``.
FIRST_BACKOFF = 30.0
MAX_BACKOFF = 6 * 3600.0
#: Events one run of ``process_pending`` handles.
PENDING_BATCH = 500


def backoff(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt."""
    return timedelta(seconds=min(FIRST_BACKOFF * 2 ** max(attempts - 1, 0), MAX_BACKOFF))


def customer_of(payload: dict[str, Any]) -> str | None:
    """The customer id an event's object names (a plain id, or an expanded customer)."""
    obj = payload.get("data", {}).get("object", {})
    customer = obj.get("customer") if isinstance(obj, dict) else None
    if isinstance(customer, dict):
        customer = customer.get("id")
    return customer if isinstance(customer, str) and customer else None


class Inbox:
    """Webhook events in, tenant effects out (through ``BillingService.sync``)."""

    def __init__(self, platform: Platform, billing: BillingService) -> None:
        self._p = platform
        self._billing = billing

    async def receive(self, payload: bytes, signature: str | None) -> tuple[ProviderEvent, bool]:
        """Verify and store an event: ``(event, stored now)``; a replay is ``(event, False)``."""
        provider = self._billing.require_provider()
        event = provider.verify_event(payload, signature)  # InvalidSignature (400): nothing stored
        async with self._p.control.connection() as conn:
            stored = await repo.insert_event(conn, provider.name, event)
        if not stored:
            log.info("billing: event %s (%s) received again; acknowledged", event.id, event.type)
        return event, stored

    async def process(self, event_id: str, *, now: datetime | None = None) -> Outcome | None:
        """Handle one stored event unless it is processed already or another worker holds it (None).

        Never raises: a failure is recorded on the event (it is retried later)."""
        now = now or utcnow()
        try:
            async with self._p.control.connection() as conn, conn.transaction():
                claimed = await repo.claim_event(conn, event_id)
                if claimed is None:
                    return None
                event, payload = claimed
                customer = customer_of(payload)
                tenant_id = await repo.tenant_of_customer(conn, customer) if customer else None
                if event.event_type not in HANDLED_EVENTS:
                    outcome = Outcome.IGNORED
                elif tenant_id is None:
                    log.warning("billing: event %s (%s) of unknown customer %s", event_id, event.event_type, customer)
                    outcome = Outcome.UNKNOWN_CUSTOMER
                else:
                    try:
                        async with conn.transaction():  # a savepoint: a failure undoes the sync's writes only
                            details = {"event_id": event_id, "event_type": event.event_type}
                            await self._billing.sync(tenant_id, now=now, details=details, conn=conn)
                    except Exception as exc:
                        return await self._failed(conn, event.event_id, event.attempts + 1, tenant_id, exc, now)
                    outcome = Outcome.APPLIED
                await repo.finish_event(conn, event_id, outcome=outcome.value, tenant_id=tenant_id)
                return outcome
        except Exception:  # the database itself: the event stays pending for the job
            log.exception("billing: could not process event %s", event_id)
            return None

    async def _failed(
        self, conn: AsyncConn, event_id: str, attempts: int, tenant_id: uuid.UUID, exc: Exception, now: datetime
    ) -> Outcome | None:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        if attempts >= MAX_ATTEMPTS:
            log.error("billing: giving up on event %s after %d attempts: %s", event_id, attempts, error)
            await repo.finish_event(conn, event_id, outcome=Outcome.FAILED.value, tenant_id=tenant_id, error=error)
            return Outcome.FAILED
        log.warning("billing: event %s failed (attempt %d, retried later): %s", event_id, attempts, error)
        await repo.fail_attempt(conn, event_id, error=error, tenant_id=tenant_id, retry_at=now + backoff(attempts))
        return None

    async def process_pending(self, *, now: datetime | None = None, limit: int = PENDING_BATCH) -> str:
        """The inbox job: every event due at ``now`` (retries, and any a crash left unprocessed)."""
        now = now or utcnow()
        async with self._p.control.connection() as conn:
            due = await repo.pending_events(conn, now, limit=limit)
        counts: dict[str, int] = {}
        for event_id in due:
            outcome = await self.process(event_id, now=now)
            key = outcome.value if outcome is not None else "pending"
            counts[key] = counts.get(key, 0) + 1
        summary = ", ".join(f"{n} {key}" for key, n in sorted(counts.items()))
        return f"{len(due)} event(s) due" + (f": {summary}" if summary else "")
