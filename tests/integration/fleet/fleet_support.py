"""A small fleet on 127.0.0.1: two PostgreSQL servers and three ``cardvault serve`` processes sharing one
control database, with tenants on both servers, each with its tenant_admin's token.

- ``default`` is the test session's cluster (the control database lives there too); ``second`` is an
  ``extra_cluster()`` registered through the admin API, as an operator would.
- Each process is a real ``cardvault serve`` subprocess (its own port, its own log, the same
  ``CARDVAULT_*`` environment as ``tests.conftest.serve``) that dies with the test run; unlike ``serve`` the
  harness keeps the ``Popen`` so that a test can ``kill -9`` one, and starts all three at once.
- Tenants are placed by draining the other server while they are provisioned, so each server holds
  exactly the number asked for; provisionings are spread over the processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.harness import LocalClusterHandle
from tests.integration.tenant_support import provision_with_admin
from tests.processes import die_with_parent, free_port, stop, track

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CARDVAULT = str(Path(sys.executable).parent / "cardvault")
#: Seconds a process may take to answer ``/health/ready`` (three start at once on two cores).
START_DEADLINE = 90.0
#: Seconds any one HTTP request may take before the client gives up (a bound, never expected).
REQUEST_TIMEOUT = 60.0


@dataclass
class ServeProcess:
    """One running ``cardvault serve``: its name, URL, child process and log."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """``kill -9``: the process ends on the spot, whatever it was doing."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def serve_env(control_dsn: str, template: str, data_dir: Path, url: str, extra: dict[str, str]) -> dict[str, str]:
    """``tests.conftest.serve``'s environment, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARDVAULT_")}
    return env | {
        "CARDVAULT_DATABASE_URL": control_dsn,
        "CARDVAULT_SECRET_KEY": SECRET_KEY,
        "CARDVAULT_ADMIN_TOKEN": ADMIN_TOKEN,
        "CARDVAULT_TEMPLATE_DATABASE": template,
        "CARDVAULT_DATA_DIR": str(data_dir),
        "CARDVAULT_RECONCILE_INTERVAL": "0",
        "CARDVAULT_CONNECT_TIMEOUT": "2",
        "CARDVAULT_LOG_LEVEL": "WARNING",
        "CARDVAULT_ARGON2_MEMORY_KIB": "64",
        "CARDVAULT_ARGON2_TIME_COST": "1",
        "CARDVAULT_SPARE_DATABASES": "0",
        "CARDVAULT_PUBLIC_URL": url,
        **extra,
    }


def start_processes(
    count: int, control_dsn: str, template: str, tmp_path: Path, extra_env: dict[str, str], first: int = 0
) -> list[ServeProcess]:
    """Start ``count`` processes at once (named ``p<first>``, ...) and wait until each answers
    ``/health/ready``."""
    started: list[ServeProcess] = []
    try:
        for index in range(first, first + count):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            log = tmp_path / f"serve-{index}.log"
            env = serve_env(control_dsn, template, tmp_path / "data", url, extra_env)
            with log.open("w") as out:
                proc = subprocess.Popen(
                    [CARDVAULT, "serve", "--host", "127.0.0.1", "--port", str(port)],
                    env=env,
                    stdout=out,
                    stderr=out,
                    preexec_fn=die_with_parent,
                )
            started.append(ServeProcess(f"p{index}", url, track(proc), log))
        deadline = time.monotonic() + START_DEADLINE
        waiting = list(started)
        while waiting:
            for process in list(waiting):
                if not process.alive():
                    raise AssertionError(f"{process.name} exited: {process.log.read_text()}")
                try:
                    if httpx.get(f"{process.url}/health/ready", timeout=1).status_code == 200:
                        waiting.remove(process)
                except httpx.TransportError:
                    pass
            assert time.monotonic() < deadline, f"not ready within {START_DEADLINE} s: {[p.name for p in waiting]}"
            time.sleep(0.1)
    except BaseException:
        stop_processes(started)
        raise
    return started


def stop_processes(processes: Iterable[ServeProcess]) -> None:
    """SIGTERM to all at once, then each is waited for (and killed after 5 s)."""
    running = [p for p in processes if p.alive()]
    for process in running:
        process.proc.terminate()
    for process in processes:
        stop(process.proc)


@dataclass
class FleetTenant:
    """A tenant of the fleet: where the registry placed it and its tenant_admin's ``Authorization``."""

    slug: str
    id: str
    server: str
    database: str
    auth: dict[str, str]


