"""Prometheus exposition of the control plane: one ``CollectorRegistry`` of our own, one custom collector.

``CardVaultMetrics.collect()`` reads only what is already in memory: the usage snapshot the collectors
replaced whole after their last cycle, the tenant pools' and the registry cache's counters, the
scheduler's job stats and the provisioning histogram. A scrape never queries a database, so it costs
the same with 10 tenants or 10,000 (the per-tenant text grows, the number of queries stays at zero).

Two parts, rendered differently:

- *live* families (pools, registry cache, jobs, provisioning, HTTP): small, bounded by the code (jobs,
  routes), read on the event loop at each scrape because their sources are mutated there;
- *per-tenant* families (tenants, servers, last collection, quota ratios, tenant health, backups): one
  series set per tenant, built from sources that are replaced whole (the usage snapshot, the quota limits,
  the last health round, the backups' standing). Their text is rendered once per change (in a worker
  thread, off the event loop) and reused by every scrape until one of them changes.

Quota usage ratios are the snapshot's counters (``users``, ``cards``, ``storage_bytes``, exact
trigger-kept counts of the tenant database) over the tenant's *effective* limits as ``QuotaAlerts``
last loaded them from the control database (``tenant_quotas`` plus live expansions); a tenant it does
not know yet falls back to its tier's limits. Both inputs are replaced whole, so the text is rebuilt
when either changes.

Label cardinality is bounded and documented: ``tenant`` is the tenant's **slug** (a rename starts a new
series), ``table`` is one of the tenant schema's tables (a fixed set; per-table series can be turned
off with ``per_table=False``), ``kind`` a storage kind, ``quota`` a ``QuotaType``, ``job`` a scheduler
job, ``server`` a registered server, ``status``/``tier`` the registry enums.

Tenant API requests by status class and their latency (``TenantRequests``) are published and cached the
same way (``controlplane.metrics.tenant_requests``; nothing published when ``per_table`` is off).
Image bytes served (``BytesServed``) are counted per tenant on the request path and published whole at
each flush (30 s); their text is cached per publication like the per-tenant text. ``per_table=False``
(for very large fleets) drops their per-tenant series too, keeping the total. Storage hygiene's counters
and its last run's gauges are live (a handful of series).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from controlplane.backups.models import BackupOverview
from controlplane.hygiene.models import HygieneCounters, HygieneReport
from controlplane.maintenance.models import FleetHealth
from controlplane.metrics import families as metric_families
from controlplane.metrics.families import Limits
from controlplane.metrics.tenant_requests import request_families
from controlplane.pools.models import PoolStats
from controlplane.scheduler.service import JobStats
from controlplane.usage.models import UsageSnapshot
from controlplane.usage.request_stats import RequestStats

#: Buckets of ``cardvault_provisioning_duration_seconds``: a clone takes well under a second, a
#: provisioning that waits on a busy server several.
PROVISIONING_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


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


class DurationHistogram:
    """A latency histogram for code running on the event loop: no lock, one list slot and a float per
    observation; buckets are cumulated only when scraped (``le`` is inclusive, as Prometheus wants)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(float(b) for b in bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # the first bound >= seconds
        self.sum += seconds

    def add_to(self, family: HistogramMetricFamily, labels: Sequence[str]) -> None:
        """Add this histogram's cumulative buckets, sum and count to ``family`` under ``labels``."""
        buckets, total = [], 0
        for bound, count in zip((*(str(b) for b in self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            buckets.append((bound, float(total)))
        family.add_metric(labels, buckets, self.sum)


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


#: What an unbound ``served`` source publishes.
_NOTHING_SERVED: Mapping[str, int] = MappingProxyType({})

#: What an unbound ``requests`` source publishes.
_NO_REQUESTS: Mapping[str, RequestStats] = MappingProxyType({})

#: What the cached per-tenant text is built from; each part is replaced whole, never changed in place.
_Sources = tuple[UsageSnapshot | None, Limits | None, FleetHealth | None, BackupOverview | None]


def _same(a: _Sources, b: _Sources) -> bool:
    return all(x is y for x, y in zip(a, b, strict=True))


class _Families(Collector):
    """A fixed list of families, so ``generate_latest`` can render any list of them."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Sequence[Metric]:
        return self._families


def render(families: Sequence[Metric]) -> bytes:
    """The text exposition format of ``families``."""
    return generate_latest(_Families(families))


class CardVaultMetrics(Collector):
    """The control plane's metrics: a custom collector over in-memory state, in a registry of its own.

    Built with the app; ``bind()`` attaches the sources once the lifespan has made them (until then,
    and for any source left out, the corresponding families are simply absent). Other collectors (the
    HTTP middleware's) join with ``register()``.
    """

    def __init__(
        self,
        *,
        per_table: bool = True,
        collection_interval: float | None = None,
        server_capacity_bytes: int = 0,
        server_max_tenants: int = 0,
    ) -> None:
        #: ``cardvault_tenant_table_*`` series on (``CARDVAULT_METRICS_PER_TABLE``): two per tenant table.
        self.per_table = per_table
        self._interval = collection_interval
        #: ``CARDVAULT_SERVER_CAPACITY_BYTES`` and ``CARDVAULT_SERVER_MAX_TENANTS`` (0: not set, not exported),
        #: for the servers' fill alerts.
        self._server_limits = (server_capacity_bytes, server_max_tenants)
        self._snapshot: Callable[[], UsageSnapshot | None] = lambda: None
        self._pools: PoolSource | None = None
        self._cache: CacheSource | None = None
        self._jobs: JobSource | None = None
        self._quotas: QuotaSource | None = None
        self._health: HealthSource | None = None
        self._backups: BackupSource | None = None
        self._hygiene: HygieneSource | None = None
        self._served: ServedSource | None = None
        #: (published mapping, its families, their text): rebuilt only when the meter publishes anew.
        self._served_built: tuple[Mapping[str, int], list[Metric], bytes] | None = None
        self._requests: RequestSource | None = None
        #: (published mapping, its text): per-tenant request series, rebuilt once per publication.
        self._requests_built: tuple[Mapping[str, RequestStats], list[Metric], bytes] | None = None
        self._others: list[Collector] = []
        # (sources, their families, the text): rebuilt only when the collectors publish a new snapshot,
        # the quota limits are refreshed or a health round ends.
        self._built: tuple[_Sources, list[Metric], bytes] | None = None
        self._build_lock = threading.Lock()
        self._provisioning = {outcome: DurationHistogram(PROVISIONING_BUCKETS) for outcome in ("succeeded", "failed")}
        #: Everything ``/metrics`` exposes; ``generate_latest(registry)`` works too (all on the caller).
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- wiring ---------------------------------------------------------------------------------

    def bind(
        self,
        *,
        snapshot: Callable[[], UsageSnapshot | None] | None = None,
        pools: PoolSource | None = None,
        cache: CacheSource | None = None,
        jobs: JobSource | None = None,
        quotas: QuotaSource | None = None,
        health: HealthSource | None = None,
        backups: BackupSource | None = None,
        hygiene: HygieneSource | None = None,
        served: ServedSource | None = None,
        requests: RequestSource | None = None,
    ) -> None:
        """Attach the sources (in the app lifespan); only those given are replaced."""
        if requests is not None:
            self._requests = requests
        if hygiene is not None:
            self._hygiene = hygiene
        if served is not None:
            self._served = served
        if snapshot is not None:
            self._snapshot = snapshot
        if pools is not None:
            self._pools = pools
        if cache is not None:
            self._cache = cache
        if jobs is not None:
            self._jobs = jobs
        if quotas is not None:
            self._quotas = quotas
        if health is not None:
            self._health = health
        if backups is not None:
            self._backups = backups

    @property
    def jobs(self) -> JobSource | None:
        """The bound scheduler (its job stats), for the dashboard; None until bound."""
        return self._jobs

    @property
    def health(self) -> HealthSource | None:
        """The bound health monitor (its last round), for the dashboard; None until bound."""
        return self._health

    @property
    def backups(self) -> BackupSource | None:
        """The bound backup scheduler (the backups' standing), for the dashboard; None until bound."""
        return self._backups

    def register(self, collector: Collector) -> None:
        """Expose another collector's live families too (e.g. the HTTP middleware's)."""
        self._others.append(collector)

    def observe_provisioning(self, seconds: float, succeeded: bool) -> None:
        """Record one provisioning; the service (or its route) calls this with the time it took."""
        self._provisioning["succeeded" if succeeded else "failed"].observe(seconds)

    # -- collection -----------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Every family: live ones, then the per-tenant ones (built once per change of their sources)."""
        yield from self.collect_live()
        yield from self._build()[1]
        yield from self._build_served()[1]
        yield from self._build_requests()[1]

    def render(self) -> bytes:
        """The exposition text (on the caller's thread; see ``render_live`` + ``render_tenants``)."""
        return self.render_live() + self.render_tenants()

    def render_live(self) -> bytes:
        """Text of the live families; call it where their sources are mutated (the event loop)."""
        return render(list(self.collect_live()))

    def cached_tenants_text(self) -> bytes | None:
        """The per-tenant text if its sources have not changed since it was rendered, else None."""
        built, served, requests = self._built, self._served_built, self._requests_built
        if built is None or served is None or served[0] is not self._published():
            return None
        if requests is None or requests[0] is not self._requests_published():
            return None
        return built[2] + served[2] + requests[2] if _same(built[0], self._sources()) else None

    def render_tenants(self) -> bytes:
        """Text of the per-tenant families (snapshot, quota ratios, health), rendered once per change of
        their sources; safe in a worker thread."""
        return self._build()[2] + self._build_served()[2] + self._build_requests()[2]

    def collect_live(self) -> Iterator[Metric]:
        if self._interval is not None:
            yield GaugeMetricFamily(
                "cardvault_usage_collection_interval_seconds",
                "Configured seconds between usage collections (for staleness alerts)",
                value=self._interval,
            )
        capacity, most = self._server_limits
        for name, help_text, limit in (
            ("cardvault_server_capacity_bytes", "Configured bytes of tenant databases per server", capacity),
            ("cardvault_server_max_tenants", "Configured most tenants per server", most),
        ):
            if limit and self._snapshot() is not None:  # with the servers' series, which they bound
                yield GaugeMetricFamily(name, help_text, value=limit)
        if self._pools is not None:
            yield from metric_families.pool_families(self._pools.stats())
        if self._cache is not None:
            yield from metric_families.cache_families(self._cache.snapshot())
        if self._jobs is not None:
            yield from metric_families.job_families(dict(self._jobs.stats))
        if self._quotas is not None:
            alerts = GaugeMetricFamily(
                "cardvault_quota_alerts_open",
                "Open quota alerts by quota and threshold (%)",
                labels=("quota", "threshold"),
            )
            for (quota, threshold), count in sorted(self._quotas.open_counts.items()):
                alerts.add_metric((quota, str(threshold)), count)
            yield alerts
        if self._hygiene is not None:
            yield from metric_families.hygiene_families(self._hygiene.counters, self._hygiene.latest)
        provisioning = HistogramMetricFamily(
            "cardvault_provisioning_duration_seconds",
            "Seconds to provision a tenant (registry row to active database), by outcome",
            labels=("outcome",),
        )
        for outcome, histogram in self._provisioning.items():
            histogram.add_to(provisioning, (outcome,))
        yield provisioning
        for other in self._others:
            yield from other.collect()

    def _sources(self) -> _Sources:
        return (
            self._snapshot(),
            self._quotas.limits if self._quotas is not None else None,
            self._health.latest if self._health is not None else None,
            self._backups.overview if self._backups is not None else None,
        )

    def _published(self) -> Mapping[str, int]:
        return self._served.published if self._served is not None else _NOTHING_SERVED

    def _build_served(self) -> tuple[Mapping[str, int], list[Metric], bytes]:
        """Bytes-served families (per tenant unless ``per_table`` is off), rendered once per publication."""
        published = self._published()
        built = self._served_built
        if built is not None and built[0] is published:
            return built
        families = [] if self._served is None else list(metric_families.served_families(published, self.per_table))
        built = (published, families, render(families) if families else b"")
        self._served_built = built
        return built

    def _requests_published(self) -> Mapping[str, RequestStats]:
        return self._requests.published if self._requests is not None else _NO_REQUESTS

    def _build_requests(self) -> tuple[Mapping[str, RequestStats], list[Metric], bytes]:
        """Per-tenant request families, rendered once per publication of the recorder."""
        published = self._requests_published()
        built = self._requests_built
        if built is not None and built[0] is published:
            return built
        families = list(request_families(published))
        built = (published, families, render(families) if families else b"")
        self._requests_built = built
        return built

    def _build(self) -> tuple[_Sources, list[Metric], bytes]:
        sources = self._sources()
        built = self._built
        if built is not None and _same(built[0], sources):
            return built
        with self._build_lock:  # two scrapes racing on new sources build them once
            built = self._built
            if built is None or not _same(built[0], sources):
                snapshot, limits, health, backups = sources
                families = list(metric_families.snapshot_families(snapshot, self.per_table, limits)) if snapshot else []
                if health is not None:
                    families.extend(metric_families.health_families(health))
                if backups is not None:
                    families.extend(metric_families.backup_families(backups))
                built = (sources, families, render(families))
                self._built = built
        return built
