"""The database-server side of the scale benchmark (``scale.py``): what one PostgreSQL server gives per
tenant database, measured before and after creating many real tenant databases on it.

A ``Probe`` at a given number of databases on the server times raw clones of the tenant template
(``CREATE DATABASE ... TEMPLATE``, the strategy the service uses: ``provision.raw_clone``, each dropped at
once), connections to a tenant database as its own role (connect, ``SELECT 1``, close), reads the size of
the shared catalogs (``pg_database``, ``pg_authid``, ``pg_shdepend``...: they grow with every database and
role) and, when the data directory is readable (a private cluster), the bytes under ``base/``,
``global/`` and ``pg_wal/`` and the whole server's CPU while idle (postmaster and every backend,
autovacuum workers included; see ``cluster_cpu_seconds``).

``create_tenants`` provisions tenants through ``TenantService.create`` (registry, clone, role, grants,
quotas), timing each batch, then connects once to each new database as the tenant health round does, so
that every database is known to the statistics system (autovacuum visits only those).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg
from harness import pct
from provision import raw_clone, raw_drop


@dataclasses.dataclass
class Probe:
    databases: int
    clone_ms: list[float]
    connect_ms: list[float]
    shared_catalog_bytes: int
    base_bytes: int | None
    global_bytes: int | None
    wal_bytes: int | None
    idle_cpu_percent: float | None
    idle_seconds: float

    def line(self) -> str:
        disk = (
            f"; base/ {self.base_bytes / 2**20:.0f} MiB, global/ {self.global_bytes / 2**10:.0f} KiB, pg_wal/ "
            f"{self.wal_bytes / 2**20:.0f} MiB"
            if self.base_bytes is not None and self.global_bytes is not None and self.wal_bytes is not None
            else ""
        )
        cpu = (
            f"; idle server CPU {self.idle_cpu_percent:.1f}% of one core over {self.idle_seconds:.0f} s"
            if self.idle_cpu_percent is not None
            else ""
        )
        return (
            f"  {self.databases:>6,} databases: raw clone p50 {statistics.median(self.clone_ms):.1f} ms p95 "
            f"{pct(self.clone_ms, 0.95):.1f} ms; tenant connect p50 {statistics.median(self.connect_ms):.1f} ms; "
            f"shared catalogs {self.shared_catalog_bytes / 2**10:.0f} KiB{disk}{cpu}"
        )


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file dropped meanwhile
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def _proc_cpu(pid: int) -> tuple[int, float, float]:
    """(parent pid, own user+system seconds, reaped children's user+system seconds) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def cluster_cpu_seconds(postmaster: int) -> tuple[float, dict[int, float]]:
    """CPU of the postmaster with its reaped children, and of each live child. The difference of two readings
    is exact: a child that ends in between moves its whole time into the postmaster's reaped share, and
    subtracting what it had at the first reading leaves the time spent in between."""
    _ppid, own, reaped = _proc_cpu(postmaster)
    children: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid, cpu, _ = _proc_cpu(int(entry))
            except (OSError, IndexError, ValueError):
                continue
            if ppid == postmaster:
                children[int(entry)] = cpu
    return own + reaped, children


def idle_cpu_percent(postmaster: int, seconds: float) -> float:
    start, before = cluster_cpu_seconds(postmaster)
    began = time.monotonic()
    time.sleep(seconds)
    end, after = cluster_cpu_seconds(postmaster)
    wall = time.monotonic() - began
    used = (end - start) + sum(after.values()) - sum(before.values())
    return used / wall * 100


class Server:
    """The server under test: a superuser connection, the tenant template, and its files when readable."""

    def __init__(self, admin: psycopg.Connection[Any], template: str, strategy: str) -> None:
        self.admin = admin
        self.template = template
        self.strategy = strategy
        row = admin.execute(
            "SELECT current_setting('data_directory'), current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int, current_setting('autovacuum'), "
            "current_setting('autovacuum_naptime')"
        ).fetchone()
        assert row is not None
        data_dir, self.max_connections, self.reserved_connections, self.autovacuum, self.naptime = row
        self.data_dir: Path | None = Path(data_dir) if os.access(data_dir, os.R_OK | os.X_OK) else None
        self.postmaster: int | None = None
        if self.data_dir is not None:
            self.postmaster = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])

    def databases(self) -> int:
        row = self.admin.execute("SELECT count(*) FROM pg_database").fetchone()
        return int(row[0]) if row else 0

    def database_bytes(self, name: str) -> int:
        row = self.admin.execute("SELECT pg_database_size(%s)", (name,)).fetchone()
        return int(row[0]) if row else 0

    def database_files(self, name: str) -> int | None:
        if self.data_dir is None:
            return None
        row = self.admin.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return len(os.listdir(self.data_dir / "base" / str(row[0]))) if row else None

    def probe(self, run_id: str, tenant_dsn: str, *, clones: int, idle_seconds: float) -> Probe:
        self.admin.execute("CHECKPOINT")  # what the last batch of work left dirty is not the clones' to write
        clone_ms = []
        for i in range(-1, clones):  # -1: one untimed clone first (the template's pages read in again)
            name = f"cvscale_raw_{run_id}_{i + 1}"
            took = raw_clone(self.admin, name, self.template, self.strategy) * 1000
            raw_drop(self.admin, name)
            if i >= 0:
                clone_ms.append(took)
        connect_ms = []
        for _ in range(clones):
            t0 = time.perf_counter()
            with psycopg.connect(tenant_dsn) as conn:
                conn.execute("SELECT 1")
            connect_ms.append((time.perf_counter() - t0) * 1000)
        row = self.admin.execute("SELECT sum(pg_total_relation_size(oid)) FROM pg_class WHERE relisshared").fetchone()
        shared = int(row[0]) if row and row[0] is not None else 0
        idle = idle_cpu_percent(self.postmaster, idle_seconds) if self.postmaster and idle_seconds > 0 else None
        data = self.data_dir
        return Probe(
            databases=self.databases(),
            clone_ms=clone_ms,
            connect_ms=connect_ms,
            shared_catalog_bytes=shared,
            base_bytes=_tree_bytes(data / "base") if data else None,
            global_bytes=_tree_bytes(data / "global") if data else None,
            wal_bytes=_tree_bytes(data / "pg_wal") if data else None,
            idle_cpu_percent=idle,
            idle_seconds=idle_seconds,
        )


