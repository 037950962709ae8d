"""What ``CardVaultMetrics`` reads: the interfaces of its sources, as far as metrics are concerned.

Each is implemented elsewhere (``TenantPools``, ``TenantCache``, ``Scheduler``, ``QuotaAlerts``,
``HealthMonitor``, ``BackupScheduler``, ``StorageHygiene``, ``BytesServed``, ``TenantRequests``) and bound
in the app lifespan; what a property returns is replaced whole by its owner, never changed in place (the
cached text relies on that: ``controlplane.metrics.cached``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from controlplane.backups.models import BackupOverview
from controlplane.hygiene.models import HygieneCounters, HygieneReport
from controlplane.maintenance.models import FleetHealth
from controlplane.metrics.families import Limits
from controlplane.pools.models import PoolStats
from controlplane.scheduler.service import JobStats
from controlplane.usage.request_stats import RequestStats


class PoolSource(Protocol):
    """``TenantPools``, as far as metrics are concerned."""

    def stats(self) -> PoolStats: ...


class CacheSource(Protocol):
    """``TenantCache``: ``snapshot()`` gives its counters, ``listening``, and entry counts."""

    def snapshot(self) -> dict[str, Any]: ...


class JobSource(Protocol):
    """``Scheduler``: the live stats of every job, by job name."""

    @property
    def stats(self) -> Mapping[str, JobStats]: ...


class QuotaSource(Protocol):
    """``QuotaAlerts``: open alerts per (quota, threshold %) and effective limits, both replaced whole."""

    @property
    def open_counts(self) -> Mapping[tuple[str, int], int]: ...

    @property
    def limits(self) -> Limits: ...


class HealthSource(Protocol):
    """``HealthMonitor``: its last round of tenant health checks, replaced whole."""

    @property
    def latest(self) -> FleetHealth | None: ...


class BackupSource(Protocol):
    """``BackupScheduler``: the backups' standing per tenant, replaced whole at each refresh."""

    @property
    def overview(self) -> BackupOverview | None: ...


class HygieneSource(Protocol):
    """``StorageHygiene``: counters of its fixing runs, and its last full run (replaced whole)."""

    @property
    def counters(self) -> HygieneCounters: ...

    @property
    def latest(self) -> HygieneReport | None: ...


class ServedSource(Protocol):
    """``BytesServed``: image bytes this replica served, per tenant slug (replaced whole at each flush)."""

    @property
    def published(self) -> Mapping[str, int]: ...


class RequestSource(Protocol):
    """``TenantRequests``: per-tenant request classes and latency, per slug (replaced whole at each flush)."""

    @property
    def published(self) -> Mapping[str, RequestStats]: ...
