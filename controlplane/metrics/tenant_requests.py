"""``/metrics`` families of per-tenant requests: ``cardvault_tenant_requests_total{tenant,class}`` and
``cardvault_tenant_request_duration_seconds{tenant}`` (a histogram), from ``TenantRequests.published``.

``CardVaultMetrics`` renders them once per publication (every flush, 30 s) and reuses the text, like the
image bytes served: requests counted by this replica since it started (``sum by (tenant)`` across
replicas). Absent with ``CARDVAULT_METRICS_PER_TABLE=0`` (the recorder publishes nothing then).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from controlplane.usage.request_stats import BOUNDS, CLASSES, RequestStats

_LE = (*(str(b) for b in BOUNDS), "+Inf")


def request_families(published: Mapping[str, RequestStats]) -> Iterator[Metric]:
    """The two families, or none without a tenant (no family without a series)."""
    if not published:
        return
    requests = CounterMetricFamily(
        "cardvault_tenant_requests_total",
        "Tenant API requests by tenant slug and status class (requests that resolved to a tenant)",
        labels=("tenant", "class"),
    )
    durations = HistogramMetricFamily(
        "cardvault_tenant_request_duration_seconds",
        "Seconds from request to last response byte of tenant API requests, by tenant slug",
        labels=("tenant",),
    )
    for slug, stats in sorted(published.items()):
        for cls, count in zip(CLASSES, stats.classes, strict=True):
            requests.add_metric((slug, cls), count)
        buckets, total = [], 0
        for le, count in zip(_LE, stats.buckets, strict=True):
            total += count
            buckets.append((le, float(total)))
        durations.add_metric((slug,), buckets, stats.sum)
    yield requests
    yield durations
