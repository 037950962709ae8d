"""What the registry cache holds: its maps (tenants by id with a slug index, credentials, unknown slugs,
all bounded LRU), the registry reads in flight, and its counters. ``CacheEntries`` is the base of
``TenantCache`` (``cache``), which fills and invalidates them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator

from controlplane.context import TenantContext


@dataclasses.dataclass
class CacheStats:
    """Counters of one cache, for metrics and tests (monotonic; never reset)."""

    #: ``get_by_slug`` answered from memory (a known tenant).
    hits: int = 0
    #: ``get_by_slug`` answered from memory that the slug is unknown (within ``negative_ttl``).
    negative_hits: int = 0
    #: ``get_by_slug`` that read the registry.
    misses: int = 0
    credential_hits: int = 0
    credential_misses: int = 0
    #: Tenant or server notifications handled, plus ``invalidate()`` calls.
    invalidations: int = 0
    #: Whole-cache clears (listen connection lost, or a notification that names no id).
    resets: int = 0
    #: Listen connections re-established after a loss.
    reconnects: int = 0


class Flight:
    """One registry read in progress, and what was invalidated while it ran."""

    __slots__ = ("changes", "dropped", "epoch")

    def __init__(self, epoch: int, changes: int) -> None:
        self.epoch = epoch
        self.changes = changes
        self.dropped: set[uuid.UUID] = set()


class CacheEntries:
    """The maps of the registry cache and the reads in flight (see ``TenantCache`` for the rules)."""

    def __init__(self, *, max_entries: int, negative_ttl: float) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._max_entries = max_entries
        self._negative_ttl = negative_ttl
        self.stats = CacheStats()

        self._contexts: OrderedDict[uuid.UUID, TenantContext] = OrderedDict()
        self._slugs: dict[str, uuid.UUID] = {}
        #: tenant id -> (server id, DSN): the server id lets a server change drop its tenants' DSNs.
        self._credentials: OrderedDict[uuid.UUID, tuple[uuid.UUID, str]] = OrderedDict()
        #: unknown slug -> monotonic time until which it is known to be unknown
        self._unknown: dict[str, float] = {}

        self._flights: set[Flight] = set()
        #: Bumped when everything cached may be stale (reset, (re)connect): older reads are not stored.
        self._epoch = 0
        #: Bumped on every tenant change: negative results read before it are not stored.
        self._changes = 0

    @contextlib.contextmanager
    def _flight(self) -> Iterator[Flight]:
        flight = Flight(self._epoch, self._changes)
        self._flights.add(flight)
        try:
            yield flight
        finally:
            self._flights.discard(flight)

    def _store(self, context: TenantContext) -> None:
        previous_id = self._slugs.get(context.slug)
        if previous_id is not None and previous_id != context.id:
            # The slug moved to another tenant; the notifications saying so are on their way.
            self._contexts.pop(previous_id, None)
        previous = self._contexts.pop(context.id, None)
        if previous is not None:
            self._forget_slug(previous)
        self._contexts[context.id] = context
        self._slugs[context.slug] = context.id
        while len(self._contexts) > self._max_entries:
            _, evicted = self._contexts.popitem(last=False)
            self._forget_slug(evicted)

    def _forget_slug(self, context: TenantContext) -> None:
        if self._slugs.get(context.slug) == context.id:
            del self._slugs[context.slug]

    def _remember_unknown(self, slug: str) -> None:
        if len(self._unknown) >= self._max_entries:
            del self._unknown[next(iter(self._unknown))]
        self._unknown[slug] = time.monotonic() + self._negative_ttl

    def _clear(self) -> set[uuid.UUID]:
        """Forget everything; the tenant ids that were cached."""
        known = set(self._contexts) | set(self._credentials)
        self._contexts.clear()
        self._slugs.clear()
        self._credentials.clear()
        self._unknown.clear()
        self._epoch += 1
        self._changes += 1
        return known

    def _forget_tenant(self, tenant_id: uuid.UUID) -> None:
        self.stats.invalidations += 1
        self._changes += 1
        self._unknown.clear()  # the change may be a new tenant taking a slug remembered as unknown
        for flight in self._flights:
            flight.dropped.add(tenant_id)
        context = self._contexts.pop(tenant_id, None)
        if context is not None:
            self._forget_slug(context)
        self._credentials.pop(tenant_id, None)
