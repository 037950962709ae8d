"""Usage-based billing: overage over the plan, kept in a ledger and reported to the provider once.

**Periods are UTC days.** A day is billed once it is closed and settled (``SETTLE`` after midnight, so
every replica's API-call flush and a usage collection have landed). Why days and not hours: cards and
storage are levels, and a day bills them as unit-days (the peak of the day; hourly would send 24
events a day per tenant and meter and bill a GiB started for a moment 24 times); the hourly API-call
quota keeps its hour, because a day's quantity is the sum of each hour's calls over the hourly limit.

**Recording** (``record_overage``) computes every tenant's overage of the last ``LOOKBACK_DAYS`` closed
days (tenants with a provider customer only; see ``metering_repository``) and adds one ledger row per
tenant, meter and day with the identifier ``cv-<tenant id>-<meter>-<period start>``,
``INSERT ... ON CONFLICT DO NOTHING``: recomputing never adds or changes a row (the first computation
of a day wins). A day without overage has no row.

**Reporting** (``report_pending``) sends due rows one at a time, each in its own transaction that holds
the row ``FOR UPDATE SKIP LOCKED`` (two leaders never send the same row at once) and marks it reported.
The provider drops a second event with the same identifier, so a crash after the provider accepted
and before ``reported_at`` was written re-sends harmlessly. A failure counts an attempt, keeps the
error and backs off (``BACKOFF_BASE`` doubling, at most ``BACKOFF_CAP``); after ``MAX_ATTEMPTS`` the
row is ``failed`` (visible in ``GET /admin/billing/usage``; ``POST /admin/billing/usage/{id}/retry``
gives it one more attempt). The automatic retries of a row stay within a day of its first attempt:
Stripe deduplicates identifiers for at least 24 hours, so an attempt that timed out after Stripe
accepted it is still dropped there; a manual retry later than that relies on the ledger alone.

**Where it runs.** With the task queue (``cardvault serve``) the leader's job only records and queues one
report per tenant with rows due (``controlplane.tasks.fanout``, ``controlplane.tasks.billing``), and the
workers call ``report_pending`` with ``tenant_id``; ``Metering`` runs both halves in one process.
"""

from __future__ import annotations

import calendar
import enum
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec

from controlplane.billing import metering_repository as repository
from controlplane.billing.provider import BillingProvider
from controlplane.db import AsyncConn
from controlplane.errors import CardVaultError, NotFound
from controlplane.failpoints import Failpoints
from controlplane.paging import PageSize, decode_cursor, encode_cursor
from controlplane.platform import Platform
from controlplane.registry.models import Overage

log = logging.getLogger(__name__)

#: One billing period of overage.
PERIOD = timedelta(days=1)
#: How long after a period ends it is recorded (late API-call flushes and a usage collection land first).
SETTLE = timedelta(minutes=15)
#: Closed days (re)computed each run: a leader that was down this long loses nothing.
LOOKBACK_DAYS = 7
#: Rows sent per run at most, one after the other (hourly runs: up to 48,000 a day, three meters of
#: 16,000 tenants over their plan every day); the rest wait for the next run.
BATCH = 2000
#: Attempts before a row is ``failed``; with the backoff they span well under a day.
MAX_ATTEMPTS = 8
BACKOFF_BASE = timedelta(minutes=5)
BACKOFF_CAP = timedelta(hours=1)
#: Pages of ``GET /admin/billing/usage``.
USAGE_PAGES = PageSize(default=100, maximum=500)
#: The listing its cursors are issued for.
LISTING = "billing_usage"
#: Failpoint between the provider's acceptance and ``reported_at`` (the crash window tests cover).
AFTER_SEND = "after:report_usage"


class ReportState(enum.StrEnum):
    PENDING = "pending"
    REPORTED = "reported"
    FAILED = "failed"


class ReportNotFound(NotFound):
    """No unreported ledger row with that id."""

    code = "usage_report_not_found"


