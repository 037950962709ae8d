"""Building blocks of the metrics unit tests: snapshots, fake sources bound to ``CardVaultMetrics``, parsers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from controlplane.backups.models import BackupOverview
from controlplane.hygiene.models import HygieneCounters, HygieneReport, TenantScan
from controlplane.maintenance.models import FleetHealth, Health
from controlplane.metrics.requests import UNMATCHED, HttpMetrics
from controlplane.metrics.service import CardVaultMetrics
from controlplane.pools.models import PoolStats
from controlplane.scheduler.service import JobStats
from controlplane.settings.groups import TenantSeries
from controlplane.usage.models import (
    CollectionStats,
    ServerUsage,
    StorageUsage,
    TableUsage,
    TenantUsage,
    UsageSnapshot,
)
from controlplane.usage.request_stats import TenantRequests

TABLES = ("audit_log", "cards", "files", "manufacturers", "players", "teams", "users")
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def tenant(
    slug: str,
    *,
    tier: str = "starter",
    status: str = "active",
    database_bytes: int = 8_000_000,
    counters: Mapping[str, int] | None = None,
    row_estimate: int = 10,
) -> TenantUsage:
    return TenantUsage(
        tenant_id=uuid.uuid4(),
        slug=slug,
        tier=tier,
        status=status,
        server="default",
        database_bytes=database_bytes,
        tables=tuple(TableUsage(table=t, total_bytes=16_384, row_estimate=row_estimate) for t in TABLES),
        storage={"image": StorageUsage(bytes=1234, files=2)},
        counters=dict(counters if counters is not None else {"users": 1, "cards": 800, "storage_bytes": 1234}),
        measured_at=NOW,
        tables_scanned_at=NOW,
    )


def snapshot_of(*tenants: TenantUsage) -> UsageSnapshot:
    return UsageSnapshot(
        tenants={t.tenant_id: t for t in tenants},
        servers={
            "default": ServerUsage(
                name="default",
                status="active",
                tenants=len(tenants),
                database_bytes=sum(t.database_bytes for t in tenants),
                connections=12,
                max_connections=100,
            )
        },
        last=CollectionStats(started_at=NOW, duration_seconds=1.5, tenants=len(tenants), scanned=1, failed=0),
    )


def many_tenants(n: int) -> UsageSnapshot:
    tiers = ("starter", "professional", "enterprise")
    return snapshot_of(*(tenant(f"tenant-{i:05d}", tier=tiers[i % 3]) for i in range(n)))


class FakePools:
    def stats(self) -> PoolStats:
        return PoolStats(
            hits=90,
            misses=10,
            evictions=3,
            invalidations=1,
            open_pools=7,
            connections_open=9,
            connections_in_use=2,
            connections_idle=7,
            requests_waiting=0,
            budget=200,
            capacity=100,
        )


class FakeCache:
    def snapshot(self) -> dict[str, Any]:
        return {
            "hits": 5,
            "negative_hits": 1,
            "misses": 2,
            "credential_hits": 4,
            "credential_misses": 2,
            "invalidations": 1,
            "resets": 0,
            "reconnects": 0,
            "listening": True,
            "tenants": 3,
            "credentials": 2,
        }


@dataclass
class FakeScheduler:
    stats: dict[str, JobStats] = field(
        default_factory=lambda: {
            "reconcile": JobStats(runs=3, failures=1, last_success=1_700_000_000.0, last_duration=0.2),
            "usage": JobStats(runs=1, failures=1, last_error="server down"),
        }
    )


@dataclass
class FakeQuotas:
    open_counts: dict[tuple[str, int], int] = field(
        default_factory=lambda: {(q, t): 0 for q in ("cards", "storage_bytes", "users") for t in (80, 100)}
    )
    limits: dict[uuid.UUID, dict[str, int | None]] = field(default_factory=dict)


@dataclass
class FakeHealth:
    latest: FleetHealth | None


def health_of(snapshot: UsageSnapshot | None) -> FakeHealth:
    """A health round over the snapshot's tenants: every one up but the last, whose login failed (no
    round before the first collection)."""
    if snapshot is None:
        return FakeHealth(None)
    slugs = [u.slug for u in snapshot.tenants.values()]
    results = tuple(
        Health(tenant=slug, ok=True, connect_ms=3.0, query_ms=0.1)
        if n < len(slugs) - 1
        else Health(tenant=slug, ok=False, connect_ms=None, query_ms=None, error="role cannot log in")
        for n, slug in enumerate(slugs)
    )
    return FakeHealth(FleetHealth(finished_at=datetime.now(UTC), duration_seconds=0.5, results=results))


@dataclass
class FakeBackups:
    overview: BackupOverview | None


def backups_of(snapshot: UsageSnapshot | None) -> FakeBackups:
    """The backups' standing of the snapshot's tenants: each backed up an hour ago but the first, never (and
    stale)."""
    if snapshot is None:
        return FakeBackups(None)
    slugs = [u.slug for u in snapshot.tenants.values()]
    last = {slug: None if n == 0 else NOW.timestamp() - 3600 for n, slug in enumerate(slugs)}
    stale = {slug: n == 0 for n, slug in enumerate(slugs)}
    return FakeBackups(BackupOverview(refreshed_at=NOW, last_success=last, stale=stale, retained_bytes=9, retained=1))


@dataclass
class FakeHygiene:
    counters: HygieneCounters
    latest: HygieneReport | None


def hygiene_of(snapshot: UsageSnapshot | None) -> FakeHygiene:
    """Storage hygiene after one full run (none before the first collection): one orphan quarantined."""
    counters = HygieneCounters(quarantined=1, deleted=1, reclaimed_bytes=300, missing_found=1)
    if snapshot is None:
        return FakeHygiene(counters, None)
    scans = [TenantScan(tenant_id=u.tenant_id, slug=u.slug, orphans=1) for u in snapshot.tenants.values()]
    report = HygieneReport(
        fix=True,
        started_at=NOW,
        duration_seconds=0.2,
        tenants=scans,
        quarantine_files=1,
        quarantine_bytes=300,
        missing_files=0,
    )
    return FakeHygiene(counters, report)


@dataclass
class FakeServed:
    published: Mapping[str, int]


def full_metrics(
    snapshot: UsageSnapshot | None, *, per_table: bool = True, tenant_series: TenantSeries = "inline"
) -> tuple[CardVaultMetrics, HttpMetrics]:
    metrics = CardVaultMetrics(
        per_table=per_table,
        tenant_series=tenant_series,
        collection_interval=300.0,
        server_capacity_bytes=500 * 1024**3,
        server_max_tenants=1000,
    )
    tenant_requests = TenantRequests(per_tenant=per_table)
    http = HttpMetrics(tenants=tenant_requests)
    metrics.register(http)
    for usage in snapshot.tenants.values() if snapshot else ():
        tenant_requests.observe(usage.tenant_id, usage.slug, 200, 0.003)
        tenant_requests.observe(usage.tenant_id, usage.slug, 404, 0.02)
    tenant_requests.publish()  # as the flush job does
    metrics.bind(
        snapshot=lambda: snapshot,
        pools=FakePools(),
        cache=FakeCache(),
        jobs=FakeScheduler(),
        quotas=FakeQuotas(),
        health=health_of(snapshot),
        backups=backups_of(snapshot),
        hygiene=hygiene_of(snapshot),
        served=FakeServed({u.slug: 2048 for u in snapshot.tenants.values()} if snapshot else {}),
        requests=tenant_requests,
    )
    http.observe("GET", "/t/{tenant_slug}/api/cards/{card_id}", 200, 0.0012)
    http.observe("POST", "/admin/tenants", 201, 0.3)
    http.observe("GET", UNMATCHED, 404, 0.0001)
    metrics.observe_provisioning(0.4, succeeded=True)
    return metrics, http


def families(text: bytes) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def samples(text: bytes, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
        if s.name == name
    }
