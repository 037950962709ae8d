"""Shared fixtures: a migrated control database cloned per test, the platform, the service, an HTTP client.

The control database is migrated once per session into a template and cloned for each test (cheap),
and every test gets its own clone, so tests never see each other's tenants. At teardown every tenant
database and role the test's control plane made (known from its registry and ledger) is dropped on
every server it registered, then the control database itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg import sql

from controlplane import db
from controlplane.app import create_app
from controlplane.crypto import SecretBox
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.provisioning.spares_repository import spare_tag
from controlplane.schemas.alembic_runner import registry_scripts
from controlplane.settings import (
    AuthSettings,
    DatabaseSettings,
    ProvisioningSettings,
    SecuritySettings,
    Settings,
    UsageSettings,
)
from tests.processes import free_port

pytest_plugins = [
    "tests.harness",
    "tests.stripe_harness",
    "tests.smtp_harness",
    "tests.s3_harness",
    "tests.oidc_harness",
]

SECRET_KEY = "test-secret-key-0123456789abcdef-0123456789"
ADMIN_TOKEN = "test-admin-token"
_SESSION = uuid.uuid4().hex[:10]


def _admin(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(dsn, autocommit=True)


@pytest.fixture(scope="session")
def tenant_template_name() -> str:
    """This session's tenant template database (shared by all tests; built on first provisioning)."""
    return f"cvtest_tpl_{_SESSION}"


@pytest.fixture(scope="session")
def control_template(pg_admin_dsn: str, tenant_template_name: str) -> Iterator[str]:
    """A migrated control database to clone for each test."""
    name = f"cvtest_ctl_tpl_{_SESSION}"
    with _admin(pg_admin_dsn) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    registry_scripts(ProvisioningSettings()).upgrade(db.with_database(pg_admin_dsn, name))
    yield name
    with _admin(pg_admin_dsn) as conn:
        for database in (name, tenant_template_name):
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(database)))
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))


def make_settings(dsn: str, template: str, **provisioning: object) -> Settings:
    return Settings(
        database=DatabaseSettings(url=dsn, connect_timeout=3, statement_timeout=60),
        provisioning=dataclasses.replace(
            # No spare databases unless a test asks for them: tenants are cloned, and nothing is made behind
            # a test's back.
            ProvisioningSettings(),
            template_database=template,
            reconcile_interval=0,
            **{"spare_databases": 0, **provisioning},
        ),
        security=SecuritySettings(secret_key=SECRET_KEY, admin_token=ADMIN_TOKEN),
        # argon2id at test strength: the production cost only slows the suite down.
        auth=AuthSettings(argon2_memory_kib=64, argon2_time_cost=1),
    )


def quiet_settings(control_dsn: str, template: str, tmp_path: Path) -> Settings:
    """Test settings with the usage collectors off (tests write usage and history themselves) and files
    under ``tmp_path``."""
    base = make_settings(control_dsn, template)
    return dataclasses.replace(base, data_dir=tmp_path / "data", usage=UsageSettings(interval=0, compact_interval=0))


