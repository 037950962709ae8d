"""The processes and tenants of the routing benchmark (``route.py``): the tenants it provisions (a first
tenant_admin and one card each), the service and the bare baseline as server processes
(``python route_servers.py PORT`` serves the baseline), their memory and CPU, and the service's pool
statistics.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from harness import HOST, die_with_parent, tail  # noqa: E402

#: ``application_name`` of the baseline's connections (the service's are ``cardvault-tenant``).
BASELINE_APP_NAME = "cvbench-baseline"
#: Password of each benchmarked tenant's first tenant_admin (``admin@<slug>.bench``).
ADMIN_PASSWORD = "route-bench-password"
#: ``api_calls_per_hour`` of the benchmarked tenants: never reached (the tier's would be within seconds).
API_CALLS_PER_HOUR = 10**12


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


# -------------------------------------------------------------------------------------------- tenants


async def provision(args: argparse.Namespace, settings: Any, run_id: str) -> tuple[list[Tenant], float]:
    """N tenants through TenantService, each with a first tenant_admin (``admin@<slug>.bench``, as the admin
    API's ``admin_email``/``admin_password`` make it) and one card (inserted through CardVault as the
    tenant's role); the API call quota raised out of the way (see the module's docstring)."""
    import psycopg
    from psycopg.rows import dict_row

    from controlplane.auth.passwords import Passwords, normalize_email, validate_password
    from controlplane.cards.models import CardCreate
    from controlplane.cards.service import CARDS, CardVault
    from controlplane.platform import Platform
    from controlplane.provisioning.service import FirstAdmin, TenantService
    from controlplane.registry import repository as registry
    from controlplane.registry.models import QuotaType, fixed_limits
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
        seconds = time.perf_counter() - started
        # The spare databases the service keeps (CARDVAULT_SPARE_DATABASES), made now: else its first
        # refill, 30 s after it starts, clones them from the template in the middle of (a).
        await service.spares.refill()
        return [first, *rest], seconds


# ------------------------------------------------------------------------------------------ baseline


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
        # What the service sends for a read (issue 11): the statement alone, no BEGIN / COMMIT around it
        # (unless --baseline-transaction).
        kwargs={"row_factory": dict_row, "autocommit": os.environ.get("CVBENCH_BASELINE_AUTOCOMMIT") == "1"},
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


if __name__ == "__main__":
    serve_baseline(int(sys.argv[1]))
