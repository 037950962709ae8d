"""Alerts (``GET /admin/ui/alerts``): everything firing now, critical first, each linked to its tenant.

The sources are the ones ``/metrics`` and the admin API already have, so the page adds no state:

- quota alerts: the open rows of ``quota_alerts`` (``/admin/alerts``' source); 100 % is critical;
- unhealthy tenants: the health monitor's last round (on the replica that runs it, the leader);
- stale backups: the backups' standing every replica refreshes;
- failing jobs: the scheduler's stats of this replica (a job whose last run raised);
- tenants answering 5xx to many of their requests over the last day (``tenant_request_stats``).

``firing`` gathers them for this page and the overview; ``job_rows`` is the job health both show.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, Literal

from litestar import Request, get
from litestar.datastructures import State
from litestar.response import Template

from controlplane.db import AsyncConn
from controlplane.http.admin import admin_principal
from controlplane.http.state import METRICS_STATE_KEY, PLATFORM_STATE_KEY, QUOTA_ALERTS_STATE_KEY
from controlplane.metrics.service import CardVaultMetrics
from controlplane.platform import Platform
from controlplane.usage import alerts as quota_alerts
from controlplane.usage.alerts import AlertState, QuotaAlerts
from controlplane.web.admin.tenant_list_repository import high_error_rates
from controlplane.web.pages import page

Severity = Literal["critical", "warning"]

#: Quota alerts listed at most (the rest are counted).
QUOTA_ROWS = 100
#: Stale-backup tenants listed at most (the rest are counted).
STALE_ROWS = 100
#: A tenant's 5xx share over ``ERROR_HOURS`` that is a warning / critical, from ``ERROR_MIN_REQUESTS`` on.
ERROR_WARNING, ERROR_CRITICAL = 0.05, 0.25
ERROR_HOURS = 24
ERROR_MIN_REQUESTS = 20
ERROR_ROWS = 50


@dataclasses.dataclass(frozen=True)
class Item:
    """One firing alert as the pages list it."""

    severity: Severity
    kind: str
    detail: str
    slug: str | None = None
    since: datetime | None = None


@dataclasses.dataclass(frozen=True)
class JobRow:
    name: str
    runs: int
    failures: int
    leader_only: bool
    #: How often it runs ("every 30 s", "every 1 h").
    every: str
    last_success: datetime | None
    last_error: str | None
    #: The last run's start plus the job's interval (None: not run on this replica yet).
    next_run: datetime | None


@dataclasses.dataclass(frozen=True)
class Firing:
    items: list[Item]
    #: Alerts in all, including those not listed (quota alerts and stale backups beyond their rows).
    total: int
    health_checked_at: datetime | None

    def of(self, severity: Severity) -> list[Item]:
        return [item for item in self.items if item.severity == severity]


def _every(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"every {seconds / size:g} {unit}"
    return f"every {seconds:g} s"


def _moment(unix: float | None) -> datetime | None:
    return datetime.fromtimestamp(unix, UTC) if unix is not None else None


def job_rows(state: State) -> list[JobRow]:
    """The scheduler's jobs on this replica, by name (empty until the scheduler is bound)."""
    metrics: CardVaultMetrics = state[METRICS_STATE_KEY]
    jobs = metrics.jobs
    if jobs is None:
        return []
    return [
        JobRow(
            name=name,
            runs=stats.runs,
            failures=stats.failures,
            leader_only=stats.leader_only,
            every=_every(stats.every_seconds),
            last_success=_moment(stats.last_success),
            last_error=stats.last_error,
            next_run=_moment(stats.last_started + stats.every_seconds) if stats.last_started is not None else None,
        )
        for name, stats in sorted(jobs.stats.items())
    ]


def _in_memory(state: State) -> tuple[list[Item], int, datetime | None]:
    """Unhealthy tenants, stale backups and failing jobs, from what this replica holds."""
    metrics: CardVaultMetrics = state[METRICS_STATE_KEY]
    items: list[Item] = []
    checked_at = None
    health = metrics.health.latest if metrics.health is not None else None
    if health is not None:
        checked_at = health.finished_at
        for result in health.results:
            if not result.ok:
                detail = f"health check failed: {result.error or 'no answer'}"
                items.append(Item("critical", "unhealthy", detail, result.tenant, health.finished_at))
    stale_total = 0
    overview = metrics.backups.overview if metrics.backups is not None else None
    if overview is not None:
        stale = sorted(slug for slug, is_stale in overview.stale.items() if is_stale)
        stale_total = len(stale)
        for slug in stale[:STALE_ROWS]:
            last = _moment(overview.last_success.get(slug))
            detail = "no backup yet" if last is None else "last successful backup is too old"
            items.append(Item("warning", "backup stale", detail, slug, last))
    for job in job_rows(state):
        if job.last_error is not None:
            detail = f"job {job.name} failed: {job.last_error[:300]}"
            items.append(Item("critical", "job failing", detail, None, job.last_success))
    return items, max(0, stale_total - STALE_ROWS), checked_at


async def firing(state: State, conn: AsyncConn) -> Firing:
    """Everything firing now (see the module docstring), critical first."""
    evaluator: QuotaAlerts = state[QUOTA_ALERTS_STATE_KEY]
    items, unlisted, checked_at = _in_memory(state)
    open_alerts = await quota_alerts.list_alerts(conn, state=AlertState.OPEN, limit=QUOTA_ROWS)
    for alert in open_alerts:
        detail = f"{alert.quota.value} at {alert.threshold} % ({alert.usage:,} of {alert.limit:,})"
        severity: Severity = "critical" if alert.threshold >= 100 else "warning"
        items.append(Item(severity, "quota", detail, alert.tenant_slug, alert.opened_at))
    unlisted += max(0, sum(evaluator.open_counts.values()) - len(open_alerts))
    rates = await high_error_rates(
        conn, hours=ERROR_HOURS, min_requests=ERROR_MIN_REQUESTS, min_rate=ERROR_WARNING, limit=ERROR_ROWS
    )
    for rate in rates:
        detail = f"{rate.rate:.0%} of {rate.requests:,} API requests answered 5xx in the last {ERROR_HOURS} h"
        items.append(
            Item("critical" if rate.rate >= ERROR_CRITICAL else "warning", "5xx", detail, rate.slug, rate.since)
        )
    items.sort(key=lambda item: (item.severity != "critical", item.kind, item.slug or ""))
    return Firing(items=items, total=len(items) + unlisted, health_checked_at=checked_at)


@get("/alerts", name="admin_ui_alerts", summary="Everything firing now, by severity")
async def alerts_page(request: Request[Any, Any, Any]) -> Template:
    platform: Platform = request.app.state[PLATFORM_STATE_KEY]
    async with platform.control.connection() as conn:
        now_firing = await firing(request.app.state, conn)
    return page(
        request,
        "admin/alerts.html",
        principal=admin_principal(request),
        title="Alerts",
        firing=now_firing,
        jobs=job_rows(request.app.state),
    )


HANDLERS: list[Any] = [alerts_page]
