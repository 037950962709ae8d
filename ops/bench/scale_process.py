"""The control-plane side of the scale benchmark (``scale.py``): one real ``cardvault serve`` process at a
given number of registered tenants, its memory and its ``/metrics``.

A fresh process per reading (what a restarted replica holds), in this order:

1. ready (``/health/ready``): RSS; the seconds from exec to ready (it loads the usage snapshot, the
   quota limits and the backups' standing of every registered tenant);
2. ``GET /metrics``: the first scrape (renders the per-tenant text), then ``scrapes`` timed ones: bytes,
   series, p50; then every page of ``GET /admin/tenants?limit=1000``; RSS again (*warm*);
3. one ``GET /t/{slug}/api/cards/1`` without a credential to each of ``sample`` registered tenants spread
   over the registry (401 after the tenant is resolved: one registry cache entry and one tenant's request
   series each, no pool); RSS (*sampled*);
4. one authenticated card read by each of the ``active`` real tenants (a pool and a connection each,
   kept open: ``route_load.verify_all``); RSS (*active*), and the open pools from ``GET /admin/pools``.

Steps 3 and 4 are skipped for the readings with per-table series off, which measure 1 and 2 only.
With ``tenant_series`` (``CARDVAULT_METRICS_TENANT_SERIES``) ``separate``, step 2 also scrapes
``GET /metrics/tenants`` once (bytes, series, time): ``/metrics`` then holds the aggregates only.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from harness import free_port, pct, server_env
from route_load import verify_all
from route_servers import Server, Tenant, rss_kib, start_server, stop_server, wait_ready

#: Seconds a process may take to load a large registry and answer ``/health/ready``.
READY_TIMEOUT = 600.0
#: Page size of the admin tenants list (its maximum).
LIST_PAGE = 1000


@dataclasses.dataclass
class ProcessReading:
    registered: int
    per_table: bool
    start_seconds: float
    rss_ready_kib: int
    rss_warm_kib: int
    metrics_first_ms: float
    metrics_ms: list[float]
    metrics_bytes: int
    metrics_series: int
    #: Series by metric family (histogram lines counted under their family's name).
    families: dict[str, int] = dataclasses.field(default_factory=dict)
    list_seconds: float = 0.0
    list_pages: int = 0
    sampled: int = 0
    rss_sampled_kib: int = 0
    sampled_statuses: dict[int, int] = dataclasses.field(default_factory=dict)
    cached_tenants: int = 0
    metrics_bytes_sampled: int = 0
    active: int = 0
    rss_active_kib: int = 0
    open_pools: int = 0
    peak_kib: int = 0
    tenant_series: str = "inline"
    #: ``GET /metrics/tenants`` with ``tenant_series`` ``separate``: bytes, series, ms of the first scrape.
    tenants_bytes: int = 0
    tenants_series: int = 0
    tenants_ms: float = 0.0

    @property
    def metrics_p50(self) -> float:
        return statistics.median(self.metrics_ms)

    @property
    def kib_per_cached(self) -> float:
        """RSS per tenant resolved once (registry cache entry, request series), no pool."""
        return (self.rss_sampled_kib - self.rss_warm_kib) / self.sampled if self.sampled else 0.0

    @property
    def kib_per_active(self) -> float:
        """RSS per active tenant (open pool and connection, cached credentials, principal)."""
        return (self.rss_active_kib - self.rss_sampled_kib) / self.active if self.active else 0.0

    def line(self) -> str:
        text = (
            f"  {self.registered:>7,} registered, per-table {'on ' if self.per_table else 'off'}: ready in "
            f"{self.start_seconds:.1f} s, RSS {self.rss_ready_kib / 1024:.1f} MiB ready, "
            f"{self.rss_warm_kib / 1024:.1f} MiB warm; /metrics {self.metrics_bytes / 1024:.0f} KiB, "
            f"{self.metrics_series:,} series, first {self.metrics_first_ms:.0f} ms, p50 {self.metrics_p50:.1f} ms "
            f"p95 {pct(self.metrics_ms, 0.95):.1f} ms"
        )
        if self.tenant_series != "inline":
            text += f" (tenant series {self.tenant_series})"
        if self.tenants_bytes:
            text += (
                f"; /metrics/tenants {self.tenants_bytes / 1024:.0f} KiB, {self.tenants_series:,} series, "
                f"{self.tenants_ms:.0f} ms"
            )
        if self.list_pages:
            text += f"; admin list {self.list_pages} pages in {self.list_seconds:.2f} s"
        if self.sampled:
            text += (
                f"\n{'':10}{self.sampled:,} tenants resolved (statuses {self.sampled_statuses}): RSS "
                f"{self.rss_sampled_kib / 1024:.1f} MiB ({self.kib_per_cached:.2f} KiB each; "
                f"{self.cached_tenants:,} tenants in the registry cache)"
            )
        if self.active:
            text += (
                f"; {self.active} active tenants ({self.open_pools} pools open): RSS "
                f"{self.rss_active_kib / 1024:.1f} MiB ({self.kib_per_active:.1f} KiB each); peak "
                f"{self.peak_kib / 1024:.1f} MiB"
            )
        return text


async def _scrape(client: httpx.AsyncClient, path: str = "/metrics") -> tuple[float, bytes]:
    t0 = time.perf_counter()
    response = await client.get(path)
    body = response.content
    elapsed = (time.perf_counter() - t0) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"GET {path} -> {response.status_code}: {response.text[:300]}")
    return elapsed, body


def _families(body: bytes) -> dict[str, int]:
    """Series per metric family of a Prometheus text body."""
    counts: dict[str, int] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            for suffix in ("_bucket", "_count", "_sum", "_created", "_total"):
                name = name.removesuffix(suffix)
            counts[name] = counts.get(name, 0) + 1
    return counts


async def _list_all(client: httpx.AsyncClient) -> tuple[float, int]:
    """Every page of the admin tenants list: (seconds, pages)."""
    t0 = time.perf_counter()
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": LIST_PAGE}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/admin/tenants", params=params)
        if response.status_code != 200:
            raise RuntimeError(f"GET /admin/tenants -> {response.status_code}: {response.text[:300]}")
        pages += 1
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return time.perf_counter() - t0, pages


async def measure(
    *,
    env: dict[str, str],
    home: Path,
    registered: int,
    per_table: bool,
    scrapes: int,
    sample_slugs: Sequence[str],
    active: Sequence[Tenant],
    tenant_series: str = "inline",
) -> ProcessReading:
    """One reading of a fresh ``cardvault serve`` (see the module's docstring)."""
    port = free_port()
    extra = {
        "CARDVAULT_METRICS_PER_TABLE": "1" if per_table else "0",
        "CARDVAULT_METRICS_TENANT_SERIES": tenant_series,
    }
    argv = [str(Path(sys.executable).parent / "cardvault"), "serve", "--port", str(port)]
    name = f"serve-{registered}-{'on' if per_table else 'off'}"
    started = time.perf_counter()
    server: Server = start_server(name, argv, server_env(env | extra), home, port)
    try:
        wait_ready(server, READY_TIMEOUT)
        start_seconds = time.perf_counter() - started
        pid = server.proc.pid
        rss_ready = rss_kib(pid)["VmRSS"]
        headers = {"Authorization": f"Bearer {env['CARDVAULT_ADMIN_TOKEN']}"}
        async with httpx.AsyncClient(base_url=server.url(""), headers=headers, timeout=600) as client:
            first_ms, body = await _scrape(client)
            times = [(await _scrape(client))[0] for _ in range(scrapes)]
            reading = ProcessReading(
                registered=registered,
                per_table=per_table,
                start_seconds=start_seconds,
                rss_ready_kib=rss_ready,
                rss_warm_kib=0,
                metrics_first_ms=first_ms,
                metrics_ms=times,
                metrics_bytes=len(body),
                metrics_series=sum(_families(body).values()),
                families=_families(body),
                tenant_series=tenant_series,
            )
            if tenant_series == "separate":
                reading.tenants_ms, tenants_body = await _scrape(client, "/metrics/tenants")
                reading.tenants_bytes = len(tenants_body)
                reading.tenants_series = sum(_families(tenants_body).values())
            reading.list_seconds, reading.list_pages = await _list_all(client)
            reading.rss_warm_kib = rss_kib(pid)["VmRSS"]
            if not per_table:
                return reading
            statuses: dict[int, int] = {}
            async with httpx.AsyncClient(base_url=server.url(""), timeout=60) as anonymous:
                for slug in sample_slugs:
                    status = (await anonymous.get(f"/t/{slug}/api/cards/1")).status_code
                    statuses[status] = statuses.get(status, 0) + 1
            reading.sampled, reading.sampled_statuses = len(sample_slugs), statuses
            reading.metrics_bytes_sampled = len((await _scrape(client))[1])
            reading.rss_sampled_kib = rss_kib(pid)["VmRSS"]
            reading.cached_tenants = int((await client.get("/admin/pools")).json()["registry_cache"]["tenants"])
            if active:
                await verify_all(server, active)
                reading.active = len(active)
                reading.rss_active_kib = rss_kib(pid)["VmRSS"]
                pools = (await client.get("/admin/pools")).json()
                reading.open_pools = int(pools["pools"]["open_pools"])
            reading.peak_kib = rss_kib(pid)["VmHWM"]
            return reading
    finally:
        stop_server(server)