@dataclass
class Fleet:
    """The servers (name -> superuser DSN), the processes with one HTTP client each, and the tenants."""

    control_dsn: str
    servers: dict[str, str]
    second: LocalClusterHandle
    processes: list[ServeProcess]
    #: What replacement processes are started with (template database, files, extra environment).
    template: str
    tmp_path: Path
    env: dict[str, str]
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    tenants: dict[str, FleetTenant] = field(default_factory=dict)

    def open_clients(self) -> None:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        self.clients = [
            httpx.AsyncClient(base_url=p.url, timeout=REQUEST_TIMEOUT, limits=limits) for p in self.processes
        ]

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients))
        self.clients = []

    def client(self, index: int) -> httpx.AsyncClient:
        """The client of process ``index`` (modulo the number of processes)."""
        return self.clients[index % len(self.clients)]

    def on(self, server: str) -> list[FleetTenant]:
        return [t for t in self.tenants.values() if t.server == server]

    def other(self, server: str) -> str:
        (name,) = [name for name in self.servers if name != server]
        return name

    async def admin(self, method: str, path: str, via: int = 0, **kwargs: Any) -> httpx.Response:
        return await self.client(via).request(method, path, headers=ADMIN, **kwargs)

    async def register_second(self) -> None:
        response = await self.admin("POST", "/admin/servers", json={"name": "second", "dsn": self.second.dsn})
        assert response.status_code == 201, response.text

    async def provision_on(self, server: str, slugs: list[str]) -> None:
        """Provision ``slugs`` on ``server`` (the other one drained meanwhile), spread over the processes."""
        other = self.other(server)
        assert (await self.admin("POST", f"/admin/servers/{other}/drain")).status_code == 200
        try:
            gate = asyncio.Semaphore(len(self.clients))

            async def one(index: int, slug: str) -> None:
                async with gate:
                    body, auth = await provision_with_admin(self.client(index), slug)
                assert body["server_name"] == server, body
                self.tenants[slug] = FleetTenant(slug, body["id"], server, body["database_name"], auth)

            await asyncio.gather(*(one(i, slug) for i, slug in enumerate(slugs)))
        finally:
            assert (await self.admin("POST", f"/admin/servers/{other}/activate")).status_code == 200

    async def heal(self) -> None:
        """Make the fleet whole for the next test: the second server running, a live process in place of
        each dead one, and every tenant where the registry places it (tenants it no longer has dropped)."""
        if not self.second.is_running():
            await asyncio.to_thread(self.second.start)
        dead = [i for i, p in enumerate(self.processes) if not p.alive()]
        if dead:
            fresh = await asyncio.to_thread(
                start_processes,
                len(dead),
                self.control_dsn,
                self.template,
                self.tmp_path,
                self.env,
                len(self.processes),
            )
            for index, process in zip(dead, fresh, strict=True):
                self.processes[index] = process
            await self.aclose()
            self.open_clients()
        placement = await registry_placement(self.control_dsn)
        for slug in list(self.tenants):
            if slug not in placement:
                del self.tenants[slug]
            else:
                self.tenants[slug].server = placement[slug]


async def registry_placement(control_dsn: str) -> dict[str, str]:
    """Each tenant's server name, as the registry has it."""
    async with await psycopg.AsyncConnection.connect(control_dsn) as conn:
        cur = await conn.execute("SELECT t.slug, s.name FROM tenants t JOIN db_servers s ON s.id = t.server_id")
        return {slug: server for slug, server in await cur.fetchall()}


async def build_fleet(
    control_dsn: str,
    default_dsn: str,
    second: LocalClusterHandle,
    processes: list[ServeProcess],
    per_server: int,
    tmp_path: Path,
    env: dict[str, str],
    template: str,
) -> Fleet:
    """The fleet with ``per_server`` tenants on each server (``def-00``.. on default, ``sec-00``.. on second)."""
    servers = {"default": default_dsn, "second": second.dsn}
    fleet = Fleet(control_dsn, servers, second, processes, template, tmp_path, env)
    fleet.open_clients()
    try:
        await fleet.register_second()
        await fleet.provision_on("default", [f"def-{i:02d}" for i in range(per_server)])
        await fleet.provision_on("second", [f"sec-{i:02d}" for i in range(per_server)])
    except BaseException:
        await fleet.aclose()
        raise
    return fleet
