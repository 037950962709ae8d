"""Tenants are kept apart by their login roles: each reaches its own database and nothing else.

With tenant A's real credentials (its password decrypted from the registry's ``role_password_encrypted``
with ``platform.box``) the server refuses every database but A's own: tenant B's, the template that
tenants are cloned from, the control database, ``postgres`` and ``template1``. The refusal must be a
permission refusal (the password is right: the same credentials open A's own database). And the app,
serving requests for both tenants, only ever connects to a tenant's database as that tenant's role:
``pg_stat_activity`` never shows a tenant connection whose role is not the owner of the database it is in.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from litestar.testing import AsyncTestClient
from psycopg.rows import dict_row

from controlplane.platform import Platform
from controlplane.pools.models import APPLICATION_NAME
from tests.integration.tenant_support import connect_as, provision_with_admin, refusal, tenant_password

Client = AsyncTestClient[Any]


class Tenant:
    def __init__(self, body: dict[str, Any], password: str, auth: dict[str, str]) -> None:
        self.id = uuid.UUID(body["id"])
        self.slug: str = body["slug"]
        self.role: str = body["role_name"]
        self.database: str = body["database_name"]
        self.password = password
        #: ``Authorization`` header of the tenant's admin, for its API.
        self.auth = auth


async def create_tenant(client: Client, platform: Platform, slug: str) -> Tenant:
    body, auth = await provision_with_admin(client, slug)
    return Tenant(body, await tenant_password(platform, uuid.UUID(body["id"])), auth)


def database_of(dsn: str) -> str:
    name = psycopg.conninfo.conninfo_to_dict(dsn).get("dbname")
    assert isinstance(name, str) and name
    return name


async def tenant_sessions(admin_dsn: str, roles: set[str]) -> list[dict[str, Any]]:
    """Every session on the server that is ours (tenant application name) or logged in as a tenant role."""
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True, row_factory=dict_row) as conn:
        cur = await conn.execute(
            "SELECT pid, usename, datname, application_name FROM pg_stat_activity"
            " WHERE application_name = %s OR usename = ANY(%s)",
            (APPLICATION_NAME, list(roles)),
        )
        return await cur.fetchall()


async def test_a_tenant_role_reaches_its_own_database_only(
    client: Client, platform: Platform, pg_admin_dsn: str, control_dsn: str, tenant_template_name: str
) -> None:
    alpha = await create_tenant(client, platform, "alpha")
    bravo = await create_tenant(client, platform, "bravo")
    control = database_of(control_dsn)

    for tenant, other in ((alpha, bravo), (bravo, alpha)):
        # The credentials are right: they open the tenant's own database, as that role.
        async with await connect_as(pg_admin_dsn, tenant.role, tenant.password, tenant.database) as conn:
            cur = await conn.execute("SELECT current_user AS who, current_database() AS db")
            assert await cur.fetchone() == {"who": tenant.role, "db": tenant.database}

        # ... and nothing else: the other tenant's database, the template, the control database, and the
        # maintenance databases PUBLIC could connect to before the server joined the fleet.
        for forbidden in (other.database, tenant_template_name, control, "postgres", "template1"):
            reason = await refusal(pg_admin_dsn, tenant.role, tenant.password, forbidden)
            assert f'permission denied for database "{forbidden}"' in reason, (tenant.slug, forbidden, reason)

        # The role holds no privilege that would let it in some other way.
        async with await psycopg.AsyncConnection.connect(pg_admin_dsn, autocommit=True, row_factory=dict_row) as conn:
            cur = await conn.execute(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolreplication,"
                " pg_has_role(%(role)s, %(other)s, 'MEMBER') AS in_other,"
                " has_database_privilege(%(role)s, %(other_db)s, 'CONNECT') AS connect_other"
                " FROM pg_roles WHERE rolname = %(role)s",
                {"role": tenant.role, "other": other.role, "other_db": other.database},
            )
            assert await cur.fetchone() == {
                "rolsuper": False,
                "rolcreatedb": False,
                "rolcreaterole": False,
                "rolbypassrls": False,
                "rolreplication": False,
                "in_other": False,
                "connect_other": False,
            }


async def test_api_requests_connect_to_each_database_as_its_own_role_only(
    client: Client, platform: Platform, pg_admin_dsn: str
) -> None:
    alpha = await create_tenant(client, platform, "alpha")
    bravo = await create_tenant(client, platform, "bravo")
    tenants = {t.database: t for t in (alpha, bravo)}
    roles = {t.role for t in tenants.values()}
    seen: set[tuple[str, str]] = set()

    async def observe() -> None:
        for session in await tenant_sessions(pg_admin_dsn, roles):
            owner = tenants.get(session["datname"])
            # A tenant connection is in a tenant database, as that database's own role; a tenant role
            # is nowhere else.
            assert owner is not None, session
            assert session["usename"] == owner.role, session
            assert session["application_name"] == APPLICATION_NAME, session
            seen.add((session["usename"], session["datname"]))

    # Interleaved traffic for both tenants, reads and writes, watched after every request.
    written: dict[str, list[str]] = {alpha.slug: [], bravo.slug: []}
    for round_ in range(3):
        for step, tenant in enumerate((alpha, bravo, bravo, alpha)):
            number = f"{tenant.slug}-{round_}-{step}"
            written[tenant.slug].append(number)
            created = await client.post(f"/t/{tenant.slug}/api/cards", json={"cardnumber": number}, headers=tenant.auth)
            assert created.status_code == 201, created.text
            await observe()
            listing = await client.get(f"/t/{tenant.slug}/api/cards", params={"limit": 100}, headers=tenant.auth)
            assert listing.status_code == 200, listing.text
            assert {c["cardnumber"].split("-")[0] for c in listing.json()["items"]} == {tenant.slug}
            await observe()

    # Both tenants were served from pooled connections of their own.
    assert seen == {(alpha.role, alpha.database), (bravo.role, bravo.database)}

    # The rows are where the API put them, seen as each tenant's own role.
    for tenant in (alpha, bravo):
        async with await connect_as(pg_admin_dsn, tenant.role, tenant.password, tenant.database) as conn:
            cur = await conn.execute("SELECT cardnumber FROM cards ORDER BY cardnumber")
            assert [r["cardnumber"] for r in await cur.fetchall()] == sorted(written[tenant.slug])