class OverageLine(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's overage of one meter in its current billing period so far."""

    meter: Overage
    #: Units over the plan: the closed days in the ledger plus today's so far (provisional).
    quantity: int
    #: The billing period (the subscription's, else the calendar month, UTC).
    period_start: datetime
    period_end: datetime
    #: Units of ``quantity`` the provider has accepted.
    reported: int


class UsageReport(msgspec.Struct, frozen=True, kw_only=True):
    """One ledger row as ``GET /admin/billing/usage`` shows it."""

    id: int
    tenant_id: uuid.UUID
    slug: str
    meter: Overage
    period_start: datetime
    period_end: datetime
    quantity: int
    #: What was measured (peak cards, peak bytes, calls of the day) and the limit it was held against.
    usage: int
    quota_limit: int
    identifier: str
    state: ReportState
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    reported_at: datetime | None
    failed_at: datetime | None


class UsageReportPage(msgspec.Struct, frozen=True):
    items: list[UsageReport]
    next_cursor: str | None


class ReportStats(msgspec.Struct, frozen=True, kw_only=True):
    """What one reporting run did."""

    sent: int = 0
    #: Attempts that failed (retried later) and rows that ran out of attempts with it.
    failed: int = 0
    gave_up: int = 0
    #: Due rows that cannot be sent: their tenant has no customer or their meter was never synced.
    unsendable: int = 0


def identifier(tenant_id: uuid.UUID, meter: Overage | str, period_start: datetime) -> str:
    """The idempotency identifier of a tenant's overage of one meter in one period (stable forever)."""
    return f"cv-{tenant_id}-{meter}-{period_start.astimezone(UTC):%Y%m%dT%H%MZ}"


def day_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def closed_periods(now: datetime, *, lookback: int = LOOKBACK_DAYS) -> list[datetime]:
    """Starts of the closed and settled days of the last ``lookback`` days, oldest first."""
    last = day_start(now - SETTLE) - PERIOD  # the newest day whose end + SETTLE <= now
    return [last - PERIOD * back for back in reversed(range(lookback))]


def backoff(attempts: int) -> timedelta:
    """Wait after the ``attempts``-th failed attempt."""
    return min(BACKOFF_BASE * (1 << min(max(attempts - 1, 0), 20)), BACKOFF_CAP)


def event_timestamp(period_end: datetime) -> datetime:
    """The meter event's time: the last second of its period (so it falls in the invoice of that day)."""
    return period_end - timedelta(seconds=1)


# -- recording --------------------------------------------------------------------------------------


async def record_overage(conn: AsyncConn, *, now: datetime, tenant_id: uuid.UUID | None = None) -> int:
    """Add the overage of the closed days not yet in the ledger; the number of rows added."""
    rows = await repository.overage(conn, closed_periods(now), tenant_id=tenant_id)
    for row in rows:
        row["identifier"] = identifier(row["tenant_id"], row["meter"], row["period_start"])
    added = await repository.insert_reports(conn, rows, next_attempt_at=now)
    return len(added)


# -- reporting --------------------------------------------------------------------------------------


def _describe(exc: Exception) -> str:
    detail = exc.detail if isinstance(exc, CardVaultError) else str(exc)
    return f"{type(exc).__name__}: {detail}"[:1000]


async def report_pending(
    conn: AsyncConn,
    provider: BillingProvider,
    *,
    now: datetime,
    batch: int = BATCH,
    failpoints: Failpoints | None = None,
    tenant_id: uuid.UUID | None = None,
) -> ReportStats:
    """Send up to ``batch`` due ledger rows (of every tenant, or only ``tenant_id``: the queued task) to the
    provider, each once (``conn`` in autocommit)."""
    sent = failed = gave_up = 0
    for _ in range(batch):
        async with conn.transaction():
            row = await repository.claim_next(conn, now, tenant_id)
            if row is None:
                break
            try:
                await provider.report_usage(
                    event_name=row["event_name"],
                    customer_id=row["customer_id"],
                    quantity=int(row["quantity"]),
                    identifier=row["identifier"],
                    timestamp=event_timestamp(row["period_end"]),
                )
            except Exception as exc:  # one row's failure (provider down, refused) must not stop the run
                attempts = int(row["attempts"]) + 1
                out_of_attempts = attempts >= MAX_ATTEMPTS
                await repository.mark_attempt_failed(
                    conn,
                    row["id"],
                    error=_describe(exc),
                    next_attempt_at=now + backoff(attempts),
                    failed_at=now if out_of_attempts else None,
                )
                failed += 1
                gave_up += out_of_attempts
                log.warning("billing: overage report %s failed (attempt %d): %s", row["identifier"], attempts, exc)
                continue
            if failpoints is not None:
                failpoints.hit(AFTER_SEND)
            await repository.mark_reported(conn, row["id"], now)
            sent += 1
    unsendable = await repository.unsendable_count(conn, now, tenant_id)
    return ReportStats(sent=sent, failed=failed, gave_up=gave_up, unsendable=unsendable)


def describe(recorded: int, stats: ReportStats) -> str:
    """The job's one outcome line."""
    line = f"{recorded} overage period(s) recorded, {stats.sent} reported, {stats.failed} failed"
    if stats.gave_up:
        line += f" ({stats.gave_up} out of attempts)"
    if stats.unsendable:
        line += f", {stats.unsendable} waiting for a customer or a synced meter"
    return line


class Metering:
    """The leader job ``report_overage``: record the newly closed days, then report what is due."""

    def __init__(self, platform: Platform, provider: BillingProvider) -> None:
        self._p = platform
        self._provider = provider

    async def run(self, now: datetime | None = None) -> tuple[int, ReportStats]:
        """One run as of ``now``: the rows recorded and what reporting did."""
        now = now if now is not None else datetime.now(UTC)
        async with self._p.control.connection() as conn:
            recorded = await record_overage(conn, now=now)
            stats = await report_pending(conn, self._provider, now=now, failpoints=self._p.failpoints)
        return recorded, stats

    async def job(self) -> str:
        return describe(*await self.run())


async def retry_report(conn: AsyncConn, report_id: int, *, now: datetime) -> None:
    """Make an unreported row (``failed`` included) due at once; it gets one more attempt."""
    if await repository.retry(conn, report_id, now) is None:
        raise ReportNotFound(f"no unreported overage report {report_id}", id=report_id)


# -- reading ----------------------------------------------------------------------------------------


def _state(row: repository.Row) -> ReportState:
    if row["reported_at"] is not None:
        return ReportState.REPORTED
    return ReportState.FAILED if row["failed_at"] is not None else ReportState.PENDING


_AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]


