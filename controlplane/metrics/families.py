"""The metric families of ``/metrics``, built from plain values (no I/O): ``CardVaultMetrics`` calls these.

*Live* families (pools, registry cache, jobs) are built at each scrape; the others (the usage snapshot,
quota ratios, servers, the last collection, tenant health, backups, bytes served) once per change of their
sources. Those come in two kinds, built by separate functions so that they can be served apart
(``CARDVAULT_METRICS_TENANT_SERIES``): ``*_aggregates``/``*_total``, fleet-wide, whose size does not grow
with the tenant count, and ``*_tenant_families``, labelled by ``tenant`` (one series set per tenant).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from controlplane.backups.models import BackupOverview
from controlplane.hygiene.models import HygieneCounters, HygieneReport
from controlplane.maintenance.models import FleetHealth
from controlplane.pools.models import PoolStats
from controlplane.registry.models import TIER_QUOTAS, TenantStatus, Tier
from controlplane.scheduler.service import JobStats
from controlplane.usage.models import CollectionStats, TenantUsage, UsageSnapshot

#: Effective quota limits by tenant id, then quota name (None: unlimited).
Limits = Mapping[uuid.UUID, Mapping[str, int | None]]

_TIER_LIMITS: dict[str, dict[str, int | None]] = {
    tier.value: {quota.value: limit for quota, limit in limits.items()} for tier, limits in TIER_QUOTAS.items()
}


def quota_limits(usage: TenantUsage, limits: Limits | None) -> Mapping[str, int | None]:
    """The tenant's effective limits when known, else its tier's (what provisioning writes)."""
    known = limits.get(usage.tenant_id) if limits is not None else None
    return known if known is not None else _TIER_LIMITS.get(usage.tier, {})


# -- live families ----------------------------------------------------------------------------------


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def pool_families(s: PoolStats) -> Iterator[Metric]:
    yield counter("cardvault_pool_hits_total", "Tenant requests served by a pool already open", s.hits)
    yield counter("cardvault_pool_misses_total", "Tenant requests that had to create a pool", s.misses)
    yield counter("cardvault_pool_evictions_total", "Pools evicted for capacity or the budget", s.evictions)
    yield counter("cardvault_pool_invalidations_total", "Pools dropped by a tenant change", s.invalidations)
    yield gauge("cardvault_pool_open", "Tenant pools open (including evicted ones draining)", s.open_pools)
    yield gauge("cardvault_pool_capacity", "Tenant pools open at most (LRU capacity)", s.capacity)
    yield gauge("cardvault_pool_connections", "Tenant connections held or being opened", s.connections_open)
    yield gauge("cardvault_pool_connections_in_use", "Tenant connections checked out", s.connections_in_use)
    yield gauge("cardvault_pool_connections_idle", "Tenant connections idle in pools", s.connections_idle)
    yield gauge("cardvault_pool_connection_budget", "Tenant connections across all pools at most", s.budget)
    yield gauge("cardvault_pool_requests_waiting", "Requests waiting for a tenant connection", s.requests_waiting)


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


def cache_families(snap: Mapping[str, Any]) -> Iterator[Metric]:
    for key, doc in _CACHE_COUNTERS:
        yield counter(f"cardvault_registry_cache_{key}_total", doc, float(snap.get(key, 0)))
    yield gauge(
        "cardvault_registry_cache_listening",
        "1 while the registry cache receives change notifications (and so caches)",
        1.0 if snap.get("listening") else 0.0,
    )
    entries = GaugeMetricFamily("cardvault_registry_cache_entries", "Registry cache entries", labels=("kind",))
    for kind in ("tenants", "credentials"):
        entries.add_metric((kind,), float(snap.get(kind, 0)))
    yield entries


def job_families(jobs: Mapping[str, JobStats]) -> Iterator[Metric]:
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


def snapshot_aggregates(snapshot: UsageSnapshot) -> Iterator[Metric]:
    """Fleet-wide families of the snapshot: tenants by status and tier, the servers, the last collection
    (their size grows with the servers, never with the tenants)."""
    counts: dict[tuple[str, str], int] = {(s.value, t.value): 0 for s in TenantStatus for t in Tier}
    for usage in snapshot.tenants.values():
        counts[(usage.status, usage.tier)] = counts.get((usage.status, usage.tier), 0) + 1
    tenants = GaugeMetricFamily(
        "cardvault_tenants", "Tenants by status and tier (at the last collection)", labels=("status", "tier")
    )
    for (status, tier), count in sorted(counts.items()):
        tenants.add_metric((status, tier), count)
    yield tenants
    yield from _server_families(snapshot)
    if snapshot.last is not None:
        yield from _collection_families(snapshot.last)


def snapshot_tenant_families(snapshot: UsageSnapshot, per_table: bool, all_limits: Limits | None) -> Iterator[Metric]:
    """The snapshot's families labelled by ``tenant``: info, sizes, tables (with ``per_table``), storage,
    quota usage ratios."""
    tenant = ("tenant",)
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
    yield from (info, database)
    if per_table:
        yield from (table_bytes, table_rows)
    yield from (storage_bytes, storage_files, quota_ratio)


def _collection_families(last: CollectionStats) -> Iterator[Metric]:
    prefix = "cardvault_usage_collection"
    finished = last.started_at.timestamp() + last.duration_seconds
    yield gauge("cardvault_usage_last_collection_timestamp_seconds", "Unix time the last collection ended", finished)
    yield gauge(f"{prefix}_duration_seconds", "Seconds the last collection took", last.duration_seconds)
    yield gauge(f"{prefix}_tenants", "Tenants measured by the last collection", last.tenants)
    yield gauge(f"{prefix}_scanned_tenants", "Tenants whose tables the last collection scanned", last.scanned)
    yield gauge(f"{prefix}_failed_tenants", "Tenants the last collection failed to measure", last.failed)
    yield gauge(f"{prefix}_servers", "Database servers the last collection read", last.servers)
    yield gauge(f"{prefix}_failed_servers", "Database servers the last collection could not reach", last.failed_servers)


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


def health_aggregates(health: FleetHealth) -> Iterator[Metric]:
    """When the last round of tenant health checks ended and how long it took."""
    yield gauge(
        "cardvault_tenant_health_last_check_timestamp_seconds",
        "Unix time the last round of tenant health checks ended",
        health.finished_at.timestamp(),
    )
    yield gauge(
        "cardvault_tenant_health_check_duration_seconds",
        "Seconds the last round of tenant health checks took",
        health.duration_seconds,
    )


def health_tenant_families(health: FleetHealth) -> Iterator[Metric]:
    """Each checked tenant's health: up, and the connect and query latencies."""
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


