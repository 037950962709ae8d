"""Helpers for tests of tenant identities: tenants made through the admin API, users written straight
into a tenant's database, logins, bearer headers, and reads of a tenant database as the superuser.

Everything that checks the outcome of a request (``tenant_rows``, ``audit_rows``) goes around the code
under test: a fresh superuser connection to the tenant's database, found through the registry.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from controlplane import db
from controlplane.auth import repository as admins
from controlplane.auth import sessions
from controlplane.auth.models import Role
from controlplane.auth.passwords import Passwords
from controlplane.auth.service import Authenticator
from controlplane.context import TenantContext
from controlplane.fleet import repository as fleet
from controlplane.http.state import AUTH_STATE_KEY
from controlplane.platform import Platform
from controlplane.registry import repository as registry
from controlplane.registry.models import Tenant
from controlplane.settings import Settings
from tests.integration.tenant_support import TENANT_ADMIN_PASSWORD, provision_with_admin, tenant_admin_email

#: Password ``add_user`` gives a user unless told otherwise.
USER_PASSWORD = "correct horse battery"
#: The super-admin the tests make (``make_admin``, ``super_admin``) and its password in ``super_admin``.
SUPER_ADMIN_EMAIL = "root@platform.test"
SUPER_ADMIN_PASSWORD = "a long platform password"

Row = dict[str, Any]


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header for an access token or an API key."""
    return {"Authorization": f"Bearer {token}"}


@dataclasses.dataclass(frozen=True)
class TenantAdmin:
    """A tenant made through ``POST /admin/tenants`` with its first tenant_admin, logged in."""

    id: uuid.UUID
    slug: str
    tier: str
    admin_email: str
    admin_password: str
    #: ``Authorization`` header of the admin's access token.
    auth: dict[str, str]
    #: The 201 body of the create.
    body: dict[str, Any]

    def api(self, path: str) -> str:
        """``/t/{slug}/api{path}``."""
        return f"/t/{self.slug}/api{path}"


async def create_tenant(client: Any, slug: str, tier: str = "professional") -> TenantAdmin:
    """Create ``slug`` of ``tier`` with a first tenant_admin (the client's admin token) and log that admin in."""
    body, auth = await provision_with_admin(client, slug, tier=tier)
    return TenantAdmin(
        id=uuid.UUID(body["id"]),
        slug=slug,
        tier=tier,
        admin_email=tenant_admin_email(slug),
        admin_password=TENANT_ADMIN_PASSWORD,
        auth=auth,
        body=body,
    )


async def _tenant(platform: Platform, slug: str) -> Tenant:
    async with platform.control.connection() as conn:
        tenant = await registry.get_by_slug(conn, slug)
    assert tenant is not None, f"no tenant {slug!r} in the registry"
    return tenant


async def tenant_superuser_dsn(platform: Platform, slug: str) -> str:
    """A superuser conninfo for ``slug``'s own database (its server's DSN from the registry, decrypted)."""
    tenant = await _tenant(platform, slug)
    async with platform.control.connection() as conn:
        encrypted = await fleet.dsn_encrypted(conn, tenant.server_id)
    assert encrypted is not None
    return db.with_database(platform.box.decrypt(encrypted), tenant.database_name)


async def tenant_rows(platform: Platform, slug: str, query: str, params: tuple[Any, ...] = ()) -> list[Row]:
    """Rows of ``query`` run as the superuser in ``slug``'s database (autocommit)."""
    dsn = await tenant_superuser_dsn(platform, slug)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def audit_rows(platform: Platform, slug: str, action: str | None = None) -> list[Row]:
    """The tenant's ``audit_log`` (of one action, if given), oldest first."""
    if action is None:
        return await tenant_rows(platform, slug, "SELECT * FROM audit_log ORDER BY id")
    return await tenant_rows(platform, slug, "SELECT * FROM audit_log WHERE action = %s ORDER BY id", (action,))


