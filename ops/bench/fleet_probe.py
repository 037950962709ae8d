"""What the fleet benchmark (``fleet.py``) measures with: the ``Writer`` (cards created through the tenant API
of every live process, each answer recorded), the background read load (``route_load``'s generator against
every live process, in chunks, until stopped), and the read-back of every acknowledged write.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import httpx
from harness import pct
from route_load import LoadResult, run_load
from route_servers import Server, Tenant

#: Seconds one write may take before it counts as failed.
WRITE_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class Outcome:
    at: float  # time.monotonic() when the answer came
    slug: str
    ok: bool
    status: int  # HTTP status; 0: no answer (connection refused or reset, timeout)


def live(processes: Sequence[Server]) -> list[Server]:
    """The processes still running (a load balancer's health check: a killed one gets no new requests)."""
    return [p for p in processes if p.proc.poll() is None]


class Writer:
    """Keeps creating cards (``POST /t/{slug}/api/cards``) for its tenants through every live process in turn,
    ``workers`` requests at a time, until stopped: every answer (``outcomes``) and the card numbers
    acknowledged with 201 (``acked``, by slug)."""

    def __init__(self, processes: Callable[[], Sequence[Server]], tenants: Sequence[Tenant], workers: int) -> None:
        self._processes = processes
        self.tenants = list(tenants)
        self._workers = workers
        self._prefix = uuid.uuid4().hex[:6]
        self.acked: dict[str, list[str]] = {t.slug: [] for t in tenants}
        #: card number -> when its 201 came (monotonic)
        self.acked_at: dict[str, float] = {}
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._numbers = itertools.count()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(i)) for i in range(self._workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _run(self, worker: int) -> None:
        step = 0
        async with httpx.AsyncClient(timeout=WRITE_TIMEOUT) as client:
            while not self._stop.is_set():
                servers = live(self._processes())
                if not servers:
                    await asyncio.sleep(0.05)
                    continue
                step += 1
                tenant = self.tenants[(worker + step * self._workers) % len(self.tenants)]
                server = servers[(worker + step) % len(servers)]
                number = f"FW-{self._prefix}-{next(self._numbers)}"
                try:
                    response = await client.post(
                        server.url(f"/t/{tenant.slug}/api/cards"), json={"cardnumber": number}, headers=tenant.headers
                    )
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0
                now = time.monotonic()
                self.outcomes.append(Outcome(now, tenant.slug, status == 201, status))
                if status == 201:
                    self.acked[tenant.slug].append(number)
                    self.acked_at[number] = now
                elif status in (0, 503):
                    await asyncio.sleep(0.02)  # refused or unreachable: a client backs off a little

    def window(self, start: float, end: float, slugs: set[str] | None = None) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o.at <= end and (slugs is None or o.slug in slugs)]

    def longest_gap(self, slug: str, start: float, end: float) -> float:
        """Longest time (s) between two successful writes of ``slug`` within [start, end], the edges included."""
        times = [start, *(o.at for o in self.outcomes if o.slug == slug and o.ok and start <= o.at <= end), end]
        return max(b - a for a, b in itertools.pairwise(times))


def errors_by_status(outcomes: Sequence[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            key = str(o.status) if o.status else "no answer"
            counts[key] = counts.get(key, 0) + 1
    return counts


async def read_back(writer: Writer, locate: Callable[[str], tuple[str, str]]) -> set[str]:
    """The acknowledged card numbers missing: every one looked up in its tenant's database where the
    registry has it now (``locate(slug)`` -> (superuser DSN of its server, database name))."""
    import psycopg

    lost: set[str] = set()
    for slug, numbers in writer.acked.items():
        if not numbers:
            continue
        server_dsn, database = locate(slug)
        dsn = psycopg.conninfo.make_conninfo(server_dsn, dbname=database)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT cardnumber FROM cards WHERE cardnumber = ANY(%s)", (numbers,))
            found = {r[0] for r in await cur.fetchall()}
        lost |= set(numbers) - found
    return lost


class BackgroundLoad:
    """GETs of one card per tenant, round-robin over every tenant, against every live process at once
    (``--connections`` split between them), in chunks of ``chunk`` seconds until stopped."""

    def __init__(
        self, args: argparse.Namespace, home: Path, processes: Callable[[], Sequence[Server]], requests: Sequence[str]
    ) -> None:
        self._args, self._home, self._processes, self._requests = args, home, processes, list(requests)
        self.results: list[LoadResult] = []
        self.lost_chunks = 0
        self.elapsed = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def once(self, seconds: float) -> list[LoadResult]:
        """One run of ``seconds`` against every live process at once (results per process)."""
        servers = live(self._processes())
        split = argparse.Namespace(
            **{**vars(self._args), "connections": max(1, self._args.connections // len(servers))}
        )
        runs = await asyncio.gather(
            *(run_load(split, self._home, s, self._requests, seconds, "round-robin") for s in servers),
            return_exceptions=True,
        )
        results = [r for r in runs if isinstance(r, LoadResult)]
        self.lost_chunks += len(runs) - len(results)  # a process killed under it: its CPU cannot be read
        return results

    @contextlib.asynccontextmanager
    async def running(self, chunk: float = 2.0) -> AsyncIterator[None]:
        """The load runs while the block does (the chunk under way is finished when it ends)."""
        self._stop.clear()

        async def loop() -> None:
            while not self._stop.is_set():
                self.results += await self.once(chunk)

        started = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(loop())
        try:
            yield
        finally:
            self._stop.set()
            await self._task
            self.elapsed += time.monotonic() - started

    def summary(self) -> dict[str, float]:
        """Everything the load did while ``running``: requests per second over the whole time, the median
        p50 and the worst p99 of its chunks, errors."""
        results = self.results
        return {
            "rps": sum(r.requests for r in results) / self.elapsed if self.elapsed else 0.0,
            "p50_ms": pct([r.p50_ms for r in results], 0.5) if results else 0.0,
            "p99_ms": max((r.p99_ms for r in results), default=0.0),
            "errors": sum(r.error_count for r in results),
            "requests": sum(r.requests for r in results),
        }


def combined(results: Sequence[LoadResult]) -> dict[str, float]:
    """Several processes' simultaneous runs as one: requests per second summed, p50 the
    median of theirs, p99 the worst, errors summed."""
    if not results:
        return {"rps": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "errors": 0, "requests": 0}
    return {
        "rps": sum(r.rps for r in results),
        "p50_ms": pct([r.p50_ms for r in results], 0.5),
        "p99_ms": max(r.p99_ms for r in results),
        "errors": sum(r.error_count for r in results),
        "requests": sum(r.requests for r in results),
    }
