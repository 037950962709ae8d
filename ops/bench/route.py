"""Routing benchmark: the tenant API through the control plane against a bare handler, in one run.

    .venv/bin/python ops/bench/route.py [--tenants 1000] [--duration 10] [--connections 64] [--dsn DSN]

Provisions N tenants through the service (one card and a first tenant_admin each), starts the real
service (``cardvault serve``, pool capacity 100, connection budget 200, 2 connections per tenant) and a
bare Litestar app (one GET handler running the same SQL as the cards GET handler on a plain
``psycopg_pool.AsyncConnectionPool`` to the hot tenant's database as the tenant's role), each as its own
uvicorn process with the same settings, logs every tenant's admin in through the service
(``POST /t/{slug}/auth/token``), then drives both with the same HTTP load generator (``wrk``; an asyncio
client if wrk is missing) from the same machine. Every request carries the access token of the tenant
it names (``Authorization: Bearer ...``; the baseline gets the same bytes and ignores them), so the
routed numbers include authentication: the JWT check, the per-tenant API call meter and the session
lookup on the tenant's connection.

(a) GET one card of one hot tenant, bare baseline and routed alternating (``--rounds`` each): median
    throughput, p50 and p99 of each and the ratio routed/baseline (floor: >= 0.75);
(b) GET one card per tenant, round-robin over all N tenants: throughput, p50/p99, errors, tenant pool
    hit ratio, peak tenant connections on the server (``pg_stat_activity`` polled every 50 ms) against
    the budget (floors: no errors, never above the budget);
(c) RSS of the service process with N tenants registered and the pools (b) left open.

The service is ``.venv/bin/cardvault serve`` itself; pool hits and misses come from its
``GET /admin/pools``. Exits 1 if a floor is violated. Two settings differ from a production service,
neither on the measured path: argon2 runs at test strength (only the logins before the measurements
hash), and the benchmarked tenants' ``api_calls_per_hour`` quota is raised far beyond what a run makes
(the meter still counts every call; the tier's limit would only turn the hot tenant's load into 429s).
Access tokens live for a day (``CARDVAULT_ACCESS_TOKEN_TTL``), so none expires during a long run.

Without ``--dsn`` a private PostgreSQL cluster with default (durable) settings is started under a
temporary directory and destroyed at the end; with ``--dsn`` (a superuser DSN) only databases and roles
this run creates are touched, and all of them are dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

SELF = Path(__file__).resolve()
ROOT = SELF.parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    HOST,
    die_with_parent,
    drop_leftovers,
    free_port,
    machine_busy,
    run,
    server_env,
    tail,
)

#: ``application_name`` of the baseline's connections (the service's are ``cardvault-tenant``).
BASELINE_APP_NAME = "cvbench-baseline"
#: Marker of the one result line every load generator prints.
RESULT_MARK = "CVBENCH "
#: Seconds between two samples of ``pg_stat_activity``.
POLL_INTERVAL = 0.05
#: Connections the bench needs besides the tenant budget: control pool, listener, baseline, poller, admin.
OVERHEAD_CONNECTIONS = 30
#: Password of each benchmarked tenant's first tenant_admin (``admin@<slug>.bench``).
ADMIN_PASSWORD = "route-bench-password"
#: argon2id cost of the run (service and provisioning): only the logins before the measurements hash.
ARGON2_MEMORY_KIB = 64
ARGON2_TIME_COST = 1
#: Lifetime of the access tokens the run logs in for: longer than any run.
ACCESS_TOKEN_TTL = "1d"
#: ``api_calls_per_hour`` of the benchmarked tenants: never reached (the tier's would be within seconds).
API_CALLS_PER_HOUR = 10**12

# Runs inside wrk: one pre-formatted GET per line "<path> <access token>" of the file args[1] (the token
# of the tenant the path names, sent as "Authorization: Bearer <token>"; a line without one is sent without
# it), taken round-robin (each thread starting at its own offset) or at random; prints one JSON result
# line when done.
WRK_SCRIPT = r"""
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

