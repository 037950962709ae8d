"""Prometheus exposition of the control plane: one ``CollectorRegistry`` of our own, one custom collector.

``CardVaultMetrics.collect()`` reads only what is already in memory: the usage snapshot the collectors
replaced whole after their last cycle, the tenant pools' and the registry cache's counters, the
scheduler's job stats and the provisioning histogram. A scrape never queries a database, so it costs
the same with 10 tenants or 10,000 (the per-tenant text grows, the number of queries stays at zero).

Two parts, rendered differently:

- *live* families (pools, registry cache, jobs, provisioning, HTTP): small, bounded by the code (jobs,
  routes), read on the event loop at each scrape because their sources are mutated there;
- *snapshot* families (tenants, servers, last collection, quota ratios): one series set per tenant,
  built from the immutable snapshot. Their text is rendered once per snapshot (in a worker thread,
  off the event loop) and reused by every scrape until the collectors publish the next one.

Quota usage ratios are the snapshot's counters (``users``, ``cards``, ``storage_bytes``, exact
trigger-kept counts of the tenant database) over the tenant's *effective* limits as ``QuotaAlerts``
last loaded them from the control database (``tenant_quotas`` plus live expansions); a tenant it does
not know yet falls back to its tier's limits. Both inputs are replaced whole, so the text is rebuilt
when either changes.

Label cardinality is bounded and documented: ``tenant`` is the tenant's **slug** (a rename starts a new
series), ``table`` is one of the tenant schema's tables (a fixed set; per-table series can be turned
off with ``per_table=False``), ``kind`` a storage kind, ``quota`` a ``QuotaType``, ``job`` a scheduler
job, ``server`` a registered server, ``status``/``tier`` the registry enums.
"""

from __future__ import annotations

import threading
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from controlplane.pools.models import PoolStats
from controlplane.registry.models import TIER_QUOTAS, TenantStatus, Tier
from controlplane.scheduler.service import JobStats
from controlplane.usage.models import CollectionStats, FleetHealth, TenantUsage, UsageSnapshot

#: Buckets of ``cardvault_provisioning_duration_seconds``: a clone takes well under a second, a
#: provisioning that waits on a busy server several.
PROVISIONING_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Effective quota limits by tenant id, then quota name (None: unlimited).
Limits = Mapping[uuid.UUID, Mapping[str, int | None]]

_TIER_LIMITS: dict[str, dict[str, int | None]] = {
    tier.value: {quota.value: limit for quota, limit in limits.items()} for tier, limits in TIER_QUOTAS.items()
}


def quota_limits(usage: TenantUsage, limits: Limits | None) -> Mapping[str, int | None]:
    """The tenant's effective limits when known, else its tier's (what provisioning writes)."""
    known = limits.get(usage.tenant_id) if limits is not None else None
    return known if known is not None else _TIER_LIMITS.get(usage.tier, {})


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


