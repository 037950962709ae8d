"""What the provisioning, lifecycle, reconciler and fault tests look at on the real servers.

Snapshots of the registry tables and of the ``t_*`` databases and roles on the server (to prove that a
refused or failed operation changed nothing), connections made as a tenant's own login role with the
password stored in the registry, and the checks that a tenant is fully working or entirely gone.
All of it goes through fresh psycopg connections, never through the code under test.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, NamedTuple

import psycopg
from psycopg import conninfo, sql
from psycopg.rows import dict_row

from controlplane.crypto import SecretBox
from controlplane.platform import Platform
from controlplane.provisioning.models import ReconcileReport
from controlplane.provisioning.reconciler import Reconciler
from controlplane.provisioning.service import TenantService
from controlplane.registry import repository as registry
from controlplane.registry.models import TIER_QUOTAS, Tenant, TenantStatus, Tier
from tests.conftest import ADMIN_TOKEN, SECRET_KEY

REGISTRY_TABLES = ("tenants", "tenant_quotas", "tenant_operations")
TENANT_TABLES = {"users", "manufacturers", "teams", "players", "cards", "files", "audit_log"}
VERSION_TABLE = "tenant_schema_version"
_LIKE_TENANT = "t\\_%"

Row = dict[str, Any]


class Snapshot(NamedTuple):
    """The registry tables and the tenant-like objects on the server, at one moment."""

    registry: dict[str, list[Row]]
    databases: dict[str, Row]
    roles: dict[str, Row]


async def _connect(dsn: str) -> psycopg.AsyncConnection[Row]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)


async def fetch(dsn: str, query: str | sql.SQL | sql.Composed, params: tuple[Any, ...] = ()) -> list[Row]:
    async with await _connect(dsn) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


async def execute(dsn: str, query: str | sql.SQL | sql.Composed, params: tuple[Any, ...] = ()) -> None:
    async with await _connect(dsn) as conn:
        await conn.execute(query, params)


def create_database(admin_dsn: str, name: str, template: str | None = None) -> str:
    """``CREATE DATABASE name [TEMPLATE template]`` on the test server; its DSN."""
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(query)
    return conninfo.make_conninfo(admin_dsn, dbname=name)


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def registry_rows(control_dsn: str) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    async with await _connect(control_dsn) as conn:
        for table in REGISTRY_TABLES:
            cur = await conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1, 2").format(sql.Identifier(table)))
            out[table] = await cur.fetchall()
    return out


async def server_databases(admin_dsn: str) -> dict[str, Row]:
    rows = await fetch(
        admin_dsn,
        "SELECT datname, datacl::text[] AS acl, datallowconn FROM pg_database WHERE datname LIKE %s",
        (_LIKE_TENANT,),
    )
    return {r["datname"]: r for r in rows}


async def server_roles(admin_dsn: str) -> dict[str, Row]:
    rows = await fetch(
        admin_dsn,
        "SELECT rolname, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolpassword IS NOT NULL AS has_pw"
        " FROM pg_authid WHERE rolname LIKE %s",
        (_LIKE_TENANT,),
    )
    return {r["rolname"]: r for r in rows}


async def snapshot(control_dsn: str, admin_dsn: str) -> Snapshot:
    return Snapshot(await registry_rows(control_dsn), await server_databases(admin_dsn), await server_roles(admin_dsn))


async def database_exists(admin_dsn: str, name: str) -> bool:
    return bool(await fetch(admin_dsn, "SELECT 1 FROM pg_database WHERE datname = %s", (name,)))


async def role_exists(admin_dsn: str, name: str) -> bool:
    return bool(await fetch(admin_dsn, "SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)))


async def registry_row(control_dsn: str, tenant_id: uuid.UUID) -> Row | None:
    rows = await fetch(control_dsn, "SELECT * FROM tenants WHERE id = %s", (tenant_id,))
    return rows[0] if rows else None


async def operations(control_dsn: str, tenant_id: uuid.UUID) -> list[Row]:
    """The tenant's ledger, oldest first."""
    return await fetch(control_dsn, "SELECT * FROM tenant_operations WHERE tenant_id = %s ORDER BY id", (tenant_id,))


