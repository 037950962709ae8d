"""Prometheus exposition of the control plane: one ``CollectorRegistry`` of our own, one custom collector.

``CardVaultMetrics.collect()`` reads only what is already in memory: the usage snapshot the collectors
replaced whole after their last cycle, the tenant pools' and the registry cache's counters, the
scheduler's job stats and the provisioning histogram. A scrape never queries a database, so it costs
the same with 10 tenants or 10,000 (the per-tenant text grows, the number of queries stays at zero).

Two parts, rendered differently:

- *live* families (pools, registry cache, jobs, provisioning, HTTP): small, bounded by the code (jobs,
  routes), read on the event loop at each scrape because their sources are mutated there;
- *cached* families (tenants, servers, last collection, quota ratios, tenant health, backups, bytes served,
  tenant requests), built from sources that are replaced whole and rendered once per change
  (``controlplane.metrics.cached``). Each is either *aggregate* (fleet-wide: tenants by status and tier,
  servers, the last collection, health round, backups retained, bytes served in total) or *per-tenant*
  (labelled by ``tenant``: one series set per tenant).

Where the per-tenant families go is ``tenant_series`` (``CARDVAULT_METRICS_TENANT_SERIES``): ``inline`` in
``/metrics`` with the rest; ``separate`` in ``/metrics/tenants`` only (``render_tenants``), so that
Prometheus can scrape them less often and ``/metrics`` stays the same size whatever the tenant count;
``off`` nowhere (not even built).

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
each flush (30 s). ``per_table=False`` drops their per-tenant series too, keeping the total. Storage
hygiene's counters and its last run's gauges are live (a handful of series).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from controlplane.backups.models import BackupOverview
from controlplane.maintenance.models import FleetHealth
from controlplane.metrics import families as metric_families
from controlplane.metrics.cached import CachedPart, Rendered, render
from controlplane.metrics.families import Limits
from controlplane.metrics.sources import (
    BackupSource,
    CacheSource,
    HealthSource,
    HygieneSource,
    JobSource,
    PoolSource,
    QuotaSource,
    RequestSource,
    ServedSource,
)
from controlplane.metrics.tenant_requests import request_families
from controlplane.settings.groups import TENANT_SERIES, TenantSeries
from controlplane.usage.models import UsageSnapshot
from controlplane.usage.request_stats import RequestStats

#: Buckets of ``cardvault_provisioning_duration_seconds``: a clone takes well under a second, a
#: provisioning that waits on a busy server several.
PROVISIONING_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: The two scrape endpoints: ``/metrics`` and ``/metrics/tenants``.
Endpoint = Literal["metrics", "tenants"]


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


#: What an unbound ``served`` source publishes.
_NOTHING_SERVED: Mapping[str, int] = MappingProxyType({})

#: What an unbound ``requests`` source publishes.
_NO_REQUESTS: Mapping[str, RequestStats] = MappingProxyType({})

#: What the snapshot part is built from; each is replaced whole, never changed in place.
_SnapshotKey = tuple[UsageSnapshot | None, Limits | None, FleetHealth | None, BackupOverview | None]
#: The families of a cached part: (aggregate ones, per-tenant ones).
_Built = tuple[list[Metric], list[Metric]]


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
        tenant_series: TenantSeries = "inline",
        collection_interval: float | None = None,
        server_capacity_bytes: int = 0,
        server_max_tenants: int = 0,
    ) -> None:
        if tenant_series not in TENANT_SERIES:
            raise ValueError(f"tenant_series must be one of {', '.join(TENANT_SERIES)}, got {tenant_series!r}")
        #: ``cardvault_tenant_table_*`` series on (``CARDVAULT_METRICS_PER_TABLE``): two per tenant table.
        self.per_table = per_table
        #: Where the per-tenant families go (``CARDVAULT_METRICS_TENANT_SERIES``).
        self.tenant_series: TenantSeries = tenant_series
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
        self._requests: RequestSource | None = None
        self._others: list[Collector] = []
        # Rebuilt when the collectors publish a new snapshot, the quota limits are refreshed, a health round
        # ends or the backups' standing is refreshed; when the meter publishes; when the recorder publishes.
        self._parts: tuple[CachedPart[Any], ...] = (
            CachedPart(self._snapshot_key, self._snapshot_families),
            CachedPart(lambda: (self._published(),), self._served_families),
            CachedPart(lambda: (self._requests_published(),), self._request_families),
        )
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
        """What ``/metrics`` exposes: the live families, then the cached ones (per-tenant ones if inline)."""
        yield from self.collect_live()
        for rendered in (part.get() for part in self._parts):
            yield from rendered.aggregates
            if self.tenant_series == "inline":
                yield from rendered.tenants

    def render(self) -> bytes:
        """The text of ``/metrics`` (on the caller's thread; see ``render_live`` + ``render_cached``)."""
        return self.render_live() + self.render_cached("metrics")

    def render_tenants(self) -> bytes:
        """The text of ``/metrics/tenants``: the per-tenant families with ``separate``, else nothing."""
        return self.render_cached("tenants")

    def render_live(self) -> bytes:
        """Text of the live families; call it where their sources are mutated (the event loop)."""
        return render(list(self.collect_live()))

    def cached_text(self, endpoint: Endpoint = "metrics") -> bytes | None:
        """The endpoint's cached text if no source changed since it was rendered, else None."""
        if endpoint == "tenants" and self.tenant_series != "separate":
            return b""
        rendered = [part.fresh() for part in self._parts]
        fresh = [r for r in rendered if r is not None]
        return self._text(fresh, endpoint) if len(fresh) == len(rendered) else None

    def render_cached(self, endpoint: Endpoint = "metrics") -> bytes:
        """The endpoint's cached text, rendering what changed (possibly large: safe in a worker thread)."""
        if endpoint == "tenants" and self.tenant_series != "separate":
            return b""
        return self._text([part.get() for part in self._parts], endpoint)

    def _text(self, rendered: Sequence[Rendered], endpoint: Endpoint) -> bytes:
        if endpoint == "tenants":
            return b"".join(r.tenants_text for r in rendered)
        inline = self.tenant_series == "inline"
        return b"".join(r.aggregates_text + r.tenants_text if inline else r.aggregates_text for r in rendered)

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

    def _snapshot_key(self) -> _SnapshotKey:
        return (
            self._snapshot(),
            self._quotas.limits if self._quotas is not None else None,
            self._health.latest if self._health is not None else None,
            self._backups.overview if self._backups is not None else None,
        )

    def _snapshot_families(self, key: _SnapshotKey) -> _Built:
        """The snapshot's, the health round's and the backups' families (per-tenant ones unless off)."""
        snapshot, limits, health, backups = key
        tenants = self.tenant_series != "off"
        aggregates: list[Metric] = []
        per_tenant: list[Metric] = []
        if snapshot is not None:
            aggregates.extend(metric_families.snapshot_aggregates(snapshot))
            if tenants:
                per_tenant.extend(metric_families.snapshot_tenant_families(snapshot, self.per_table, limits))
        if health is not None:
            aggregates.extend(metric_families.health_aggregates(health))
            if tenants:
                per_tenant.extend(metric_families.health_tenant_families(health))
        if backups is not None:
            aggregates.extend(metric_families.backup_aggregates(backups))
            if tenants:
                per_tenant.extend(metric_families.backup_tenant_families(backups))
        return aggregates, per_tenant

    def _published(self) -> Mapping[str, int]:
        return self._served.published if self._served is not None else _NOTHING_SERVED

    def _served_families(self, key: tuple[Mapping[str, int]]) -> _Built:
        """Bytes served: the total, and per tenant unless ``per_table`` or ``tenant_series`` is off."""
        if self._served is None:
            return [], []
        (published,) = key
        per_tenant = self.per_table and self.tenant_series != "off"
        tenants = list(metric_families.served_tenant_families(published)) if per_tenant else []
        return list(metric_families.served_total(published)), tenants

    def _requests_published(self) -> Mapping[str, RequestStats]:
        return self._requests.published if self._requests is not None else _NO_REQUESTS

    def _request_families(self, key: tuple[Mapping[str, RequestStats]]) -> _Built:
        """Per-tenant request families (all per tenant), once per publication of the recorder."""
        (published,) = key
        return [], list(request_families(published)) if self.tenant_series != "off" else []