#: What the cached per-tenant text is built from; each part is replaced whole, never changed in place.
_Sources = tuple[UsageSnapshot | None, Limits | None, FleetHealth | None]


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
    ) -> None:
        #: ``cardvault_tenant_table_*`` series on (``CARDVAULT_METRICS_PER_TABLE``): two per tenant table.
        self.per_table = per_table
        self._interval = collection_interval
        self._snapshot: Callable[[], UsageSnapshot | None] = lambda: None
        self._pools: PoolSource | None = None
        self._cache: CacheSource | None = None
        self._jobs: JobSource | None = None
        self._quotas: QuotaSource | None = None
        self._health: HealthSource | None = None
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
    ) -> None:
        """Attach the sources (in the app lifespan); only those given are replaced."""
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

    def render(self) -> bytes:
        """The exposition text (on the caller's thread; see ``render_live`` + ``render_tenants``)."""
        return self.render_live() + self.render_tenants()

    def render_live(self) -> bytes:
        """Text of the live families; call it where their sources are mutated (the event loop)."""
        return render(list(self.collect_live()))

    def cached_tenants_text(self) -> bytes | None:
        """The per-tenant text if its sources have not changed since it was rendered, else None."""
        built = self._built
        return built[2] if built is not None and _same(built[0], self._sources()) else None

    def render_tenants(self) -> bytes:
        """Text of the per-tenant families (snapshot, quota ratios, health), rendered once per change of
        their sources; safe in a worker thread."""
        return self._build()[2]

    def collect_live(self) -> Iterator[Metric]:
        if self._interval is not None:
            yield GaugeMetricFamily(
                "cardvault_usage_collection_interval_seconds",
                "Configured seconds between usage collections (for staleness alerts)",
                value=self._interval,
            )
        if self._pools is not None:
            yield from _pool_families(self._pools.stats())
        if self._cache is not None:
            yield from _cache_families(self._cache.snapshot())
        if self._jobs is not None:
            yield from _job_families(dict(self._jobs.stats))
        if self._quotas is not None:
            alerts = GaugeMetricFamily(
                "cardvault_quota_alerts_open",
                "Open quota alerts by quota and threshold (%)",
                labels=("quota", "threshold"),
            )
            for (quota, threshold), count in sorted(self._quotas.open_counts.items()):
                alerts.add_metric((quota, str(threshold)), count)
            yield alerts
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
        )

    def _build(self) -> tuple[_Sources, list[Metric], bytes]:
        sources = self._sources()
        built = self._built
        if built is not None and _same(built[0], sources):
            return built
        with self._build_lock:  # two scrapes racing on new sources build them once
            built = self._built
            if built is None or not _same(built[0], sources):
                snapshot, limits, health = sources
                families = list(_snapshot_families(snapshot, self.per_table, limits)) if snapshot else []
                if health is not None:
                    families.extend(_health_families(health))
                built = (sources, families, render(families))
                self._built = built
        return built


# -- live families ----------------------------------------------------------------------------------


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _pool_families(s: PoolStats) -> Iterator[Metric]:
    yield _counter("cardvault_pool_hits_total", "Tenant requests served by a pool already open", s.hits)
    yield _counter("cardvault_pool_misses_total", "Tenant requests that had to create a pool", s.misses)
    yield _counter("cardvault_pool_evictions_total", "Pools evicted for capacity or the budget", s.evictions)
    yield _counter("cardvault_pool_invalidations_total", "Pools dropped by a tenant change", s.invalidations)
    yield _gauge("cardvault_pool_open", "Tenant pools open (including evicted ones draining)", s.open_pools)
    yield _gauge("cardvault_pool_capacity", "Tenant pools open at most (LRU capacity)", s.capacity)
    yield _gauge("cardvault_pool_connections", "Tenant connections held or being opened", s.connections_open)
    yield _gauge("cardvault_pool_connections_in_use", "Tenant connections checked out", s.connections_in_use)
    yield _gauge("cardvault_pool_connections_idle", "Tenant connections idle in pools", s.connections_idle)
    yield _gauge("cardvault_pool_connection_budget", "Tenant connections across all pools at most", s.budget)
    yield _gauge("cardvault_pool_requests_waiting", "Requests waiting for a tenant connection", s.requests_waiting)


_CACHE_COUNTERS = (
    ("hits", "Tenant lookups answered from memory"),
    ("negative_hits", "Unknown-slug lookups answered from memory"),
    ("misses", "Tenant lookups that read the registry"),
    ("credential_hits", "Tenant credentials answered from memory"),
    ("credential_misses", "Tenant credentials read from the registry"),
    ("invalidations", "Registry cache invalidations (notifications and local changes)"),
    ("resets", "Whole registry cache clears (listen connection lost)"),
    ("reconnects", "Registry cache listen connections re-established"),
)