local reqs, n, i, random = {}, 0, 0, false
function init(args)
  for line in io.lines(args[1]) do
    local path, token = line:match("^(%S+)%s*(%S*)")
    if path then
      local headers = nil
      if token ~= "" then
        headers = {}
        for name, value in pairs(wrk.headers) do headers[name] = value end
        headers["Authorization"] = "Bearer " .. token
      end
      n = n + 1
      reqs[n] = wrk.format("GET", path, headers)
    end
  end
  local count = tonumber(args[2])
  random = args[3] == "random"
  i = math.floor((tid or 0) * n / count)
  math.randomseed(os.time() + (tid or 0))
end

function request()
  if random then
    return reqs[math.random(n)]
  end
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'CVBENCH {"requests": %d, "seconds": %.6f, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


# ---------------------------------------------------------------------------------------- results


@dataclasses.dataclass
class LoadResult:
    """One load-generator run against one server."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    #: CPU the server process used during the run, in percent of one core.
    server_cpu: float = 0.0
    #: CPU of the whole machine (servers, PostgreSQL, load generator, anything else) busy, in percent.
    machine_cpu: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU time per request, in microseconds."""
        return self.server_cpu / 100 * self.seconds / self.requests * 1e6 if self.requests else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def line(self, label: str) -> str:
        errors = ", ".join(f"{k} {v}" for k, v in self.errors.items() if v) or "none"
        return (
            f"  {label:<22} {self.rps:9.0f} req/s  p50 {self.p50_ms:7.2f} ms  p99 {self.p99_ms:7.2f} ms"
            f"  server CPU {self.server_cpu:3.0f}%, machine {self.machine_cpu:3.0f}%  ({self.requests} requests, "
            f"errors: {errors})"
        )


@dataclasses.dataclass
class Server:
    """A server process of this run."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"


@dataclasses.dataclass
class Tenant:
    slug: str
    tenant_id: uuid.UUID
    dsn: str
    card_id: int
    #: Access token of the tenant's admin (set by ``login_all`` once the service runs).
    token: str = ""

    @property
    def path(self) -> str:
        return f"/t/{self.slug}/api/cards/{self.card_id}"

    @property
    def email(self) -> str:
        return f"admin@{self.slug}.bench"

    @property
    def request(self) -> str:
        """The load generators' line for this tenant: its card's path and the token to send with it."""
        return f"{self.path} {self.token}" if self.token else self.path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -------------------------------------------------------------------------------- server processes


def start_server(name: str, argv: Sequence[str], env: dict[str, str], home: Path, port: int) -> Server:
    log = home / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv), env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent, cwd=ROOT
        )
    return Server(name, proc, port, log)


def wait_ready(server: Server, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} server exited ({server.proc.returncode}):\n{tail(server.log)}")
        try:
            with urllib.request.urlopen(server.url("/health/ready"), timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} server not ready after {timeout:.0f} s:\n{tail(server.log)}")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)  # uvicorn: graceful shutdown, lifespan closes the pools
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(5)


class RoutedStats:
    """``GET /admin/pools`` of the service: tenant pool counters and gauges, registry cache."""

    def __init__(self, server: Server, admin_token: str) -> None:
        self.server = server
        self.admin_token = admin_token
        self.available = True

    def read(self) -> dict[str, Any] | None:
        if not self.available:
            return None
        request = urllib.request.Request(
            self.server.url("/admin/pools"), headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                stats: dict[str, Any] = json.loads(response.read())
                return stats
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # a service without the endpoint
                self.available = False
                return None
            raise


# ----------------------------------------------------------------------------- load and measuring


class ConnectionPeak:
    """Samples ``pg_stat_activity`` every 50 ms: tenant connections of the service and all client backends."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.peak_tenant = 0
        self.peak_total = 0
        self.samples = 0

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[ConnectionPeak]:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(self.admin_dsn, autocommit=True)
        stop = asyncio.Event()

        async def loop() -> None:
            while not stop.is_set():
                cur = await conn.execute(
                    "SELECT count(*) FILTER (WHERE application_name = 'cardvault-tenant'), count(*)"
                    " FROM pg_stat_activity WHERE backend_type = 'client backend'"
                )
                row = await cur.fetchone()
                assert row is not None
                self.peak_tenant = max(self.peak_tenant, row[0])
                self.peak_total = max(self.peak_total, row[1])
                self.samples += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_INTERVAL)

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            stop.set()
            await task
            await conn.close()


