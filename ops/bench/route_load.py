"""Load and measuring of the routing benchmark (``route.py``): the load generators (``wrk`` with a Lua
script, or an asyncio client: ``python route_load.py PORT PATHS_FILE SECONDS CONNECTIONS PATTERN``), the
peak of connections on the server, and the requests every tenant must answer before anything is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from harness import HOST, machine_busy
from route_servers import BASELINE_APP_NAME, Server, Tenant, cpu_seconds

SELF = Path(__file__).resolve()

#: Marker of the one result line every load generator prints.
RESULT_MARK = "CVBENCH "
#: Seconds between two samples of ``pg_stat_activity``.
POLL_INTERVAL = 0.05

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


class ConnectionPeak:
    """Samples ``pg_stat_activity`` every 50 ms: tenant connections (of the service or of a PgBouncer) and all
    client backends."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.peak_tenant = 0
        self.peak_total = 0
        self.samples = 0

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[ConnectionPeak]:
        import psycopg

        from controlplane.provisioning.catalog import TENANT_GROUP_ROLE

        conn = await psycopg.AsyncConnection.connect(self.admin_dsn, autocommit=True)
        stop = asyncio.Event()

        async def loop() -> None:
            while not stop.is_set():
                # Tenant connections are those of tenant roles (members of the tenants' group role), whether
                # the service opened them or a PgBouncer in front of the server did (not the baseline's).
                cur = await conn.execute(
                    "SELECT count(*) FILTER (WHERE usesysid IN (SELECT m.member FROM pg_auth_members m"
                    " JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = %s) AND application_name <> %s), count(*)"
                    " FROM pg_stat_activity WHERE backend_type = 'client backend'",
                    (TENANT_GROUP_ROLE, BASELINE_APP_NAME),
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


async def login_all(server: Server, tenants: Sequence[Tenant], password: str, concurrency: int = 8) -> None:
    """Log every tenant's admin in (``POST /t/{slug}/auth/token``) and keep its access token."""
    queue = list(tenants)
    failures: list[str] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            while queue and len(failures) < 5:
                tenant = queue.pop()
                body = json.dumps({"email": tenant.email, "password": password}).encode()
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
    """Fallback load generator (this module as a script): keep-alive asyncio connections; prints the result line."""
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


if __name__ == "__main__":
    port, paths_file, seconds, connections, pattern = sys.argv[1:6]
    python_load(int(port), paths_file, float(seconds), int(connections), pattern)
