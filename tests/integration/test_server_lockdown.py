"""Tenant roles reach nothing but their own database, on every server of the fleet.

PostgreSQL lets PUBLIC connect to every new database. A server joining the fleet has that revoked on
every database (``postgres``, ``template1``, the control database, anything else), so each tenant role,
logging in with its real password, is refused everywhere but at home; the control plane's own user
keeps its way in, superuser or not; and the reconciler reports (and with ``fix`` closes) a database
that PUBLIC may connect to again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import conninfo, sql

from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import Tenant
from tests.conftest import make_settings
from tests.harness import LocalClusterHandle
from tests.integration.tenant_support import connect_as, reconcile, refusal, tenant_password

StartCluster = Callable[[], LocalClusterHandle]


def connectable_databases(admin_dsn: str) -> set[str]:
    """Every database of the server that accepts connections at all."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datallowconn")}


def public_databases(admin_dsn: str) -> set[str]:
    """Databases of the server that PUBLIC (so every role) may connect to."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND has_database_privilege('public', oid, 'CONNECT')"
        ).fetchall()
    return {r[0] for r in rows}


def open_database(admin_dsn: str) -> Iterator[str]:
    """A database made by hand, with PostgreSQL's default privileges (PUBLIC may connect)."""
    name = f"cvtest_open_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def bystander(pg_admin_dsn: str) -> Iterator[str]:
    """Another application's database, there before the server joins the fleet."""
    yield from open_database(pg_admin_dsn)


def database_name(dsn: str) -> str:
    name = conninfo.conninfo_to_dict(dsn).get("dbname")
    assert isinstance(name, str)
    return name


async def assert_reaches_only_its_own(platform: Platform, admin_dsn: str, tenant: Tenant, databases: set[str]) -> None:
    password = await tenant_password(platform, tenant.id)
    async with await connect_as(admin_dsn, tenant.role_name, password, tenant.database_name) as conn:
        cur = await conn.execute("SELECT current_database() AS db")
        assert await cur.fetchone() == {"db": tenant.database_name}
    for other in sorted(databases - {tenant.database_name}):
        reason = await refusal(admin_dsn, tenant.role_name, password, other)
        assert f'permission denied for database "{other}"' in reason, (tenant.slug, other, reason)


async def test_every_tenant_role_is_refused_by_every_other_database_of_the_server(
    bystander: str,
    service: TenantService,
    platform: Platform,
    pg_admin_dsn: str,
    control_dsn: str,
    tenant_template_name: str,
) -> None:
    tenants = [await service.create(name=slug, slug=slug, tier="starter") for slug in ("alpha", "bravo", "charlie")]
    databases = connectable_databases(pg_admin_dsn)
    control = database_name(control_dsn)
    # The maintenance databases, the template tenants are cloned from, the control database, another
    # application's database and the other tenants' databases are all among them.
    assert {"postgres", "template1", tenant_template_name, control, bystander} <= databases
    assert {t.database_name for t in tenants} <= databases
    for tenant in tenants:
        await assert_reaches_only_its_own(platform, pg_admin_dsn, tenant, databases)
    assert public_databases(pg_admin_dsn) == set()


async def test_the_reconciler_reports_and_closes_databases_open_to_public(
    service: TenantService, platform: Platform, pg_admin_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    # Drift made by hand after the server joined: postgres opened again, and a new database.
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute("GRANT CONNECT ON DATABASE postgres TO PUBLIC")
    made = open_database(pg_admin_dsn)
    late = next(made)
    try:
        password = await tenant_password(platform, tenant.id)
        async with await connect_as(pg_admin_dsn, tenant.role_name, password, "postgres"):
            pass  # the drift is real: the tenant's role gets in

        report = await reconcile(platform, fix=False)
        found = sorted((f.kind, f.server, f.subject, f.action) for f in report.findings)
        assert found == [
            ("public_connect", "default", late, "reported"),
            ("public_connect", "default", "postgres", "reported"),
        ]
        assert public_databases(pg_admin_dsn) == {"postgres", late}

        report = await reconcile(platform, fix=True)
        assert sorted((f.subject, f.action) for f in report.findings) == [(late, "revoked"), ("postgres", "revoked")]
        assert public_databases(pg_admin_dsn) == set()
        for database in ("postgres", late):
            reason = await refusal(pg_admin_dsn, tenant.role_name, password, database)
            assert f'permission denied for database "{database}"' in reason
        assert (await reconcile(platform, fix=True)).clean
    finally:
        next(made, None)


async def test_a_non_superuser_control_plane_keeps_its_own_way_in(
    extra_cluster: StartCluster, tenant_template_name: str
) -> None:
    """The control database's own server joins the fleet as ``default`` with a user that is no
    superuser: PUBLIC loses CONNECT everywhere, the control plane's user does not."""
    server = extra_cluster()
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE ROLE cp LOGIN CREATEDB CREATEROLE PASSWORD 'cp-pw'")
        conn.execute("CREATE DATABASE control OWNER cp")
        # Databases the control plane's user is to close must be its own (or a superuser's job).
        conn.execute("ALTER DATABASE postgres OWNER TO cp")
        conn.execute("ALTER DATABASE template1 OWNER TO cp")
    assert {"postgres", "template1", "control"} <= public_databases(server.dsn)
    control_dsn = conninfo.make_conninfo(server.dsn, user="cp", password="cp-pw", dbname="control")
    settings = make_settings(control_dsn, tenant_template_name)

    async with Platform.open(settings) as platform:
        async with platform.control.connection() as conn:
            default = await platform.fleet.get(conn, "default")
        assert default.port == server.port and "user=cp" in default.dsn_display
        assert public_databases(server.dsn) == set()
        service = TenantService(platform)
        tenants = [await service.create(name=slug, slug=slug, tier="starter") for slug in ("one", "two")]
        databases = connectable_databases(server.dsn)
        assert {"postgres", "template1", "control", tenant_template_name} <= databases
        for tenant in tenants:
            await assert_reaches_only_its_own(platform, server.dsn, tenant, databases)

    # A second start: new connections of the control plane's user to its databases still work.
    async with Platform.open(settings) as platform:
        service = TenantService(platform)
        await service.create(name="three", slug="three", tier="starter")
        assert sorted(t.slug for t in await service.list()) == ["one", "three", "two"]
    for database in ("postgres", "control"):
        with psycopg.connect(conninfo.make_conninfo(control_dsn, dbname=database)) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("cp",)