def _cache_families(snap: Mapping[str, Any]) -> Iterator[Metric]:
    for key, doc in _CACHE_COUNTERS:
        yield _counter(f"cardvault_registry_cache_{key}_total", doc, float(snap.get(key, 0)))
    yield _gauge(
        "cardvault_registry_cache_listening",
        "1 while the registry cache receives change notifications (and so caches)",
        1.0 if snap.get("listening") else 0.0,
    )
    entries = GaugeMetricFamily("cardvault_registry_cache_entries", "Registry cache entries", labels=("kind",))
    for kind in ("tenants", "credentials"):
        entries.add_metric((kind,), float(snap.get(kind, 0)))
    yield entries


def _job_families(jobs: Mapping[str, JobStats]) -> Iterator[Metric]:
    label = ("job",)
    runs = CounterMetricFamily("cardvault_job_runs_total", "Job runs started on this replica", labels=label)
    failures = CounterMetricFamily("cardvault_job_failures_total", "Job runs that raised", labels=label)
    failing = GaugeMetricFamily("cardvault_job_failing", "1 when the job's last run failed", labels=label)
    success = GaugeMetricFamily(
        "cardvault_job_last_success_timestamp_seconds", "Unix time of the job's last successful run", labels=label
    )
    duration = GaugeMetricFamily(
        "cardvault_job_last_duration_seconds", "Seconds the job's last successful run took", labels=label
    )
    for name, stats in sorted(jobs.items()):
        runs.add_metric((name,), stats.runs)
        failures.add_metric((name,), stats.failures)
        failing.add_metric((name,), 1.0 if stats.last_error is not None else 0.0)
        if stats.last_success is not None:
            success.add_metric((name,), stats.last_success)
        if stats.last_duration is not None:
            duration.add_metric((name,), stats.last_duration)
    yield from (runs, failures, failing, success, duration)


# -- snapshot families ------------------------------------------------------------------------------


def _snapshot_families(snapshot: UsageSnapshot, per_table: bool, all_limits: Limits | None) -> Iterator[Metric]:
    tenant = ("tenant",)
    counts: dict[tuple[str, str], int] = {(s.value, t.value): 0 for s in TenantStatus for t in Tier}
    info = GaugeMetricFamily(
        "cardvault_tenant_info",
        "1 per tenant, with its tier, status and server",
        labels=("tenant", "tier", "status", "server"),
    )
    database = GaugeMetricFamily(
        "cardvault_tenant_database_bytes", "Size of the tenant's database (pg_database_size)", labels=tenant
    )
    table_bytes = GaugeMetricFamily(
        "cardvault_tenant_table_bytes", "Size of a tenant table with indexes and TOAST", labels=("tenant", "table")
    )
    table_rows = GaugeMetricFamily(
        "cardvault_tenant_table_rows", "Planner estimate of a tenant table's rows", labels=("tenant", "table")
    )
    storage_bytes = GaugeMetricFamily(
        "cardvault_tenant_storage_bytes", "Bytes of the tenant's stored objects by kind", labels=("tenant", "kind")
    )
    storage_files = GaugeMetricFamily(
        "cardvault_tenant_storage_files", "Number of the tenant's stored objects by kind", labels=("tenant", "kind")
    )
    quota_ratio = GaugeMetricFamily(
        "cardvault_tenant_quota_usage_ratio",
        "Usage / limit of each limited quota",
        labels=("tenant", "quota"),
    )
    for usage in snapshot.tenants.values():
        slug = usage.slug
        counts[(usage.status, usage.tier)] = counts.get((usage.status, usage.tier), 0) + 1
        info.add_metric((slug, usage.tier, usage.status, usage.server), 1.0)
        database.add_metric((slug,), usage.database_bytes)
        if per_table:
            for table in usage.tables:
                table_bytes.add_metric((slug, table.table), table.total_bytes)
                if table.row_estimate >= 0:  # -1: never analysed, unknown rather than empty
                    table_rows.add_metric((slug, table.table), table.row_estimate)
        for kind, stored in usage.storage.items():
            storage_bytes.add_metric((slug, kind), stored.bytes)
            storage_files.add_metric((slug, kind), stored.files)
        limits = quota_limits(usage, all_limits)
        for quota, used in usage.counters.items():
            limit = limits.get(quota)
            if limit:  # None: unlimited; 0 would make every use infinitely over
                quota_ratio.add_metric((slug, quota), used / limit)
    tenants = GaugeMetricFamily(
        "cardvault_tenants", "Tenants by status and tier (at the last collection)", labels=("status", "tier")
    )
    for (status, tier), count in sorted(counts.items()):
        tenants.add_metric((status, tier), count)
    yield tenants
    yield from (info, database)
    if per_table:
        yield from (table_bytes, table_rows)
    yield from (storage_bytes, storage_files, quota_ratio)
    yield from _server_families(snapshot)
    if snapshot.last is not None:
        yield from _collection_families(snapshot.last)


