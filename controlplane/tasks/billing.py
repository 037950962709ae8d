"""One tenant's overage report, as a task (``billing.report_tenant``): the reporting half of the leader's
``report_overage`` job, for one tenant, in whichever worker takes it.

The leader's round records the newly closed days of every tenant in the overage ledger (one statement on
the control database, ``metering.record_overage``) and queues a task for each tenant with rows due that
can be sent (``Fanout.billing_round``). The task sends that tenant's due rows to the provider as
``metering.report_pending`` always has, as of the round's time (``now``).

**A row is reported once, however often the task runs.** Each row is sent in its own transaction that holds
it ``FOR UPDATE SKIP LOCKED`` and marks it reported, so a second run (the same task retried, or the next
round's) finds it reported and sends nothing. A worker that dies after the provider accepted a row and
before the mark committed loses its transaction with its connection: the row is unreported again, the task
is retried by another worker (the stalled-job check) and sends it again with the same identifier, which
the provider drops (Stripe keeps identifiers at least a day). The queue's ``lock`` keeps two reports of one
tenant from running at once.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from controlplane.billing import metering
from controlplane.billing.provider import BillingProvider
from controlplane.errors import ConfigError
from controlplane.platform import Platform


async def report_tenant(
    platform: Platform, provider: BillingProvider | None, tenant_id: uuid.UUID, now: datetime
) -> str:
    """Report the tenant's overage rows due at ``now``; what was done in a few words."""
    if provider is None:  # the queue's tasks come from a leader with a provider: this worker lacks one
        raise ConfigError("this worker has no billing provider (CARDVAULT_BILLING) to report overage with")
    async with platform.control.connection() as conn:
        stats = await metering.report_pending(
            conn, provider, now=now, tenant_id=tenant_id, failpoints=platform.failpoints
        )
    line = f"tenant {tenant_id}: {stats.sent} reported, {stats.failed} failed"
    if stats.gave_up:
        line += f" ({stats.gave_up} out of attempts)"
    return line
