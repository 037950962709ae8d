"""A bounded load through every process of the fleet: what each request got, what was acknowledged, and the
figures the issue asks for (requests per second, p50/p99 latency, errors).

Each worker sends requests back to back through one process (workers are spread over the processes), to
tenants in turn: a write (a new card, numbered uniquely) then a read of a card acknowledged before (any
process may have written it). The load stops by itself after ``max_requests`` requests or ``duration``
seconds, whichever comes first, or when ``stop()`` is called.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests.integration.fleet.fleet_support import Fleet, FleetTenant


@dataclass(frozen=True)
class Sample:
    """One request: when it was sent and answered (``time.monotonic``), where it went, what it got.
    ``status`` 0 is a transport error (no HTTP answer); ``error`` the JSON error code of a 4xx/5xx."""

    sent: float
    answered: float
    process: int
    slug: str
    kind: str
    status: int
    error: str | None = None
    number: str | None = None

    @property
    def latency(self) -> float:
        return self.answered - self.sent

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Summary:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.requests} requests in {self.seconds:.1f} s: {self.rps:.0f} req/s, "
            f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, errors {self.errors or 'none'}"
        )


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarize(samples: list[Sample]) -> Summary:
    if not samples:
        return Summary(0, 0.0, 0.0, 0.0, {})
    seconds = max(s.answered for s in samples) - min(s.sent for s in samples)
    latencies = [s.latency * 1000 for s in samples]
    errors = Counter(f"{s.status} {s.error or ''}".strip() for s in samples if not s.ok)
    return Summary(len(samples), seconds, statistics.median(latencies), percentile(latencies, 0.99), dict(errors))


@dataclass
class Load:
    """The load over ``tenants`` through every process of ``fleet`` (``workers`` at once)."""

    fleet: Fleet
    tenants: list[FleetTenant]
    prefix: str
    workers: int = 6
    max_requests: int = 4000
    duration: float = 60.0
    samples: list[Sample] = field(default_factory=list)
    #: Card numbers acknowledged (201), and ids to read back, by tenant slug.
    acknowledged: dict[str, set[str]] = field(default_factory=dict)
    _ids: dict[str, list[int]] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _numbers: itertools.count[int] = field(default_factory=itertools.count)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    def since(self, moment: float) -> list[Sample]:
        return [s for s in self.samples if s.sent >= moment]

    async def _run(self) -> None:
        deadline = time.monotonic() + self.duration
        await asyncio.gather(*(self._worker(w, deadline) for w in range(self.workers)))

    async def _worker(self, worker: int, deadline: float) -> None:
        client = self.fleet.client(worker)
        process = worker % len(self.fleet.clients)
        offset = worker * len(self.tenants) // self.workers  # workers start spread over the tenants
        order = self.tenants[offset:] + self.tenants[:offset]
        for tenant in itertools.cycle(order):
            for kind in ("write", "read"):
                if self._stop.is_set() or time.monotonic() > deadline or len(self.samples) >= self.max_requests:
                    return
                self.samples.append(await self._request(client, process, tenant, kind))

    async def _request(self, client: httpx.AsyncClient, process: int, tenant: FleetTenant, kind: str) -> Sample:
        cards = f"/t/{tenant.slug}/api/cards"
        number = None
        sent = time.monotonic()
        try:
            if kind == "write":
                number = f"{self.prefix}-{next(self._numbers)}"
                response = await client.post(cards, json={"cardnumber": number}, headers=tenant.auth)
            elif self._ids.get(tenant.slug):
                card_id = random.choice(self._ids[tenant.slug])
                response = await client.get(f"{cards}/{card_id}", headers=tenant.auth)
            else:
                response = await client.get(cards, params={"limit": 10}, headers=tenant.auth)
        except httpx.TransportError as exc:
            return Sample(sent, time.monotonic(), process, tenant.slug, kind, 0, type(exc).__name__, number)
        answered = time.monotonic()
        error = None
        if response.status_code >= 400:
            try:
                error = str(response.json()["error"])
            except (ValueError, KeyError, TypeError):
                error = "no JSON error"
        elif kind == "write":
            self.acknowledged.setdefault(tenant.slug, set()).add(str(number))
            self._ids.setdefault(tenant.slug, []).append(int(response.json()["id"]))
        return Sample(sent, answered, process, tenant.slug, kind, response.status_code, error, number)


@dataclass
class Writer:
    """Creates cards for one tenant through one process, back to back, until stopped (at most ``limit``
    writes, for at most ``duration`` seconds): what was acknowledged (201, with when), and what was refused
    meanwhile (a write freeze answers 503 ``tenant_unavailable``; anything else is recorded as wrong)."""

    fleet: Fleet
    tenant: FleetTenant
    process: int
    limit: int = 3000
    duration: float = 120.0
    acknowledged: list[tuple[str, float]] = field(default_factory=list)
    refused: int = 0
    wrong: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        client = self.fleet.client(self.process)
        deadline = time.monotonic() + self.duration
        for n in range(self.limit):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            number = f"busy-p{self.process}-{n}"
            cards = f"/t/{self.tenant.slug}/api/cards"
            try:
                response = await client.post(cards, json={"cardnumber": number}, headers=self.tenant.auth)
            except httpx.TransportError as exc:
                self.wrong.append(f"{number}: {type(exc).__name__}")
                continue
            if response.status_code == 201:
                self.acknowledged.append((number, time.monotonic()))
            elif response.status_code == 503 and response.json().get("error") == "tenant_unavailable":
                self.refused += 1
                await asyncio.sleep(0.01)
            else:
                self.wrong.append(f"{number}: {response.status_code} {response.text[:200]}")

    async def acknowledged_more(self, more: int, within: float = 60.0) -> None:
        """Wait until ``more`` further writes are acknowledged."""
        enough = len(self.acknowledged) + more
        deadline = time.monotonic() + within
        while len(self.acknowledged) < enough:
            assert self._task is not None and not self._task.done(), f"writer of {self.tenant.slug} stopped"
            assert time.monotonic() < deadline, f"{self.tenant.slug} via p{self.process}: no {more} writes"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


def longest_gap(moments: list[float], start: float, end: float) -> float:
    """The longest time between two successive ``moments`` that overlaps ``[start, end]``: the write freeze
    as the clients saw it (from the last write acknowledged before it to the first one after)."""
    ordered = sorted(moments)
    return max((b - a for a, b in itertools.pairwise(ordered) if b >= start and a <= end), default=0.0)
