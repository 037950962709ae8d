"""Bytes of card images served per tenant: counted in memory on the request path, flushed to the registry.

Every image answered with its bytes (the authenticated ``GET /cards/{id}/image`` and signed file links;
not a 304, which sends none) is counted here per tenant. ``flush`` (a job of every replica, like the API
call counts) adds what this replica counted to ``tenant_bytes_served`` and records the new totals as
``bytes_served`` history points (``usage.repository.add_bytes_served``); each replica adds only its own
counts, so nothing is counted twice, and counts a failed flush could not write are kept for the next.

For Prometheus, the bytes this replica served since it started are kept per tenant slug and published
(``published``, a mapping replaced whole, never changed in place) at each flush, so ``/metrics`` renders
them with the other per-tenant series instead of on every scrape (sum them across replicas).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType

from controlplane.db import AsyncConn
from controlplane.usage import repository

#: Tenant slugs kept for ``published`` at most (renames start new ones); past it, the smallest go.
MAX_SLUGS = 100_000


class BytesServed:
    """The meter (one per replica, in ``app.state``)."""

    def __init__(self) -> None:
        self._bytes: Counter[uuid.UUID] = Counter()
        self._requests: Counter[uuid.UUID] = Counter()
        self._by_slug: Counter[str] = Counter()
        self._changed = False
        #: Bytes served by this replica since it started, per tenant slug, as of the last ``publish``.
        self.published: Mapping[str, int] = MappingProxyType({})

    def count(self, tenant_id: uuid.UUID, slug: str, size: int) -> None:
        """One response that sent ``size`` bytes of the tenant's stored files."""
        self._bytes[tenant_id] += size
        self._requests[tenant_id] += 1
        self._by_slug[slug] += size
        self._changed = True

    def pending(self) -> dict[uuid.UUID, tuple[int, int]]:
        """(bytes, responses) counted here and not yet flushed, per tenant."""
        return {t: (b, self._requests[t]) for t, b in self._bytes.items()}

    def publish(self) -> None:
        """Replace ``published`` with the current totals (a new mapping only when they changed)."""
        if not self._changed:
            return
        self._changed = False
        if len(self._by_slug) > MAX_SLUGS:
            self._by_slug = Counter(dict(self._by_slug.most_common(MAX_SLUGS)))
        self.published = MappingProxyType(dict(self._by_slug))

    async def flush(self, conn: AsyncConn) -> int:
        """Publish, then add the counts to the registry; the number of tenants written."""
        self.publish()
        counted, requests = self._bytes, self._requests
        self._bytes, self._requests = Counter(), Counter()
        rows = [repository.ServedCount(t, b, requests[t]) for t, b in counted.items()]
        try:
            async with conn.transaction():
                return await repository.add_bytes_served(conn, rows)
        except BaseException:
            self._bytes.update(counted)  # keep them for the next flush
            self._requests.update(requests)
            raise