@dataclasses.dataclass
class Creation:
    count: int
    batch_seconds: list[float]
    connect_seconds: float
    database_names: list[str]
    #: WAL the server wrote while the tenants were created (``pg_current_wal_lsn`` before and after).
    wal_bytes: int

    @property
    def seconds(self) -> float:
        return sum(self.batch_seconds)


async def create_tenants(
    service: Any, server_dsn: str, run_id: str, count: int, *, batch: int, concurrency: int
) -> Creation:
    """``count`` tenants through ``service`` (a ``TenantService``), ``batch`` at a time, ``concurrency`` at once;
    then one connection to each new database (superuser, ``SELECT 1``)."""
    from controlplane import db

    gate = asyncio.Semaphore(concurrency)
    names: list[str] = []
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        start_lsn = row[0] if row else "0/0"

    async def one(i: int) -> str:
        async with gate:
            tenant = await service.create(name=f"Scale {i}", slug=f"srv{run_id}-{i}", tier="starter")
            return str(tenant.database_name)

    batches: list[float] = []
    for first in range(0, count, batch):
        t0 = time.perf_counter()
        names += await asyncio.gather(*(one(i) for i in range(first, min(count, first + batch))))
        batches.append(time.perf_counter() - t0)
        print(f"  ... {len(names):,}/{count:,} tenant databases ({batches[-1]:.1f} s for the last batch)", flush=True)
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (start_lsn,)).fetchone()
        wal = int(row[0]) if row else 0
    t0 = time.perf_counter()
    for name in names:
        with psycopg.connect(db.with_database(server_dsn, name), autocommit=True) as conn:
            conn.execute("SELECT 1")
    return Creation(count, batches, time.perf_counter() - t0, names, wal)
