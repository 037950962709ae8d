"""Quota alert events: 80 % and 100 % of the effective limit, deduplicated, resolved when usage falls.

``evaluate``: for every tenant and limited quota, usage = ``current_usage`` (written by the collectors)
against the effective limit (``quota_repository.EFFECTIVE``). Reaching 80 % or 100 % opens an alert event in
``quota_alerts``; while the condition holds the open row is updated (usage, limit), never duplicated (a
partial unique index on open alerts); when usage falls below the threshold (or the limit is raised, or
lifted) the alert is resolved. Usage 0 never alerts, so a zero limit on an unused quota is quiet.
Tenants provisioning or being deleted are not evaluated (their open alerts resolve). One SQL statement
covers every tenant, whatever their number.

``QuotaAlerts`` runs ``evaluate`` on the control pool and keeps, in memory, the open alerts per
(quota, threshold) and every tenant's effective limits, for ``/metrics``. Callers own transactions.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

import msgspec
from psycopg_pool import AsyncConnectionPool

from controlplane.db import AsyncConn
from controlplane.registry.models import QuotaType
from controlplane.usage import quota_repository as repository
from controlplane.usage.quotas import ratio

log = logging.getLogger(__name__)

#: Percentages of the effective limit at which an alert opens.
THRESHOLDS = (80, 100)
#: Alert events logged one by one per evaluation; beyond, only counted.
_LOGGED_CHANGES = 20


class ChangeKind(enum.StrEnum):
    OPENED = "opened"
    #: Still open; its usage or limit changed.
    UPDATED = "updated"
    RESOLVED = "resolved"


class AlertChange(msgspec.Struct, frozen=True, kw_only=True):
    """What one evaluation did to one alert."""

    kind: ChangeKind
    alert_id: int
    tenant_id: uuid.UUID
    slug: str
    quota: QuotaType
    threshold: int
    usage: int
    limit: int


class AlertState(enum.StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    #: Listing filter only: both.
    ALL = "all"


class Alert(msgspec.Struct, kw_only=True):
    """One alert event: opened when usage reached ``threshold`` % of the effective limit."""

    id: int
    tenant_id: uuid.UUID
    tenant_slug: str
    quota: QuotaType
    threshold: int
    state: AlertState
    #: Usage and effective limit at the last evaluation that touched the alert.
    usage: int
    limit: int
    ratio: float | None
    opened_at: datetime
    resolved_at: datetime | None
    updated_at: datetime


async def evaluate(conn: AsyncConn, *, tenant_id: uuid.UUID | None = None) -> list[AlertChange]:
    """Open, update and resolve alerts of every tenant (or only ``tenant_id``) in one statement.

    Returns what changed: alerts opened, open alerts whose usage or limit moved, alerts resolved.
    Safe to run concurrently with itself (the open-alert index arbitrates).
    """
    return [
        AlertChange(
            kind=ChangeKind(r["kind"]),
            alert_id=r["id"],
            tenant_id=r["tenant_id"],
            slug=r["slug"],
            quota=QuotaType(r["quota_type"]),
            threshold=r["threshold"],
            usage=r["usage"],
            limit=r["quota_limit"],
        )
        for r in await repository.evaluate_alerts(conn, THRESHOLDS, tenant_id=tenant_id)
    ]


async def list_alerts(
    conn: AsyncConn,
    *,
    state: AlertState = AlertState.OPEN,
    tenant_id: uuid.UUID | None = None,
    quota: QuotaType | None = None,
    threshold: int | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[Alert]:
    """Alerts newest first (by id), filtered; ``before_id`` is the keyset cursor."""
    rows = await repository.alert_rows(
        conn,
        state=None if state is AlertState.ALL else state.value,
        tenant_id=tenant_id,
        quota=quota.value if quota is not None else None,
        threshold=threshold,
        before_id=before_id,
        limit=limit,
    )
    return [
        Alert(
            id=r["id"],
            tenant_id=r["tenant_id"],
            tenant_slug=r["slug"],
            quota=QuotaType(r["quota_type"]),
            threshold=r["threshold"],
            state=AlertState(r["state"]),
            usage=r["usage"],
            limit=r["quota_limit"],
            ratio=ratio(r["usage"], r["quota_limit"]),
            opened_at=r["opened_at"],
            resolved_at=r["resolved_at"],
            updated_at=r["updated_at"],
        )
        for r in rows
    ]


async def open_counts(conn: AsyncConn) -> dict[tuple[str, int], int]:
    """Open alerts per (quota, threshold); every pair present (0 when none), so gauges never vanish."""
    counts = {(q.value, t): 0 for q in QuotaType for t in THRESHOLDS}
    counts.update(await repository.open_alert_counts(conn))
    return counts


def describe(changes: list[AlertChange], counts: Mapping[tuple[str, int], int]) -> str:
    """The one outcome line of an evaluation."""
    by_kind = {kind: sum(c.kind is kind for c in changes) for kind in ChangeKind}
    return (
        f"quota alerts: {by_kind[ChangeKind.OPENED]} opened, {by_kind[ChangeKind.RESOLVED]} resolved, "
        f"{by_kind[ChangeKind.UPDATED]} updated; {sum(counts.values())} open"
    )


class QuotaAlerts:
    """Evaluates alerts on the control pool and keeps the latest fleet-wide view in memory.

    ``open_counts`` (open alerts per (quota, threshold)) and ``limits_of`` (a tenant's effective limits)
    are what ``/metrics`` reads; both are replaced whole after each ``evaluate()`` / ``refresh()``.
    Run ``job`` on the leader after every usage collection, ``refresh_job`` on the other instances.
    """

    def __init__(self, control: AsyncConnectionPool[AsyncConn]) -> None:
        self._control = control
        self.open_counts: dict[tuple[str, int], int] = {(q.value, t): 0 for q in QuotaType for t in THRESHOLDS}
        self.limits: dict[uuid.UUID, dict[str, int | None]] = {}
        #: When the last evaluation or refresh finished (None: never).
        self.refreshed_at: datetime | None = None

    def limits_of(self, tenant_id: uuid.UUID) -> Mapping[str, int | None]:
        """The tenant's effective limits by quota name, as of the last refresh (empty if unknown)."""
        return self.limits.get(tenant_id, {})

    async def evaluate(self, *, tenant_id: uuid.UUID | None = None) -> list[AlertChange]:
        """``evaluate`` (all tenants, or one) then refresh the in-memory view; logs opened/resolved alerts."""
        async with self._control.connection() as conn:
            changes = await evaluate(conn, tenant_id=tenant_id)
            await self._refresh(conn)
        events = [c for c in changes if c.kind is not ChangeKind.UPDATED]
        for change in events[:_LOGGED_CHANGES]:
            log.info(
                "quota alert %s: tenant %s %s at %d%% (%d of %d)",
                change.kind.value,
                change.slug,
                change.quota.value,
                change.threshold,
                change.usage,
                change.limit,
            )
        if len(events) > _LOGGED_CHANGES:
            log.info("quota alerts: %d more opened or resolved", len(events) - _LOGGED_CHANGES)
        return changes

    async def refresh(self) -> None:
        """Reload the in-memory view without evaluating (instances that are not the leader)."""
        async with self._control.connection() as conn:
            await self._refresh(conn)

    async def _refresh(self, conn: AsyncConn) -> None:
        counts = await open_counts(conn)
        limits = await repository.effective_limits(conn)
        self.open_counts, self.limits = counts, limits
        self.refreshed_at = datetime.now(UTC)

    async def job(self) -> str:
        return describe(await self.evaluate(), self.open_counts)

    async def refresh_job(self) -> str:
        await self.refresh()
        return f"quota alerts: {sum(self.open_counts.values())} open"
