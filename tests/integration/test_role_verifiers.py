"""Tenant role SCRAM verifiers: cheap for new tenants, and ``rekey_roles`` (``cardvault tenants rekey-roles``)
re-stores old ones from the same password without disturbing the tenant."""

from __future__ import annotations

from psycopg import sql

from controlplane.crypto import DEFAULT_SCRAM_ITERATIONS, TENANT_ROLE_SCRAM_ITERATIONS, scram_sha256_verifier
from controlplane.platform import Platform
from controlplane.provisioning.role_verifiers import Rekeyed, rekey_roles
from controlplane.provisioning.service import TenantService
from tests.integration.tenant_support import assert_tenant_works, connect_as, execute, fetch, tenant_password


async def iterations(admin_dsn: str, role: str) -> int:
    """The iteration count of the role's stored verifier (``SCRAM-SHA-256$<iterations>:...``)."""
    (row,) = await fetch(admin_dsn, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
    stored = str(row["rolpassword"])
    assert stored.startswith("SCRAM-SHA-256$"), "a SCRAM verifier, never a plaintext or md5 password"
    return int(stored.removeprefix("SCRAM-SHA-256$").split(":", 1)[0])


async def test_a_new_tenant_role_gets_a_cheap_verifier(
    service: TenantService, platform: Platform, pg_admin_dsn: str
) -> None:
    tenant = await service.create(name="Quick", slug="quick-login", tier="starter")
    assert await iterations(pg_admin_dsn, tenant.role_name) == TENANT_ROLE_SCRAM_ITERATIONS
    await assert_tenant_works(platform, pg_admin_dsn, tenant)


async def test_rekey_restores_old_verifiers_from_the_same_password_and_leaves_the_rest_alone(
    service: TenantService, platform: Platform, pg_admin_dsn: str
) -> None:
    old = await service.create(name="Old", slug="old-verifier", tier="starter")
    parked = await service.create(name="Parked", slug="parked-verifier", tier="starter")
    for tenant in (old, parked):  # as tenants provisioned before issue 11 have them
        legacy = scram_sha256_verifier(await tenant_password(platform, tenant.id), DEFAULT_SCRAM_ITERATIONS)
        await execute(
            pg_admin_dsn, sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(tenant.role_name), legacy)
        )
    await service.suspend(parked.slug)
    password = await tenant_password(platform, old.id)
    async with await connect_as(pg_admin_dsn, old.role_name, password, old.database_name) as open_session:
        done = await rekey_roles(platform)
        assert {r.slug: r for r in done}[old.slug] == Rekeyed(old.slug, "rekeyed")
        await open_session.execute("SELECT 1")  # sessions already open are not affected
    assert await iterations(pg_admin_dsn, old.role_name) == TENANT_ROLE_SCRAM_ITERATIONS
    assert await tenant_password(platform, old.id) == password  # the same password
    await assert_tenant_works(platform, pg_admin_dsn, old)
    # A suspended tenant is re-keyed too, and stays locked out.
    assert await iterations(pg_admin_dsn, parked.role_name) == TENANT_ROLE_SCRAM_ITERATIONS
    (row,) = await fetch(pg_admin_dsn, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (parked.role_name,))
    assert row["rolcanlogin"] is False
    assert await rekey_roles(platform, [old.slug]) == [Rekeyed(old.slug, "rekeyed")]  # again: harmless