# -- storage hygiene and bytes served ---------------------------------------------------------------


def hygiene_families(counters: HygieneCounters, latest: HygieneReport | None) -> Iterator[Metric]:
    """What this replica's fixing runs did (counters), and what its last full run found (gauges, absent
    before it: only the replica that ran it knows; aggregate with ``max``)."""
    prefix = "cardvault_storage_hygiene"
    yield counter(f"{prefix}_quarantined_total", "Objects with no files row moved to quarantine", counters.quarantined)
    yield counter(
        f"{prefix}_restored_total", "Quarantined objects moved back (their row reappeared)", counters.restored
    )
    yield counter(f"{prefix}_deleted_total", "Quarantined objects deleted after the grace period", counters.deleted)
    yield counter(
        f"{prefix}_reclaimed_bytes_total", "Bytes freed by deleting quarantined objects", counters.reclaimed_bytes
    )
    yield counter(
        f"{prefix}_missing_found_total", "Files rows newly found with no stored object", counters.missing_found
    )
    yield counter(
        f"{prefix}_missing_removed_total",
        "Files rows with no object removed after the grace period",
        counters.missing_removed,
    )
    if latest is None:
        return
    yield gauge(
        f"{prefix}_orphans",
        "Objects with no files row (past the safety margin) found by the last run",
        sum(t.orphans for t in latest.tenants),
    )
    yield gauge(
        f"{prefix}_missing_files", "Files rows with no stored object, open after the last run", latest.missing_files
    )
    yield gauge(f"{prefix}_quarantine_files", "Objects in quarantine after the last run", latest.quarantine_files)
    yield gauge(f"{prefix}_quarantine_bytes", "Bytes in quarantine after the last run", latest.quarantine_bytes)
    yield gauge(f"{prefix}_failed_tenants", "Tenants the last run could not check", latest.failed)
    yield gauge(
        f"{prefix}_last_run_timestamp_seconds",
        "Unix time the last full run ended",
        latest.started_at.timestamp() + latest.duration_seconds,
    )


def served_total(published: Mapping[str, int]) -> Iterator[Metric]:
    """Image bytes this replica served since it started (sum across replicas)."""
    yield counter(
        "cardvault_image_bytes_served_total", "Bytes of stored images served (no 304s)", float(sum(published.values()))
    )


def served_tenant_families(published: Mapping[str, int]) -> Iterator[Metric]:
    """The same per tenant (none without a tenant: no family without a series)."""
    if published:
        family = CounterMetricFamily(
            "cardvault_tenant_image_bytes_served", "Bytes of the tenant's stored images served", labels=("tenant",)
        )
        for slug, size in sorted(published.items()):
            family.add_metric((slug,), float(size))
        yield family


# -- backups ----------------------------------------------------------------------------------------


def backup_aggregates(overview: BackupOverview) -> Iterator[Metric]:
    """The fleet's stale tenants (a count) and its retained backups."""
    yield gauge(
        "cardvault_backups_stale_tenants",
        "Tenants without a recent enough successful backup",
        sum(overview.stale.values()),
    )
    yield gauge("cardvault_backups_retained", "Backups kept (succeeded, not expired), of any tenant", overview.retained)
    yield gauge("cardvault_backups_retained_bytes", "Bytes of the backups kept, of any tenant", overview.retained_bytes)


def backup_tenant_families(overview: BackupOverview) -> Iterator[Metric]:
    """Each active or suspended tenant's last successful backup and whether it is stale (no success within
    ``CARDVAULT_BACKUP_STALE_FACTOR`` intervals of its tier)."""
    tenant = ("tenant",)
    last = GaugeMetricFamily(
        "cardvault_tenant_last_backup_timestamp_seconds",
        "Unix time the tenant's last successful backup finished (absent: never)",
        labels=tenant,
    )
    stale = GaugeMetricFamily(
        "cardvault_tenant_backup_stale", "1 when the tenant has no successful backup recent enough", labels=tenant
    )
    for slug, finished in sorted(overview.last_success.items()):
        if finished is not None:
            last.add_metric((slug,), finished)
    for slug, is_stale in sorted(overview.stale.items()):
        stale.add_metric((slug,), 1.0 if is_stale else 0.0)
    yield from (last, stale)
