"""The fleet of the fleet benchmark (``fleet.py``): two private clusters registered as servers (``default``,
which also holds the control database, and ``second``), the tenants provisioned on each, three
``cardvault serve`` processes sharing the control database, and the admin API calls the scenarios make.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from harness import HOST, free_port, server_env
from route_servers import ADMIN_PASSWORD, Server, Tenant, provision, start_server, stop_server, wait_ready

#: Server names in the registry: the control database's cluster is registered as ``default`` by the platform.
SERVER_NAMES = ("default", "second")
#: Seconds an admin API call (a provisioning, a move) may take.
ADMIN_TIMEOUT = 300.0
#: argon2id cost (service and provisioning): only the logins before the measurements hash.
ARGON2 = {"CARDVAULT_ARGON2_MEMORY_KIB": "64", "CARDVAULT_ARGON2_TIME_COST": "1"}


@dataclasses.dataclass
class Fleet:
    """Everything the scenarios act on."""

    clusters: list[Any]  # controlplane.localpg.LocalCluster, index = SERVER_NAMES index
    home: Path
    settings: Any  # controlplane.settings.Settings of the bench's own in-process platform
    control_dsn: str
    admin_token: str
    env: dict[str, str]
    processes: list[Server]
    #: Tenants by the server they were provisioned on (a move does not change these lists).
    tenants: dict[str, list[Tenant]] = dataclasses.field(default_factory=dict)

    def server_dsn(self, name: str) -> str:
        """Superuser DSN (``dbname=postgres``) of the registered server ``name``."""
        dsn: str = self.clusters[SERVER_NAMES.index(name)].dsn()
        return dsn

    @property
    def all_tenants(self) -> list[Tenant]:
        return [t for name in SERVER_NAMES for t in self.tenants.get(name, [])]

    def group_of(self) -> dict[str, str]:
        """slug -> the server its tenant was provisioned on."""
        return {t.slug: name for name in SERVER_NAMES for t in self.tenants.get(name, [])}

    def start_process(self, index: int) -> Server:
        """Start (or start again, on a fresh port) the ``index``-th ``cardvault serve`` and wait until ready."""
        port = free_port()
        cardvault = Path(sys.executable).parent / "cardvault"
        if not cardvault.exists():
            raise SystemExit(f"{cardvault} not found: run this with the project's .venv/bin/python")
        argv = [str(cardvault), "serve", "--host", HOST, "--port", str(port)]
        server = start_server(f"serve{index + 1}-{port}", argv, self.env, self.home, port)
        try:
            wait_ready(server)  # only then does it take requests (a load balancer's readiness check)
        except BaseException:
            stop_server(server)
            raise
        if index < len(self.processes):
            self.processes[index] = server
        else:
            self.processes.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.processes:
            stop_server(server)

    async def admin(self, server: Server, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """One admin API call to ``server`` with the admin token."""
        async with httpx.AsyncClient(base_url=server.url(""), timeout=ADMIN_TIMEOUT) as client:
            return await client.request(
                method, path, json=body, headers={"Authorization": f"Bearer {self.admin_token}"}
            )


def serve_env(args: argparse.Namespace, control_dsn: str, template: str, secret_key: str, admin_token: str,
              data_dir: Path) -> dict[str, str]:  # fmt: skip
    """The environment of every ``cardvault serve``: one control database, capacity-bounded tenant pools, and
    the periodic jobs that would sweep every tenant database (usage, health, backups) and the reconciler
    off: the bench settles interrupted operations itself and times that."""
    return server_env(
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
            "CARDVAULT_CONNECT_TIMEOUT": "2",
            "CARDVAULT_RECONCILE_INTERVAL": "0",
            "CARDVAULT_USAGE_INTERVAL": "0",
            "CARDVAULT_HEALTH_INTERVAL": "0",
            "CARDVAULT_BACKUP_INTERVAL": "0",
            "CARDVAULT_LOG_LEVEL": "WARNING",
            "CARDVAULT_ACCESS_TOKEN_TTL": "1d",
            **ARGON2,
        }
    )


async def build(args: argparse.Namespace, clusters: Sequence[Any], home: Path) -> Fleet:
    """The control database on the first cluster, ``--tenants`` tenants on each server, three processes
    (the second cluster registered through ``POST /admin/servers``), every tenant's admin logged in."""
    import psycopg
    from psycopg import sql
    from route_load import login_all, verify_all

    from controlplane import db
    from controlplane.schemas.control import migrate_registry
    from controlplane.settings import AuthSettings, DatabaseSettings, ProvisioningSettings, SecuritySettings, Settings

    run_id = uuid.uuid4().hex[:6]
    control_db, template = f"cvfleet_ctl_{run_id}", f"cvfleet_tpl_{run_id}"
    secret_key = "fleet-bench-" + uuid.uuid4().hex + uuid.uuid4().hex
    admin_token = "fleet-bench-" + uuid.uuid4().hex
    data_dir = home / "data"
    data_dir.mkdir()
    first_dsn = clusters[0].dsn()
    with psycopg.connect(first_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(control_db)))
    control_dsn = db.with_database(first_dsn, control_db)
    settings = Settings(
        data_dir=data_dir,
        database=DatabaseSettings(url=control_dsn),
        provisioning=dataclasses.replace(ProvisioningSettings(), template_database=template, reconcile_interval=0),
        security=SecuritySettings(secret_key=secret_key, admin_token=admin_token),
        auth=AuthSettings(argon2_memory_kib=64, argon2_time_cost=1),
    )
    await migrate_registry(settings)
    env = serve_env(args, control_dsn, template, secret_key, admin_token, data_dir)
    fleet = Fleet(list(clusters), home, settings, control_dsn, admin_token, env, [])

    async def provision_batch(name: str) -> None:
        batch = argparse.Namespace(tenants=args.tenants, provision_concurrency=args.provision_concurrency)
        tenants, seconds = await provision(batch, settings, f"{run_id}{name[0]}")
        fleet.tenants[name] = tenants
        print(f"provisioned {len(tenants)} tenants on {name} in {seconds:.1f} s ({len(tenants) / seconds:.1f}/s)")

    # The least loaded server takes each new tenant: the first batch goes to default (the only server),
    # the second, once "second" is registered with none, all to it.
    await provision_batch("default")
    for i in range(3):
        fleet.start_process(i)
    response = await fleet.admin(fleet.processes[0], "POST", "/admin/servers", {"name": "second",
                                                                                 "dsn": clusters[1].dsn()})  # fmt: skip
    if response.status_code != 201:
        raise RuntimeError(f"POST /admin/servers: {response.status_code} {response.text}")
    await provision_batch("second")
    t0 = time.perf_counter()
    everyone = fleet.all_tenants
    await login_all(fleet.processes[0], everyone, ADMIN_PASSWORD)
    for server in fleet.processes:  # every process answers for every tenant (caches warm)
        await verify_all(server, everyone)
    print(f"logged in and checked {len(everyone)} tenants through 3 processes ({time.perf_counter() - t0:.1f} s)")
    return fleet