async def list_reports(
    conn: AsyncConn,
    *,
    tenant_id: uuid.UUID | None = None,
    meter: Overage | None = None,
    state: ReportState | None = None,
    cursor: str | None = None,
    limit: int = USAGE_PAGES.default,
) -> UsageReportPage:
    """The ledger, newest period first, in keyset pages."""
    after = decode_cursor(cursor, LISTING, _AwareTime) if cursor is not None else None
    rows = await repository.report_rows(
        conn,
        tenant_id=tenant_id,
        meter=meter.value if meter is not None else None,
        state=state.value if state is not None else None,
        after=after,
        limit=limit + 1,
    )
    items = [
        UsageReport(
            id=r["id"],
            tenant_id=r["tenant_id"],
            slug=r["slug"],
            meter=Overage(r["meter"]),
            period_start=r["period_start"],
            period_end=r["period_end"],
            quantity=r["quantity"],
            usage=r["usage"],
            quota_limit=r["quota_limit"],
            identifier=r["identifier"],
            state=_state(r),
            attempts=r["attempts"],
            last_error=r["last_error"],
            next_attempt_at=r["next_attempt_at"],
            created_at=r["created_at"],
            reported_at=r["reported_at"],
            failed_at=r["failed_at"],
        )
        for r in rows[:limit]
    ]
    last = items[-1] if len(rows) > limit else None
    return UsageReportPage(
        items=items, next_cursor=encode_cursor(LISTING, last.period_start, last.id) if last else None
    )


def _months_before(moment: datetime, months: int) -> datetime:
    """``moment`` ``months`` calendar months earlier (the day clamped to the month's length)."""
    index = moment.year * 12 + moment.month - 1 - months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def billing_period(now: datetime, period_end: datetime | None, interval: str | None) -> tuple[datetime, datetime]:
    """The current billing period: the subscription's (its end minus its interval) while its end lies
    ahead, else the calendar month of ``now`` (UTC)."""
    if period_end is not None and period_end > now:
        return _months_before(period_end, 12 if interval == "year" else 1), period_end
    now = now.astimezone(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def period_days(start: datetime, end: datetime, now: datetime) -> list[datetime]:
    """The UTC days billed in the billing period [start, end) up to ``now``: those whose meter event
    (``event_timestamp``) falls in the period, that have begun."""
    days: list[datetime] = []
    day = day_start(start)
    while event_timestamp(day + PERIOD) < end and day <= now:
        if event_timestamp(day + PERIOD) >= start:
            days.append(day)
        day += PERIOD
    return days


async def overage_summary(conn: AsyncConn, tenant_id: uuid.UUID, *, now: datetime | None = None) -> list[OverageLine]:
    """The tenant's overage per meter in its current billing period so far: the days in the ledger,
    plus the days it will still record (today's so far included, provisional). All zero for a tenant
    without a customer: none of it is billed."""
    now = now if now is not None else datetime.now(UTC)
    billing = await repository.billing_period(conn, tenant_id)
    start, end = billing_period(
        now,
        billing["current_period_end"] if billing else None,
        billing["billing_interval"] if billing else None,
    )
    quantity = dict.fromkeys(Overage, 0)
    reported = dict.fromkeys(Overage, 0)
    days = period_days(start, end, now)
    if billing is not None and billing["customer_id"] is not None and days:
        ledger = await repository.tenant_reports(conn, tenant_id, days[0], days[-1])
        recorded = {(r["meter"], r["period_start"]) for r in ledger}
        for row in ledger:
            quantity[Overage(row["meter"])] += int(row["quantity"])
            if row["reported_at"] is not None:
                reported[Overage(row["meter"])] += int(row["quantity"])
        recordable_from = closed_periods(now)[0]  # older days without a row are never billed
        live = [d for d in days if d >= recordable_from]
        for row in await repository.overage(conn, live, tenant_id=tenant_id):
            if (row["meter"], row["period_start"]) not in recorded:
                quantity[Overage(row["meter"])] += int(row["quantity"])
    return [
        OverageLine(meter=m, quantity=quantity[m], period_start=start, period_end=end, reported=reported[m])
        for m in Overage
    ]