async def add_user(
    platform: Platform,
    tenant_slug: str,
    email: str,
    role: str,
    password: str = USER_PASSWORD,
    permissions: dict[str, bool] | None = None,
) -> int:
    """Insert a user straight into the tenant's database (as the superuser); returns its id."""
    password_hash = await Passwords(platform.settings.auth).hash(password)
    rows = await tenant_rows(
        platform,
        tenant_slug,
        "INSERT INTO users (email, password_hash, tenant_role, permissions) VALUES (%s, %s, %s, %s) RETURNING id",
        (email, password_hash, role, Jsonb(permissions or {})),
    )
    return int(rows[0]["id"])


async def login(client: Any, slug: str, email: str, password: str = USER_PASSWORD) -> dict[str, Any]:
    """The token pair of a login to ``slug`` (asserts 200)."""
    response = await client.post(f"/t/{slug}/auth/token", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    pair: dict[str, Any] = response.json()
    return pair


async def login_as(client: Any, slug: str, email: str, password: str = USER_PASSWORD) -> dict[str, str]:
    """The ``Authorization`` header of a fresh login."""
    return bearer((await login(client, slug, email, password))["access_token"])


async def admin_session(platform: Platform) -> tuple[uuid.UUID, uuid.UUID]:
    """A new super-admin with a live platform login session: ``(admin id, session id)``.

    What an impersonation token depends on (it stops when that session ends or the admin is disabled).
    """
    async with platform.control.connection() as conn, conn.transaction():
        admin = await admins.insert_admin(conn, email=f"imp-{uuid.uuid4().hex[:12]}@platform.test", password_hash="")
        session_id, _ = await sessions.open_session(
            conn,
            "platform_sessions",
            admin.id,
            key=sessions.refresh_key(platform.settings.security.secret_key),
            ttl=3600,
            source_address=None,
            user_agent=None,
        )
    return admin.id, session_id


# -- platform super-admins -------------------------------------------------------------------


async def make_admin(platform: Platform, email: str = SUPER_ADMIN_EMAIL, password: str = USER_PASSWORD) -> uuid.UUID:
    hashed = await Passwords(platform.settings.auth).hash(password)
    async with platform.control.connection() as conn, conn.transaction():
        admin = await admins.insert_admin(conn, email=email, password_hash=hashed)
    return admin.id


async def platform_login(
    client: httpx.AsyncClient, email: str = SUPER_ADMIN_EMAIL, password: str = USER_PASSWORD
) -> dict[str, Any]:
    response = await client.post("/auth/token", json={"email": email, "password": password}, headers={})
    assert response.status_code == 200, response.text
    pair: dict[str, Any] = response.json()
    return pair


async def super_admin(client: httpx.AsyncClient, platform: Platform, settings: Settings) -> tuple[str, dict[str, str]]:
    """A super-admin made in the registry and logged in: (its actor id, its ``Authorization`` header)."""
    password_hash = await Passwords(settings.auth).hash(SUPER_ADMIN_PASSWORD)
    async with platform.control.connection() as conn:
        admin = await admins.insert_admin(conn, email=SUPER_ADMIN_EMAIL, password_hash=password_hash)
    login = {"email": SUPER_ADMIN_EMAIL, "password": SUPER_ADMIN_PASSWORD}
    response = await client.post("/auth/token", json=login, headers={"Authorization": ""})
    assert response.status_code == 200, response.text
    return f"admin:{admin.id}", bearer(response.json()["access_token"])


async def impersonate(client: Any, platform: Platform, slug: str, role: Role = Role.TENANT_ADMIN) -> dict[str, str]:
    """An impersonation token as the platform would issue it (a super-admin acting inside the tenant)."""
    async with platform.control.connection() as conn:
        tenant = await registry.get_by_slug(conn, slug)
    assert tenant is not None
    auth: Authenticator = client.app.state[AUTH_STATE_KEY]
    admin_id, session_id = await admin_session(platform)
    return bearer(auth.impersonation_token(TenantContext.of(tenant), admin_id, role, session_id).access_token)


async def user_id_of(platform: Platform, slug: str, email: str) -> int:
    (row,) = await tenant_rows(platform, slug, "SELECT id FROM users WHERE lower(email) = lower(%s)", (email,))
    return int(row["id"])