@pytest.fixture
def control_dsn(pg_admin_dsn: str, control_template: str) -> Iterator[str]:
    """A fresh control database for this test; tenants it made are dropped afterwards."""
    name = f"cvtest_ctl_{uuid.uuid4().hex[:12]}"
    with _admin(pg_admin_dsn) as conn:
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(ident, sql.Identifier(control_template)))
        # A clone does not copy the database ACL; the registry migration revoked PUBLIC's CONNECT.
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(ident))
    dsn = db.with_database(pg_admin_dsn, name)
    yield dsn
    drop_everything_made_by(dsn)
    with _admin(pg_admin_dsn) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def drop_everything_made_by(control_dsn: str) -> None:
    """Drop every tenant database and role this control database knows of, and every spare database and
    role named with its tag (``cvspare_<tag>_*``: rows, claims in flight, leaks alike), on every server."""
    box = SecretBox(SECRET_KEY)
    with psycopg.connect(control_dsn, autocommit=True) as conn:
        ids = {r[0] for r in conn.execute("SELECT id FROM tenants UNION SELECT tenant_id FROM tenant_operations")}
        servers = [box.decrypt(r[0]) for r in conn.execute("SELECT dsn_encrypted FROM db_servers")]
        pool = conn.execute(
            "SELECT seed, (SELECT oid FROM pg_database WHERE datname = current_database())::bigint FROM spare_pool"
        ).fetchone()
    spares_like = f"cvspare\\_{spare_tag(pool[0], pool[1])}\\_%" if pool else None
    # Scratch databases of backup verifications that did not end (named with the same tag).
    scratch_like = f"cvverify\\_{spare_tag(pool[0], pool[1])}\\_%" if pool else None
    for server_dsn in servers:
        try:
            admin = _admin(server_dsn)
        except psycopg.OperationalError:
            continue  # a test's extra cluster, already destroyed
        with admin:
            for tenant_id in ids:
                name = sql.Identifier(f"t_{tenant_id.hex}")
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(name))
                # Databases a restore made or retired (t_<hex>_r..., t_<hex>_p...).
                like = f"t\\_{tenant_id.hex}\\_%"
                extras = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (like,)).fetchall()
                for (extra,) in extras:
                    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(extra)))
            for listing, drop in (
                ("SELECT datname FROM pg_database WHERE datname LIKE %s", "DROP DATABASE IF EXISTS {} WITH (FORCE)"),
                ("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", "DROP ROLE IF EXISTS {}"),
            ):
                for (spare,) in admin.execute(listing, (spares_like,)).fetchall() if spares_like else []:
                    admin.execute(sql.SQL(drop).format(sql.Identifier(spare)))
            scratch_listing = "SELECT datname FROM pg_database WHERE datname LIKE %s"
            for (scratch,) in admin.execute(scratch_listing, (scratch_like,)).fetchall() if scratch_like else []:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch)))


@pytest.fixture
def settings(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> Settings:
    # Stored files, backups and exports of the test go under its own temporary directory.
    return dataclasses.replace(make_settings(control_dsn, tenant_template_name), data_dir=tmp_path / "data")


@pytest.fixture
async def platform(settings: Settings) -> AsyncIterator[Platform]:
    async with Platform.open(settings, migrate=False) as opened:
        yield opened


@pytest.fixture
def service(platform: Platform) -> TenantService:
    return TenantService(platform)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[object]]:
    app = create_app(settings)
    async with AsyncTestClient(app=app) as test_client:
        test_client.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        yield test_client


class Served:
    """A running ``cardvault serve``: its base URL and its log file."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log


@pytest.fixture
def served(control_dsn: str, tenant_template_name: str, tmp_path: Path) -> Iterator[Served]:
    """``cardvault serve`` (uvicorn) on a free port against this test's control database."""
    with serve(control_dsn, tenant_template_name, tmp_path) as running:
        yield running


@contextlib.contextmanager
def serve(control_dsn: str, tenant_template_name: str, tmp_path: Path, **extra_env: str) -> Iterator[Served]:
    """Run ``cardvault serve`` until the block ends (``extra_env``: more ``CARDVAULT_*`` variables)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARDVAULT_")}
    env |= {
        "CARDVAULT_DATABASE_URL": control_dsn,
        "CARDVAULT_SECRET_KEY": SECRET_KEY,
        "CARDVAULT_ADMIN_TOKEN": ADMIN_TOKEN,
        "CARDVAULT_TEMPLATE_DATABASE": tenant_template_name,
        "CARDVAULT_DATA_DIR": str(tmp_path / "data"),
        "CARDVAULT_RECONCILE_INTERVAL": "0",
        "CARDVAULT_CONNECT_TIMEOUT": "2",
        "CARDVAULT_LOG_LEVEL": "WARNING",
        "CARDVAULT_ARGON2_MEMORY_KIB": "64",
        "CARDVAULT_ARGON2_TIME_COST": "1",
        "CARDVAULT_SPARE_DATABASES": "0",
        # Links it makes (mail, SSO redirect URI) point at itself.
        "CARDVAULT_PUBLIC_URL": url,
        **extra_env,
    }
    log_path = tmp_path / f"serve-{port}.log"
    cardvault = str(Path(sys.executable).parent / "cardvault")
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [cardvault, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"cardvault serve exited: {log_path.read_text()}")
                try:
                    if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "cardvault serve did not become ready"
                time.sleep(0.1)
            yield Served(url, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str, within: float = 15.0) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds (a deadline, not a timing assert)."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.02)
