"""Metric text rendered once per change of its sources and reused by every scrape until the next change.

The families ``CardVaultMetrics`` builds from sources that are replaced whole, never changed in place (the
usage snapshot with the quota limits, the last health round and the backups' standing; the image bytes
served; the per-tenant requests), are rendered when one of those sources is replaced (in a worker thread,
off the event loop) and the text is reused by every scrape: a repeat scrape of 10,000 tenants costs a
concatenation of bytes. A ``CachedPart`` compares its sources by identity, so a new object means new text.

Each part keeps two texts apart: its *aggregate* families (fleet-wide; their size does not grow with the
tenant count) and its *per-tenant* families (labelled by ``tenant``), so that the collector can put the
latter in ``/metrics``, in ``/metrics/tenants`` or nowhere (``CARDVAULT_METRICS_TENANT_SERIES``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

#: The sources of a part, each compared by identity.
K = TypeVar("K", bound=tuple[object, ...])


class _Families(Collector):
    """A fixed list of families, so ``generate_latest`` can render any list of them."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Sequence[Metric]:
        return self._families


def render(families: Sequence[Metric]) -> bytes:
    """The text exposition format of ``families``."""
    return generate_latest(_Families(families)) if families else b""


@dataclass(frozen=True)
class Rendered:
    """A part's families and their text: the aggregate ones and the per-tenant ones, apart."""

    aggregates: Sequence[Metric]
    aggregates_text: bytes
    tenants: Sequence[Metric]
    tenants_text: bytes


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    return all(x is y for x, y in zip(a, b, strict=True))


class CachedPart(Generic[K]):
    """One part: ``key()`` reads its sources, ``build(key)`` makes its (aggregate, per-tenant) families from
    them; both are built and rendered again only when ``key()`` gives other objects than last time."""

    def __init__(self, key: Callable[[], K], build: Callable[[K], tuple[list[Metric], list[Metric]]]) -> None:
        self._key = key
        self._build = build
        self._built: tuple[K, Rendered] | None = None
        self._lock = threading.Lock()

    def fresh(self) -> Rendered | None:
        """What was rendered, if its sources have not been replaced since; else None."""
        built = self._built
        return built[1] if built is not None and _same(built[0], self._key()) else None

    def get(self) -> Rendered:
        """What is rendered from the current sources, building it if they changed (safe in a worker thread)."""
        key = self._key()
        built = self._built
        if built is not None and _same(built[0], key):
            return built[1]
        with self._lock:  # two scrapes racing on new sources build them once
            built = self._built
            if built is None or not _same(built[0], key):
                aggregates, tenants = self._build(key)
                built = (key, Rendered(aggregates, render(aggregates), tenants, render(tenants)))
                self._built = built
        return built[1]