async def quotas(control_dsn: str, tenant_id: uuid.UUID) -> dict[str, int | None]:
    rows = await fetch(
        control_dsn, "SELECT quota_type, quota_limit FROM tenant_quotas WHERE tenant_id = %s", (tenant_id,)
    )
    return {r["quota_type"]: r["quota_limit"] for r in rows}


def expected_quotas(tier: str) -> dict[str, int | None]:
    return {quota.value: limit for quota, limit in TIER_QUOTAS[Tier(tier)].items()}


async def tenant_password(platform: Platform, tenant_id: uuid.UUID) -> str:
    """The tenant role's password as the registry stores it (encrypted), decrypted."""
    async with platform.control.connection() as conn:
        encrypted = await registry.role_password_encrypted(conn, tenant_id)
    assert encrypted is not None
    return platform.box.decrypt(encrypted)


def tenant_conninfo(admin_dsn: str, role: str, password: str, dbname: str) -> str:
    return conninfo.make_conninfo(admin_dsn, user=role, password=password, dbname=dbname, connect_timeout=5)


async def connect_as(admin_dsn: str, role: str, password: str, dbname: str) -> psycopg.AsyncConnection[Row]:
    return await _connect(tenant_conninfo(admin_dsn, role, password, dbname))


async def refusal(admin_dsn: str, role: str, password: str, dbname: str) -> str:
    """The server's reason for refusing ``role`` a connection to ``dbname`` (fails if it is accepted)."""
    try:
        conn = await connect_as(admin_dsn, role, password, dbname)
    except psycopg.OperationalError as exc:
        return str(exc)
    await conn.close()
    raise AssertionError(f"{role} could connect to {dbname}")


async def assert_tenant_works(platform: Platform, admin_dsn: str, tenant: Tenant) -> None:
    """Active in the registry, quotas of its tier, and its role runs DML on its own database at head."""
    assert tenant.status is TenantStatus.ACTIVE
    assert tenant.schema_revision == platform.tenant_scripts.head()
    assert await quotas(platform.settings.database.url, tenant.id) == expected_quotas(tenant.subscription_tier.value)
    password = await tenant_password(platform, tenant.id)
    async with await connect_as(admin_dsn, tenant.role_name, password, tenant.database_name) as conn:
        cur = await conn.execute("SELECT current_user AS who, current_database() AS db")
        assert await cur.fetchone() == {"who": tenant.role_name, "db": tenant.database_name}
        cur = await conn.execute("INSERT INTO cards (cardnumber, year) VALUES ('T1', 1999) RETURNING id")
        row = await cur.fetchone()
        assert row is not None
        await conn.execute("UPDATE cards SET notes = 'checked' WHERE id = %s", (row["id"],))
        cur = await conn.execute("SELECT notes FROM cards WHERE id = %s", (row["id"],))
        assert await cur.fetchone() == {"notes": "checked"}
        await conn.execute("DELETE FROM cards WHERE id = %s", (row["id"],))


async def assert_tenant_gone(control_dsn: str, admin_dsn: str, tenant_id: uuid.UUID) -> None:
    """No registry row or quotas, no database, no role; the ledger still remembers it."""
    name = f"t_{tenant_id.hex}"
    assert await registry_row(control_dsn, tenant_id) is None
    assert await quotas(control_dsn, tenant_id) == {}
    assert not await database_exists(admin_dsn, name)
    assert not await role_exists(admin_dsn, name)
    assert await operations(control_dsn, tenant_id), "the ledger must outlive the tenant"


async def reconcile(platform: Platform, *, fix: bool) -> ReconcileReport:
    return await Reconciler(platform, TenantService(platform)).run(fix=fix)


def finding_kinds(report: ReconcileReport) -> list[tuple[str, str]]:
    return sorted((f.kind, f.subject) for f in report.findings)


