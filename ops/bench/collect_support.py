"""The parts of the collection benchmark (``collect.py``): its tenants, the service processes it starts and
scrapes, and the raw catalog scan the collector is measured against."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from harness import HOST, die_with_parent, free_port, machine_busy, pct, tail  # noqa: E402

from controlplane import db  # noqa: E402
from controlplane.platform import Platform  # noqa: E402
from controlplane.provisioning.service import TenantService  # noqa: E402
from controlplane.usage.catalog import COUNTERS, FILES, OWN_SIZE, SERVER, SIZES, TABLES  # noqa: E402
from controlplane.usage.models import CollectionStats  # noqa: E402
from controlplane.usage.service import UsageService  # noqa: E402

#: How much each grown tenant grows (card notes, incompressible text).
GROWTH_BYTES = 2_000_000
GROWTH_ROWS = 20
#: The service's tenant health interval: its first round comes this long after start, the next only
#: after the collection and the scrapes that follow it.
HEALTH_INTERVAL_SECONDS = 30.0
HEALTH_MARK = b"cardvault_tenant_health_last_check_timestamp_seconds "


# ------------------------------------------------------------------------------------------ helpers


@dataclasses.dataclass
class Tenant:
    slug: str
    tenant_id: uuid.UUID
    database_name: str


class MachineCpu:
    """Busy share of all CPUs (everything on the machine) between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self._before = machine_busy()
        self.percent = 0.0

    def stop(self) -> float:
        after = machine_busy()
        self.percent = (after[0] - self._before[0]) / max(1, after[1] - self._before[1]) * 100
        return self.percent


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


@dataclasses.dataclass
class Service:
    """One ``cardvault serve`` process of this run."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"


def start_service(env: dict[str, str], home: Path, name: str) -> Service:
    cardvault = Path(sys.executable).parent / "cardvault"
    if not cardvault.exists():
        raise SystemExit(f"{cardvault} not found: run this with the project's .venv/bin/python")
    port = free_port()
    log = home / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(cardvault), "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            cwd=ROOT,
        )
    service = Service(proc, port, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited ({proc.returncode}):\n{tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(service.url("/health/ready"), timeout=2).status_code == 200:
                return service
        time.sleep(0.2)
    stop_service(service)
    raise RuntimeError(f"service not ready after 120 s:\n{tail(log)}")


def stop_service(service: Service) -> None:
    if service.proc.poll() is None:
        service.proc.send_signal(signal.SIGTERM)
        try:
            service.proc.wait(15)
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait(5)


# ------------------------------------------------------------------------------------ provisioning


async def provision(args: argparse.Namespace, platform: Platform, run_id: str) -> list[Tenant]:
    service = TenantService(platform)
    gate = asyncio.Semaphore(args.provision_concurrency)
    done = 0

    async def one(i: int) -> Tenant:
        nonlocal done
        slug = f"cb{run_id}-{i}"
        async with gate:
            tenant = await service.create(name=f"Collect bench {i}", slug=slug, tier="professional")
        done += 1
        if done % 100 == 0:
            print(f"  ... {done}/{args.tenants} tenants provisioned", file=sys.stderr)
        return Tenant(slug, tenant.id, tenant.database_name)

    first = await one(0)  # builds the template; the rest may clone concurrently
    rest = await asyncio.gather(*(one(i) for i in range(1, args.tenants)))
    return [first, *rest]


# ------------------------------------------------------------------------------------ raw baseline


class RawBaseline:
    """The collector's queries without the collector: per-server read once, then every tenant database."""

    def __init__(self, server_conn: db.AsyncConn, scan_infos: Sequence[str], names: Sequence[str], concurrency: int):
        self.server_conn = server_conn
        self.scan_infos = list(scan_infos)
        self.names = list(names)
        self.concurrency = concurrency

    async def run(self) -> float:
        started = time.perf_counter()
        cur = await self.server_conn.execute(SIZES, (self.names,))
        sizes = await cur.fetchall()
        cur = await self.server_conn.execute(SERVER)
        await cur.fetchone()
        if len(sizes) != len(self.names):
            raise RuntimeError(f"raw: {len(sizes)} database sizes for {len(self.names)} tenants")
        gate = asyncio.Semaphore(self.concurrency)

        async def scan(info: str) -> None:
            async with gate:
                conn = await psycopg.AsyncConnection.connect(info, autocommit=True, row_factory=dict_row)
                try:
                    for query in (OWN_SIZE, TABLES, COUNTERS, FILES):
                        cur = await conn.execute(query)
                        await cur.fetchall()
                finally:
                    await conn.close()

        await asyncio.gather(*(scan(info) for info in self.scan_infos))
        return time.perf_counter() - started


