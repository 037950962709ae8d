"""Per-tenant request statistics: status classes and latency, counted in memory on the request path.

Every tenant API request that resolved to a tenant (``authenticate_tenant`` marks it) is observed here
once its final status is known (the HTTP metrics middleware, outside the exception handlers, so a 4xx/5xx
an exception handler produced counts too): its status class (2xx/3xx/4xx/5xx) and its duration in a small
fixed-bucket histogram (``BOUNDS``). The hot path is a few dict lookups and integer additions on the event
loop: no lock, no database.

Two views of the same observations:

- ``live``: per tenant slug since this replica started, published (``published``, a mapping of copies
  replaced whole, never changed in place) at each flush so that ``/metrics`` renders its text once per
  publication (``cardvault_tenant_requests_total{tenant,class}``,
  ``cardvault_tenant_request_duration_seconds``); kept only when ``per_tenant`` is on
  (``CARDVAULT_METRICS_PER_TABLE``), at most ``MAX_SLUGS`` tenants.
- pending per (tenant id, hour): added to ``tenant_request_stats`` by ``flush`` (a job of every replica,
  like the API call counts: each adds its own counts; counts a failed flush could not write are kept).
"""

from __future__ import annotations

import time
import uuid
from bisect import bisect_left
from collections.abc import Callable, Mapping
from types import MappingProxyType

from controlplane.db import AsyncConn
from controlplane.usage import request_stats_repository as repository

HOUR = 3600
#: Upper bounds (seconds, inclusive) of the latency buckets; one more bucket is +Inf.
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Status classes, in the order of ``RequestStats.classes``.
CLASSES = ("2xx", "3xx", "4xx", "5xx")
#: Tenant slugs kept for ``live`` at most (renames start new ones); past it, they are all dropped.
MAX_SLUGS = 100_000


def status_class(status: int) -> int:
    """Index in ``CLASSES`` of ``status`` (1xx counts as 2xx, anything past 5xx as 5xx)."""
    return min(max(status // 100 - 2, 0), 3)


class RequestStats:
    """Requests by status class and a latency histogram (per bucket, not cumulative; the last is +Inf)."""

    __slots__ = ("buckets", "classes", "sum")

    def __init__(self) -> None:
        self.classes = [0, 0, 0, 0]
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.sum = 0.0

    def add(self, cls: int, bucket: int, seconds: float) -> None:
        self.classes[cls] += 1
        self.buckets[bucket] += 1
        self.sum += seconds

    def copy(self) -> RequestStats:
        copied = RequestStats()
        copied.merge(self)
        return copied

    def merge(self, other: RequestStats) -> None:
        for i, n in enumerate(other.classes):
            self.classes[i] += n
        for i, n in enumerate(other.buckets):
            self.buckets[i] += n
        self.sum += other.sum

    @property
    def count(self) -> int:
        return sum(self.classes)


class TenantRequests:
    """The recorder (one per replica, built with the app)."""

    def __init__(self, *, per_tenant: bool = True, clock: Callable[[], float] = time.time) -> None:
        #: Keep ``live`` (the ``/metrics`` series); off for very large fleets. Persisting is always on.
        self.per_tenant = per_tenant
        self._clock = clock
        #: Per tenant slug, since this replica started (only with ``per_tenant``).
        self.live: dict[str, RequestStats] = {}
        #: ``live`` as of the last ``publish`` (copies): what ``/metrics`` shows.
        self.published: Mapping[str, RequestStats] = MappingProxyType({})
        self._changed = False
        self._pending: dict[tuple[uuid.UUID, int], RequestStats] = {}

    def observe(self, tenant_id: uuid.UUID, slug: str, status: int, seconds: float) -> None:
        """One finished request of the tenant: its final status and seconds to the last byte."""
        cls = min(max(status // 100 - 2, 0), 3)
        bucket = bisect_left(BOUNDS, seconds)
        key = (tenant_id, int(self._clock() // HOUR) * HOUR)
        stats = self._pending.get(key)
        if stats is None:
            stats = self._pending[key] = RequestStats()
        stats.add(cls, bucket, seconds)
        if self.per_tenant:
            live = self.live.get(slug)
            if live is None:
                if len(self.live) >= MAX_SLUGS:
                    self.live.clear()
                live = self.live[slug] = RequestStats()
            live.add(cls, bucket, seconds)
            self._changed = True

    def pending(self) -> dict[tuple[uuid.UUID, int], RequestStats]:
        """Statistics counted here and not yet flushed, by (tenant, hour start as Unix time)."""
        return dict(self._pending)

    def publish(self) -> None:
        """Replace ``published`` with copies of ``live`` (a new mapping only when something changed)."""
        if not self._changed:
            return
        self._changed = False
        self.published = MappingProxyType({slug: stats.copy() for slug, stats in self.live.items()})

    async def flush(self, conn: AsyncConn) -> int:
        """Publish, then add the pending statistics to ``tenant_request_stats`` (and drop rows past the
        retention); the number of tenant-hours written."""
        self.publish()
        pending, self._pending = self._pending, {}
        try:
            async with conn.transaction():
                for (tenant_id, hour), stats in pending.items():
                    await repository.add(conn, tenant_id, hour, stats.classes, stats.buckets, stats.sum)
                await repository.prune(conn)
        except BaseException:
            for key, stats in pending.items():  # keep them for the next flush
                kept = self._pending.get(key)
                if kept is None:
                    self._pending[key] = stats
                else:
                    kept.merge(stats)
            raise
        return len(pending)
