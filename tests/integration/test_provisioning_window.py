"""The moment between a tenant database's clone and its REVOKE from PUBLIC.

A fresh clone is open to PUBLIC (PostgreSQL's default for a new database) until provisioning gives it
to the tenant's own role, and the first admin is seeded before that. Another tenant's role that
connects in that window must not keep its session: it would read the newcomer's data from then on.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from controlplane.platform import Platform
from controlplane.provisioning import catalog
from controlplane.provisioning.service import FirstAdmin, TenantService
from tests.integration.tenant_support import assert_tenant_works, connect_as, tenant_password


async def test_a_session_opened_before_the_revoke_is_ended(
    service: TenantService, platform: Platform, pg_admin_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    attacker = await service.create(name="Attacker", slug="attacker", tier="starter")
    password = await tenant_password(platform, attacker.id)
    sessions: list[psycopg.AsyncConnection[Any]] = []
    give_to_role = catalog.create_tenant_role

    async def race_in_first(conn: Any, role: str, database: str, verifier: str) -> None:
        # The attacker's role is in the window: the database is cloned, the admin seeded, no REVOKE yet.
        sessions.append(await connect_as(pg_admin_dsn, attacker.role_name, password, database))
        await give_to_role(conn, role, database, verifier)

    monkeypatch.setattr(catalog, "create_tenant_role", race_in_first)
    victim = await service.create(
        name="Victim", slug="victim", tier="starter", admin=FirstAdmin("boss@victim.test", "argon2-hash")
    )

    [session] = sessions
    with pytest.raises(psycopg.OperationalError):
        await session.execute("SELECT email FROM users")
    await session.close()
    await assert_tenant_works(platform, pg_admin_dsn, victim)
    await assert_tenant_works(platform, pg_admin_dsn, await service.get("attacker"))