async def wait_until_unlocked(control_dsn: str, within: float = 15.0) -> None:
    """Wait until no session holds an advisory lock on the control database (a killed process's
    backends notice the closed socket and exit, releasing the tenant locks it held)."""
    deadline = time.monotonic() + within
    query = (
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    while True:
        (row,) = await fetch(control_dsn, query)
        if row["n"] == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{row['n']} advisory lock(s) still held on the control database")
        await asyncio.sleep(0.02)


# -- tenants with a first tenant_admin, and that admin's token -------------------------------------------

#: Password of the first tenant_admin that ``create_tenant_as_admin`` provisions (12..1024 characters).
TENANT_ADMIN_PASSWORD = "correct horse battery staple"


def tenant_admin_email(slug: str) -> str:
    """Email of the first tenant_admin that ``create_tenant_as_admin`` provisions for ``slug``."""
    return f"admin@{slug}.test"


def _create_body(slug: str, tier: str, name: str | None) -> dict[str, str]:
    return {
        "name": name or slug,
        "slug": slug,
        "tier": tier,
        "admin_email": tenant_admin_email(slug),
        "admin_password": TENANT_ADMIN_PASSWORD,
    }


def _login_body(slug: str) -> dict[str, str]:
    return {"email": tenant_admin_email(slug), "password": TENANT_ADMIN_PASSWORD}


def _admin_headers(headers: dict[str, str] | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}", **(headers or {})}


def _created(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _bearer(response: Any) -> dict[str, str]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer", body
    return {"Authorization": f"Bearer {body['access_token']}"}


async def provision_with_admin(
    client: Any,
    slug: str,
    *,
    tier: str = "professional",
    headers: dict[str, str] | None = None,
    name: str | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """``create_tenant_as_admin`` that also returns the created tenant (the 201 body)."""
    body = _created(
        await client.post("/admin/tenants", json=_create_body(slug, tier, name), headers=_admin_headers(headers))
    )
    return body, await login_tenant_admin(client, slug)


async def create_tenant_as_admin(
    client: Any,
    slug: str,
    *,
    tier: str = "professional",
    headers: dict[str, str] | None = None,
    name: str | None = None,
) -> dict[str, str]:
    """Create ``slug`` with its first tenant_admin (``POST /admin/tenants`` with the admin token, overridden
    or extended by ``headers``), log that admin in and return the ``Authorization`` header of its access token.

    ``client``: Litestar's ``AsyncTestClient`` or an ``httpx.AsyncClient``.
    """
    _, auth = await provision_with_admin(client, slug, tier=tier, headers=headers, name=name)
    return auth


async def login_tenant_admin(client: Any, slug: str) -> dict[str, str]:
    """The ``Authorization`` header of a new login of the tenant_admin ``create_tenant_as_admin`` provisioned."""
    return _bearer(await client.post(f"/t/{slug}/auth/token", json=_login_body(slug)))


def create_tenant_as_admin_sync(
    client: Any,
    slug: str,
    *,
    tier: str = "professional",
    headers: dict[str, str] | None = None,
    name: str | None = None,
) -> dict[str, str]:
    """``create_tenant_as_admin`` for a synchronous client (``httpx.Client``)."""
    _created(client.post("/admin/tenants", json=_create_body(slug, tier, name), headers=_admin_headers(headers)))
    return _bearer(client.post(f"/t/{slug}/auth/token", json=_login_body(slug)))


def tenant_dsn(control_dsn: str, server_dsn: str, slug: str, *, database: str | None = None) -> str:
    """The tenant's own login role on its server (password decrypted from the registry)."""
    with psycopg.connect(control_dsn) as conn:
        row = conn.execute(
            "SELECT role_name, database_name, role_password_encrypted FROM tenants WHERE slug = %s", (slug,)
        ).fetchone()
    assert row is not None
    role, own_database, encrypted = row
    password = SecretBox(SECRET_KEY).decrypt(encrypted)
    return conninfo.make_conninfo(server_dsn, user=role, password=password, dbname=database or own_database)