async def timed_collect(usage: UsageService, *, full: bool) -> tuple[float, CollectionStats]:
    started = time.perf_counter()
    stats = await usage.collect(full=full)
    seconds = time.perf_counter() - started
    if stats.failed or stats.failed_servers:
        raise RuntimeError(f"collection failed for {stats.failed} tenant(s): {stats.failed_tenants[:5]}")
    return seconds, stats


async def grow(server_dsn: str, tenant: Tenant) -> None:
    """~2 MB of incompressible card notes into the tenant's database, as the superuser."""
    chunk = GROWTH_BYTES // GROWTH_ROWS
    rows = [(f"GROW-{i}", base64.b64encode(os.urandom(chunk * 3 // 4)).decode()) for i in range(GROWTH_ROWS)]
    dsn = db.with_database(server_dsn, tenant.database_name)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        await cur.executemany("INSERT INTO cards (cardnumber, year, notes) VALUES (%s, 1990, %s)", rows)


# ----------------------------------------------------------------------------------------- scrapes


@dataclasses.dataclass
class Scrapes:
    label: str
    collect_seconds: float
    collect_stats: dict[str, Any]
    first_ms: float
    times_ms: list[float]
    body_bytes: int
    series: int
    machine_cpu: float

    @property
    def p50(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p99(self) -> float:
        return pct(self.times_ms, 0.99)


def scrape(service: Service, admin_token: str, metrics_token: str, count: int, label: str) -> Scrapes:
    """``POST /admin/usage/collect?full=true``, one first scrape, then ``count`` timed ones on one connection."""
    headers = {"Authorization": f"Bearer {metrics_token}"}
    with httpx.Client(base_url=service.url(""), timeout=600) as client:
        # First the leader's first tenant health round (every tenant's cardvault_tenant_up), so that the
        # scrapes below expose it too; the next round is due after them.
        deadline = time.monotonic() + HEALTH_INTERVAL_SECONDS * 3
        while HEALTH_MARK not in client.get("/metrics", headers=headers).content:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no tenant health round within {HEALTH_INTERVAL_SECONDS * 3:.0f} s")
            time.sleep(0.5)
        t0 = time.perf_counter()
        answer = client.post("/admin/usage/collect?full=true", headers={"Authorization": f"Bearer {admin_token}"})
        collect_seconds = time.perf_counter() - t0
        if answer.status_code != 200:
            raise RuntimeError(f"POST /admin/usage/collect -> {answer.status_code}: {answer.text[:300]}")
        stats = answer.json()
        t0 = time.perf_counter()
        first = client.get("/metrics", headers=headers)
        first_ms = (time.perf_counter() - t0) * 1000
        if first.status_code != 200:
            raise RuntimeError(f"GET /metrics -> {first.status_code}: {first.text[:300]}")
        body = first.content
        times: list[float] = []
        cpu = MachineCpu()
        for _ in range(count):
            t0 = time.perf_counter()
            response = client.get("/metrics", headers=headers)
            content = response.content
            times.append((time.perf_counter() - t0) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"GET /metrics -> {response.status_code}: {response.text[:300]}")
        cpu.stop()
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    return Scrapes(label, collect_seconds, stats, first_ms, times, len(content), series, cpu.percent)