async def run_load(
    args: argparse.Namespace, home: Path, server: Server, requests: Sequence[str], duration: float, pattern: str
) -> LoadResult:
    """Drive ``server`` with GETs of ``requests`` (``Tenant.request`` lines: path and token) for ``duration``
    seconds; parse the result line."""
    paths_file = home / f"paths-{uuid.uuid4().hex[:6]}.txt"
    paths_file.write_text("\n".join(requests) + "\n")
    seconds = max(1, round(duration))
    if args.wrk:
        script = home / "round_robin.lua"
        if not script.exists():
            script.write_text(WRK_SCRIPT)
        argv = [
            args.wrk,
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            server.url("/"),
            "--",
            str(paths_file),
            str(args.threads),
            pattern,
        ]
    else:
        argv = [
            sys.executable,
            str(SELF),
            "_load",
            str(server.port),
            str(paths_file),
            str(seconds),
            str(args.connections),
            pattern,
        ]
    cpu_before, busy_before, t0 = cpu_seconds(server.proc.pid), machine_busy(), time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await proc.communicate()
    except BaseException:  # interrupted: the load generator must not outlive the run
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    cpu = (cpu_seconds(server.proc.pid) - cpu_before) / (time.perf_counter() - t0) * 100
    busy_after = machine_busy()
    machine = (busy_after[0] - busy_before[0]) / max(1, busy_after[1] - busy_before[1]) * 100
    paths_file.unlink()
    for text in out.decode(errors="replace").splitlines():
        if text.startswith(RESULT_MARK):
            return LoadResult(**json.loads(text[len(RESULT_MARK) :]), server_cpu=cpu, machine_cpu=machine)
    raise RuntimeError(f"load generator failed ({proc.returncode}): {out.decode()} {err.decode()}")


async def verify_all(server: Server, tenants: Sequence[Tenant], concurrency: int = 8) -> None:
    """GET every tenant's card once with its token (also warms the registry cache); every answer must be 200."""
    queue = list(tenants)
    failures: list[str] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            while queue and len(failures) < 5:
                tenant = queue.pop()
                status, body = await _http_get(reader, writer, tenant.path, tenant.headers)
                if status != 200:
                    failures.append(f"{tenant.path} -> {status} {body[:200]!r}")
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if failures:
        raise RuntimeError(f"{server.name}: tenant requests failed: {failures}")


async def login_all(server: Server, tenants: Sequence[Tenant], concurrency: int = 8) -> None:
    """Log every tenant's admin in (``POST /t/{slug}/auth/token``) and keep its access token."""
    queue = list(tenants)
    failures: list[str] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            while queue and len(failures) < 5:
                tenant = queue.pop()
                body = json.dumps({"email": tenant.email, "password": ADMIN_PASSWORD}).encode()
                status, answer = await _http_request(
                    reader, writer, "POST", f"/t/{tenant.slug}/auth/token", {"Content-Type": "application/json"}, body
                )
                if status != 200:
                    failures.append(f"{tenant.slug} -> {status} {answer[:200]!r}")
                    continue
                tenant.token = json.loads(answer)["access_token"]
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if failures:
        raise RuntimeError(f"{server.name}: tenant logins failed: {failures}")


async def _http_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One HTTP/1.1 keep-alive GET on an open connection: (status, body)."""
    return await _http_request(reader, writer, "GET", path, headers)


async def _http_request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, bytes]:
    """One HTTP/1.1 keep-alive request on an open connection: (status, body)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for header in head.split(b"\r\n")[1:]:
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