def _collection_families(last: CollectionStats) -> Iterator[Metric]:
    prefix = "cardvault_usage_collection"
    finished = last.started_at.timestamp() + last.duration_seconds
    yield _gauge("cardvault_usage_last_collection_timestamp_seconds", "Unix time the last collection ended", finished)
    yield _gauge(f"{prefix}_duration_seconds", "Seconds the last collection took", last.duration_seconds)
    yield _gauge(f"{prefix}_tenants", "Tenants measured by the last collection", last.tenants)
    yield _gauge(f"{prefix}_scanned_tenants", "Tenants whose tables the last collection scanned", last.scanned)
    yield _gauge(f"{prefix}_failed_tenants", "Tenants the last collection failed to measure", last.failed)
    yield _gauge(f"{prefix}_servers", "Database servers the last collection read", last.servers)
    yield _gauge(
        f"{prefix}_failed_servers", "Database servers the last collection could not reach", last.failed_servers
    )


def _server_families(snapshot: UsageSnapshot) -> Iterator[Metric]:
    server = ("server",)
    info = GaugeMetricFamily("cardvault_server_info", "1 per database server: its status", labels=("server", "status"))
    tenants = GaugeMetricFamily("cardvault_server_tenants", "Tenants placed on the server", labels=server)
    size = GaugeMetricFamily("cardvault_server_database_bytes", "Bytes of the server's tenant databases", labels=server)
    connections = GaugeMetricFamily("cardvault_server_connections", "Backends connected to the server", labels=server)
    maximum = GaugeMetricFamily("cardvault_server_max_connections", "The server's max_connections", labels=server)
    for name, usage in sorted(snapshot.servers.items()):
        info.add_metric((name, usage.status), 1.0)
        tenants.add_metric((name,), usage.tenants)
        size.add_metric((name,), usage.database_bytes)
        connections.add_metric((name,), usage.connections)
        maximum.add_metric((name,), usage.max_connections)
    yield from (info, tenants, size, connections, maximum)


def _health_families(health: FleetHealth) -> Iterator[Metric]:
    tenant = ("tenant",)
    up = GaugeMetricFamily("cardvault_tenant_up", "1 if the tenant's last health check succeeded", labels=tenant)
    connect = GaugeMetricFamily(
        "cardvault_tenant_health_connect_seconds", "Seconds to connect as the tenant's role", labels=tenant
    )
    query = GaugeMetricFamily("cardvault_tenant_health_query_seconds", "Seconds SELECT 1 took", labels=tenant)
    for result in health.results:
        up.add_metric((result.tenant,), 1.0 if result.ok else 0.0)
        if result.connect_ms is not None:
            connect.add_metric((result.tenant,), result.connect_ms / 1000)
        if result.query_ms is not None:
            query.add_metric((result.tenant,), result.query_ms / 1000)
    yield from (up, connect, query)
    yield _gauge(
        "cardvault_tenant_health_last_check_timestamp_seconds",
        "Unix time the last round of tenant health checks ended",
        health.finished_at.timestamp(),
    )
    yield _gauge(
        "cardvault_tenant_health_check_duration_seconds",
        "Seconds the last round of tenant health checks took",
        health.duration_seconds,
    )