def python_load(port: int, paths_file: str, seconds: float, connections: int, pattern: str) -> None:
    """Fallback load generator (``_load``): keep-alive asyncio connections; prints the result line."""
    import random

    # Lines "<path> <token>" (see Tenant.request): the path and the headers to send with it.
    requests: list[tuple[str, dict[str, str]]] = []
    for line in Path(paths_file).read_text().splitlines():
        path, _, token = line.strip().partition(" ")
        if path:
            requests.append((path, {"Authorization": f"Bearer {token.strip()}"} if token.strip() else {}))
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}

    async def worker(offset: int, deadline: float) -> None:
        index = offset
        while time.perf_counter() < deadline:
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                errors["connect"] += 1
                await asyncio.sleep(0.01)
                continue
            try:
                while (now := time.perf_counter()) < deadline:
                    if pattern == "random":
                        path, headers = random.choice(requests)
                    else:
                        path, headers = requests[index % len(requests)]
                        index += 1
                    status, _ = await asyncio.wait_for(_http_get(reader, writer, path, headers), 10)
                    latencies.append(time.perf_counter() - now)
                    if status > 399:
                        errors["status"] += 1
            except TimeoutError:
                errors["timeout"] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors["read"] += 1
            finally:
                writer.close()

    async def main() -> float:
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(worker(i * len(requests) // connections, deadline) for i in range(connections)))
        return time.perf_counter() - started

    elapsed = asyncio.run(main())
    ordered = sorted(latencies) or [0.0]

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    result = {
        "requests": len(latencies),
        "seconds": elapsed,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": ordered[-1] * 1000,
        "errors": errors,
    }
    print(RESULT_MARK + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------ in-child entry points


def serve_baseline(port: int) -> None:
    """The bare baseline: one Litestar GET handler, the cards GET query, a plain AsyncConnectionPool."""
    import logging

    import uvicorn
    from litestar import Litestar, get
    from litestar.exceptions import NotFoundException
    from psycopg import conninfo, sql
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    from controlplane.cards.repository import CARDS

    # Exactly what controlplane.cards.repository.get(conn, CARDS, id) executes.
    query = sql.SQL("{} WHERE r.id = %s").format(
        sql.SQL("SELECT {} FROM {} r {}").format(CARDS.projection, sql.Identifier(CARDS.name), CARDS.joins)
    )
    log_level = os.environ.get("CVBENCH_LOG_LEVEL", "WARNING")
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        conninfo.make_conninfo(os.environ["CVBENCH_BASELINE_DSN"], application_name=BASELINE_APP_NAME),
        kwargs={"row_factory": dict_row, "autocommit": False},
        min_size=0,
        max_size=int(os.environ["CVBENCH_POOL_MAX_SIZE"]),
        open=False,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await pool.open()
        try:
            yield
        finally:
            await pool.close()

    # Same path shape as the routed API (the slug is parsed, not used).
    @get("/t/{tenant_slug:str}/api/cards/{card_id:int}", sync_to_thread=False)
    async def get_card(tenant_slug: str, card_id: int) -> dict[str, Any]:
        async with pool.connection() as conn:
            cur = await conn.execute(query, (card_id,))
            row: dict[str, Any] | None = await cur.fetchone()
        if row is None:
            raise NotFoundException(f"no card {card_id}")
        return row

    @get("/health/ready", sync_to_thread=False)
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    app = Litestar(route_handlers=[get_card, ready], lifespan=[lifespan])
    uvicorn.run(app, host=HOST, port=port, log_level=log_level.lower())


# ----------------------------------------------------------------------------------------- the run


async def provision(args: argparse.Namespace, settings: Any, run_id: str) -> tuple[list[Tenant], float]:
    """N tenants through TenantService, each with a first tenant_admin (``admin@<slug>.bench``, as the admin
    API's ``admin_email``/``admin_password`` make it) and one card (inserted through CardVault as the
    tenant's role); the API call quota raised out of the way (see the module's docstring)."""
    import psycopg
    from psycopg.rows import dict_row

    from controlplane.auth.passwords import Passwords, normalize_email, validate_password
    from controlplane.cards.models import CardCreate
    from controlplane.cards.service import CARDS, CardVault, fixed_limits
    from controlplane.platform import Platform
    from controlplane.provisioning.service import FirstAdmin, TenantService
    from controlplane.registry import repository as registry
    from controlplane.registry.models import QuotaType
    from controlplane.routing.cache import TenantCache
    from controlplane.storage.local import LocalStorage

    storage = LocalStorage(settings.data_dir / "storage")
    # One hash for every tenant's admin (each tenant has its own users table; the salt being shared is harmless).
    password_hash = await Passwords(settings.auth).hash(validate_password(ADMIN_PASSWORD))
    async with Platform.open(settings, migrate=False) as platform:
        service = TenantService(platform)
        cache = TenantCache(platform)  # not started: every credentials() reads the registry
        gate = asyncio.Semaphore(args.provision_concurrency)
        done = 0

        async def one(i: int) -> Tenant:
            nonlocal done
            slug = f"rb{run_id}-{i}"
            admin = FirstAdmin(email=normalize_email(f"admin@{slug}.bench"), password_hash=password_hash)
            async with gate:
                tenant = await service.create(name=f"Route bench {i}", slug=slug, tier="professional", admin=admin)
                async with platform.control.connection() as conn, conn.transaction():
                    await registry.set_quotas(conn, tenant.id, {QuotaType.API_CALLS_PER_HOUR: API_CALLS_PER_HOUR})
                dsn = await cache.credentials(tenant.id)
                async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
                    vault = CardVault(
                        conn, tenant.id, storage=storage, quota_limits=fixed_limits({}), max_image_bytes=1
                    )
                    card = await vault.create(CARDS, CardCreate(cardnumber=f"RB-{i}", year=1989, notes="bench"))
            done += 1
            if done % 100 == 0:
                print(f"  ... {done}/{args.tenants} tenants provisioned", file=sys.stderr)
            return Tenant(slug, tenant.id, dsn, card.id)

        started = time.perf_counter()
        first = await one(0)  # builds the template; the rest may clone concurrently
        rest = await asyncio.gather(*(one(i) for i in range(1, args.tenants)))
        return [first, *rest], time.perf_counter() - started


def median_result(results: Sequence[LoadResult]) -> dict[str, float]:
    return {
        "rps": statistics.median(r.rps for r in results),
        "p50_ms": statistics.median(r.p50_ms for r in results),
        "p99_ms": statistics.median(r.p99_ms for r in results),
        "errors": sum(r.error_count for r in results),
        "cpu_us": statistics.median(r.cpu_us_per_request for r in results),
    }


async def bench(args: argparse.Namespace, server_dsn: str, home: Path) -> int:
    import psycopg
    from psycopg import sql

    from controlplane import db
    from controlplane.platform import migrate_registry
    from controlplane.provisioning.catalog import TENANT_GROUP_ROLE
    from controlplane.settings import (
        AuthSettings,
        DatabaseSettings,
        ProvisioningSettings,
        SecuritySettings,
        Settings,
    )

    run_id = uuid.uuid4().hex[:8]
    control_db = f"cvroute_ctl_{run_id}"
    template = f"cvroute_tpl_{run_id}"
    secret_key = "route-bench-" + uuid.uuid4().hex + uuid.uuid4().hex
    admin_token = "route-bench-" + uuid.uuid4().hex
    data_dir = home / "data"
    data_dir.mkdir()
    servers: list[Server] = []
    group_role_existed = True  # until known otherwise: never drop a role this run did not create
    admin = psycopg.connect(server_dsn, autocommit=True)
    try:
        row = admin.execute(
            "SELECT current_setting('server_version'), current_setting('max_connections')::int, "
            "current_setting('fsync')"
        ).fetchone()
        assert row is not None
        version, max_connections, fsync = row
        if args.budget + OVERHEAD_CONNECTIONS > max_connections:
            raise SystemExit(
                f"connection budget {args.budget} + {OVERHEAD_CONNECTIONS} for the rest does not fit the "
                f"server's max_connections {max_connections}: lower --budget"
            )
        group_role_existed = bool(
            admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (TENANT_GROUP_ROLE,)).fetchone()
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(control_db)))
        control_dsn = db.with_database(server_dsn, control_db)
        settings = Settings(
            data_dir=data_dir,
            database=DatabaseSettings(url=control_dsn),
            provisioning=dataclasses.replace(ProvisioningSettings(), template_database=template, reconcile_interval=0),
            security=SecuritySettings(secret_key=secret_key, admin_token=admin_token),
            auth=AuthSettings(argon2_memory_kib=ARGON2_MEMORY_KIB, argon2_time_cost=ARGON2_TIME_COST),
        )
        if args.wrk:
            load_name = f"wrk ({args.wrk}, {args.threads} threads)"
        else:
            load_name = "asyncio client" + ("" if args.python_client else " (wrk not found)")
        print(
            f"server: PostgreSQL {version}, fsync={fsync}, max_connections={max_connections}; "
            f"{os.cpu_count()} CPUs; load: {load_name}, {args.connections} connections, {args.duration:.0f} s/run"
        )
        await migrate_registry(settings)
        tenants, provision_seconds = await provision(args, settings, run_id)
        print(
            f"provisioned {len(tenants)} tenants with an admin and one card each in {provision_seconds:.1f} s "
            f"({len(tenants) / provision_seconds:.1f}/s, concurrency {args.provision_concurrency})"
        )
        hot = tenants[0]

        # -- the two servers
        routed_port, baseline_port = free_port(), free_port()
        routed_env = server_env(
            {
                "CARDVAULT_DATABASE_URL": control_dsn,
                "CARDVAULT_SECRET_KEY": secret_key,
                "CARDVAULT_ADMIN_TOKEN": admin_token,
                "CARDVAULT_TEMPLATE_DATABASE": template,
                "CARDVAULT_DATA_DIR": str(data_dir),
                "CARDVAULT_HOST": HOST,
                "CARDVAULT_POOL_CAPACITY": str(args.capacity),
                "CARDVAULT_CONNECTION_BUDGET": str(args.budget),
                "CARDVAULT_POOL_MAX_SIZE": str(args.pool_max),
                "CARDVAULT_RECONCILE_INTERVAL": "0",
                "CARDVAULT_LOG_LEVEL": "WARNING",
                "CARDVAULT_ARGON2_MEMORY_KIB": str(ARGON2_MEMORY_KIB),
                "CARDVAULT_ARGON2_TIME_COST": str(ARGON2_TIME_COST),
                "CARDVAULT_ACCESS_TOKEN_TTL": ACCESS_TOKEN_TTL,
            }
        )
        cardvault = Path(sys.executable).parent / "cardvault"
        if not cardvault.exists():
            raise SystemExit(f"{cardvault} not found: run this with the project's .venv/bin/python")
        routed_argv = [str(cardvault), "serve", "--port", str(routed_port)]
        routed = start_server("routed", routed_argv, routed_env, home, routed_port)
        servers.append(routed)
        baseline_env = server_env(
            {
                "CVBENCH_BASELINE_DSN": hot.dsn,
                "CVBENCH_POOL_MAX_SIZE": str(args.pool_max),
                "CVBENCH_LOG_LEVEL": "WARNING",
            }
        )
        baseline_argv = [sys.executable, str(SELF), "_baseline", str(baseline_port)]
        baseline = start_server("baseline", baseline_argv, baseline_env, home, baseline_port)
        servers.append(baseline)
        wait_ready(routed)
        wait_ready(baseline)
        stats = RoutedStats(routed, admin_token)
        rss_start = rss_kib(routed.proc.pid)

        # Every tenant's admin logs in; every tenant answers (and the registry cache is warm) before anything
        # is measured.
        t0 = time.perf_counter()
        await login_all(routed, tenants)
        print(f"logged in: every tenant's admin through the service ({time.perf_counter() - t0:.1f} s)")
        await verify_all(baseline, [hot])
        t0 = time.perf_counter()
        await verify_all(routed, tenants)
        print(f"checked: every tenant's card answers 200 through the service ({time.perf_counter() - t0:.1f} s)")
        rss_touched = rss_kib(routed.proc.pid)

        # -- (a) one hot tenant: baseline and routed alternating
        print(f"(a) GET one card of one hot tenant, {args.rounds} rounds alternating, after a 2 s warm-up each:")
        for server in (baseline, routed):
            await run_load(args, home, server, [hot.request], 2, "round-robin")
        base_runs: list[LoadResult] = []
        routed_runs: list[LoadResult] = []
        peak_a = ConnectionPeak(server_dsn)
        for i in range(args.rounds):
            base_runs.append(await run_load(args, home, baseline, [hot.request], args.duration, "round-robin"))
            print(base_runs[-1].line(f"round {i + 1} baseline"))
            async with peak_a.sampling():
                routed_runs.append(await run_load(args, home, routed, [hot.request], args.duration, "round-robin"))
            print(routed_runs[-1].line(f"round {i + 1} routed"))
        base_m, routed_m = median_result(base_runs), median_result(routed_runs)
        ratio = routed_m["rps"] / base_m["rps"] if base_m["rps"] else 0.0
        per_round = ", ".join(f"{r.rps / b.rps:.2f}" for b, r in zip(base_runs, routed_runs, strict=True) if b.rps)
        print(
            f"  median: baseline {base_m['rps']:.0f} req/s (p50 {base_m['p50_ms']:.2f} ms, p99 "
            f"{base_m['p99_ms']:.2f} ms); routed {routed_m['rps']:.0f} req/s (p50 {routed_m['p50_ms']:.2f} ms, "
            f"p99 {routed_m['p99_ms']:.2f} ms)"
        )
        print(f"  ratio routed/baseline throughput = {ratio:.2f}x (per round: {per_round}); floor 0.75x")
        print(
            f"  server CPU per request: baseline {base_m['cpu_us']:.0f} us, routed {routed_m['cpu_us']:.0f} us "
            f"({routed_m['cpu_us'] / base_m['cpu_us'] if base_m['cpu_us'] else 0:.2f}x)"
        )
        rss_after_a = rss_kib(routed.proc.pid)

        # -- (b) every tenant round-robin through capacity-bounded pools
        requests = [t.request for t in tenants]
        print(
            f"(b) GET one card per tenant, {args.pattern} over {len(tenants)} tenants, pool capacity "
            f"{args.capacity}, budget {args.budget} connections, {args.pool_max} per tenant:"
        )
        before = stats.read()
        peak_b = ConnectionPeak(server_dsn)
        async with peak_b.sampling():
            spread = await run_load(args, home, routed, requests, args.duration, args.pattern)
        after = stats.read()
        print(spread.line("routed, all tenants"))
        hit_ratio: float | None = None
        pools_after: dict[str, Any] | None = after["pools"] if after else None
        if before and after:
            hits = after["pools"]["hits"] - before["pools"]["hits"]
            misses = after["pools"]["misses"] - before["pools"]["misses"]
            evictions = after["pools"]["evictions"] - before["pools"]["evictions"]
            hit_ratio = hits / (hits + misses) if hits + misses else 0.0
            print(
                f"  pool hits {hits}, misses {misses} (hit ratio {hit_ratio:.1%}), evictions {evictions}; "
                f"open pools after: {after['pools']['open_pools']}, connections open "
                f"{after['pools']['connections_open']}"
            )
            if args.pattern == "round-robin" and len(tenants) > args.capacity:
                print(
                    "  (a cycle over more tenants than the capacity makes an LRU miss on every request once warm: "
                    "the hits are pools still open from before the run)"
                )
        else:
            print("  pool hit ratio: not measured (the service has no GET /admin/pools)")
        print(
            f"  peak tenant connections on the server: {peak_b.peak_tenant} (budget {args.budget}; "
            f"{peak_b.samples} samples every {POLL_INTERVAL * 1000:.0f} ms); peak client backends "
            f"{peak_b.peak_total} of max_connections {max_connections}"
        )

        # -- (c) memory
        rss_end = rss_kib(routed.proc.pid)
        rss_base = rss_kib(baseline.proc.pid)
        open_pools = pools_after["open_pools"] if pools_after else "n/a (not measured)"
        print(
            f"(c) service RSS: {rss_start['VmRSS'] / 1024:.1f} MiB when ready, {rss_touched['VmRSS'] / 1024:.1f} MiB "
            f"after one request per tenant, {rss_after_a['VmRSS'] / 1024:.1f} MiB after (a), "
            f"{rss_end['VmRSS'] / 1024:.1f} MiB after (b) with {len(tenants)} tenants registered and "
            f"{open_pools} pools open (peak {rss_end['VmHWM'] / 1024:.1f} MiB); "
            f"bare baseline {rss_base['VmRSS'] / 1024:.1f} MiB"
        )

        # -- verdict
        failures = []
        if ratio < 0.75:
            failures.append(f"(a) routed/baseline throughput {ratio:.2f}x < 0.75x")
        if base_m["errors"] or routed_m["errors"]:
            failures.append(f"(a) errors: baseline {base_m['errors']}, routed {routed_m['errors']}")
        if spread.error_count:
            failures.append(f"(b) {spread.error_count} errors: {spread.errors}")
        if peak_b.peak_tenant > args.budget or peak_a.peak_tenant > args.budget:
            failures.append(f"(b) {max(peak_a.peak_tenant, peak_b.peak_tenant)} connections > budget {args.budget}")

        hit_text = f"{hit_ratio:.1%}" if hit_ratio is not None else "n/a"
        print()
        print(
            f"Results ({len(tenants)} tenants, {args.connections} connections, {args.duration:.0f} s runs, "
            f"{'wrk' if args.wrk else 'asyncio client'}, {os.cpu_count()} CPUs, PostgreSQL {version}):"
        )
        print()
        print("| Scenario | req/s | p50 ms | p99 ms | Notes |")
        print("|---|---:|---:|---:|---|")
        print(
            f"| (a) bare Litestar + psycopg pool, hot tenant | {base_m['rps']:.0f} | {base_m['p50_ms']:.2f} | "
            f"{base_m['p99_ms']:.2f} | median of {args.rounds} |"
        )
        print(
            f"| (a) routed, hot tenant | {routed_m['rps']:.0f} | {routed_m['p50_ms']:.2f} | "
            f"{routed_m['p99_ms']:.2f} | **{ratio:.2f}x** baseline (floor 0.75x) |"
        )
        print(
            f"| (b) routed, {len(tenants)} tenants {args.pattern} | {spread.rps:.0f} | {spread.p50_ms:.2f} | "
            f"{spread.p99_ms:.2f} | errors {spread.error_count}, pool hit ratio {hit_text}, peak connections "
            f"{peak_b.peak_tenant} / budget {args.budget} |"
        )
        print(
            f"| (c) service RSS | | | | {rss_end['VmRSS'] / 1024:.0f} MiB with {len(tenants)} tenants, "
            f"{open_pools} pools open (idle after start "
            f"{rss_start['VmRSS'] / 1024:.0f} MiB) |"
        )
        print()
        if failures:
            print("FLOOR VIOLATED: " + "; ".join(failures))
            return 1
        print("floors met: (a) >= 0.75x, (b) no errors and connections within the budget")
        return 0
    finally:
        stopping = time.perf_counter()
        for server in servers:
            stop_server(server)
        if servers:
            print(f"servers stopped in {time.perf_counter() - stopping:.1f} s", file=sys.stderr)
        if args.dsn:  # a private cluster is destroyed whole
            try:
                drop_leftovers(admin, server_dsn, control_db, template, drop_group_role=not group_role_existed)
            except Exception as exc:
                print(f"warning: cleanup incomplete ({exc}); drop t_* of run {run_id} by hand", file=sys.stderr)
        admin.close()


def main() -> None:
    internal = sys.argv[1:2]
    if internal == ["_baseline"]:
        serve_baseline(int(sys.argv[2]))
        return
    if internal == ["_load"]:
        port, paths_file, seconds, connections, pattern = sys.argv[2:7]
        python_load(int(port), paths_file, float(seconds), int(connections), pattern)
        return

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1000, help="tenants to provision (default 1000)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per measured run (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent HTTP connections (default 64)")
    parser.add_argument("--rounds", type=int, default=2, help="(a): baseline/routed pairs (default 2)")
    parser.add_argument("--capacity", type=int, default=100, help="CARDVAULT_POOL_CAPACITY (default 100)")
    parser.add_argument("--budget", type=int, default=200, help="CARDVAULT_CONNECTION_BUDGET (default 200)")
    parser.add_argument("--pool-max", type=int, default=2, help="CARDVAULT_POOL_MAX_SIZE (default 2)")
    parser.add_argument("--pattern", choices=("round-robin", "random"), default="round-robin", help="(b) order")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--provision-concurrency", type=int, default=4, help="tenants created at once (default 4)")
    parser.add_argument("--python-client", action="store_true", help="use the asyncio client even if wrk exists")
    parser.add_argument("--dsn", help="superuser DSN of an existing server (default: a private durable cluster)")
    args = parser.parse_args()
    if args.tenants < 1 or args.connections < 1 or args.rounds < 1 or args.duration < 1:
        parser.error("--tenants, --connections, --rounds and --duration must be >= 1")
    args.wrk = None if args.python_client else shutil.which("wrk")
    if args.wrk is None and not args.python_client:
        print(
            "wrk not found: falling back to the asyncio load generator, which shares the 2 cores with the "
            "servers and saturates them less; install wrk for real numbers (apt-get install -y wrk).",
            file=sys.stderr,
        )

    run("cvroute-", args.dsn, lambda server_dsn, home: bench(args, server_dsn, home))


if __name__ == "__main__":
    main()
