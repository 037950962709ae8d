"""Spare databases claimed by new tenants (controlplane/provisioning/spares.py), on a real PostgreSQL.

A create with a ready spare renames it (its database OID and role OID become the tenant's: no clone) and
the tenant works fully: its role logs in with the spare's password, now the tenant's credential, and the
first admin signs in through the API. Concurrent creates never share a spare; tenants made from spares
are as isolated from each other and from the pool as cloned ones; with ``spare_databases = 0`` nothing is
kept and every tenant is cloned.
"""

from __future__ import annotations

import asyncio

import pytest
from litestar.testing import AsyncTestClient

from controlplane.app import create_app
from controlplane.errors import SlugTaken
from controlplane.platform import Platform
from controlplane.provisioning.inputs import FirstAdmin
from controlplane.provisioning.service import TenantService
from controlplane.settings import Settings
from tests.conftest import eventually
from tests.integration.spare_support import (
    claimed_spare,
    objects_of,
    oids,
    ready_spares,
    spare_objects,
    spare_rows,
    spare_service,
    step_names,
    with_spares,
)
from tests.integration.tenant_support import (
    assert_tenant_works,
    provision_with_admin,
    refusal,
    tenant_password,
)


async def test_create_with_a_ready_spare_renames_it_instead_of_cloning(
    settings: Settings, control_dsn: str, pg_admin_dsn: str
) -> None:
    spared = with_spares(settings, 1)
    async with Platform.open(spared, migrate=False) as platform:
        (outcome,) = await TenantService(platform).spares.refill()
        assert (outcome.created, outcome.ready) == (1, 1), outcome
        (spare,) = await spare_rows(control_dsn)
        assert (spare["state"], spare["schema_revision"]) == ("ready", platform.tenant_scripts.head())
        spare_oids = await oids(pg_admin_dsn, spare["database_name"])
        assert None not in spare_oids

        async with AsyncTestClient(app=create_app(spared)) as client:
            _, auth = await provision_with_admin(client, "acme")
            tenant = await TenantService(platform).get("acme")

            # The spare's database and role *are* the tenant's now (same OIDs), under the tenant's names.
            assert await oids(pg_admin_dsn, tenant.database_name) == spare_oids
            assert await oids(pg_admin_dsn, spare["database_name"]) == (None, None)
            # (the ledger is closed inside activate, so activate's own timing is not in it)
            assert await step_names(control_dsn, tenant.id) == ["claim_spare", "seed_admin"]
            assert await claimed_spare(control_dsn, tenant.id) == spare["database_name"]
            # Its password, kept by the spare, is the tenant's credential: the role logs in and runs DML.
            assert await tenant_password(platform, tenant.id) == platform.box.decrypt(spare["role_password_encrypted"])
            await assert_tenant_works(platform, pg_admin_dsn, tenant)
            # The first admin signs in and uses the API.
            cards = await client.get("/t/acme/api/cards", headers=auth)
            assert cards.status_code == 200, cards.text

            # Replaced right after the claim, in the background (the periodic job is 30 s away).
            async def replaced() -> bool:
                ready = await ready_spares(control_dsn)
                return len(ready) == 1 and ready != [spare["database_name"]]

            await eventually(replaced, "the claimed spare replaced in the background")


async def test_concurrent_creates_never_share_a_spare(settings: Settings, control_dsn: str, pg_admin_dsn: str) -> None:
    async with spare_service(settings, 3) as (platform, service):
        await service.spares.refill()
        spares = {
            r["database_name"]: await oids(pg_admin_dsn, r["database_name"]) for r in await spare_rows(control_dsn)
        }
        assert len(spares) == 3

        tenants = await asyncio.gather(
            *(TenantService(platform).create(name=f"Racer {i}", slug=f"racer-{i}", tier="starter") for i in range(6))
        )

        claims = {t.slug: await claimed_spare(control_dsn, t.id) for t in tenants}
        claimed = [name for name in claims.values() if name is not None]
        assert sorted(claimed) == sorted(spares), claims  # each spare once, and 3 tenants cloned
        for tenant in tenants:
            name = claims[tenant.slug]
            steps = await step_names(control_dsn, tenant.id)
            if name is None:
                assert "create_database" in steps and "claim_spare" not in steps, steps
            else:
                assert await oids(pg_admin_dsn, tenant.database_name) == spares[name]
            await assert_tenant_works(platform, pg_admin_dsn, tenant)
        assert await spare_rows(control_dsn) == []
        assert await spare_objects(pg_admin_dsn) == set()


async def test_tenants_from_spares_are_isolated_from_each_other_and_from_the_pool(
    settings: Settings, pg_admin_dsn: str, control_dsn: str
) -> None:
    async with spare_service(settings, 2) as (platform, service):
        await service.spares.refill()
        alpha = await service.create(name="Alpha", slug="alpha", tier="starter")
        bravo = await service.create(name="Bravo", slug="bravo", tier="starter")
        assert await claimed_spare(control_dsn, alpha.id) and await claimed_spare(control_dsn, bravo.id)
        await service.spares.refill()  # two new spares in the pool
        (spare, _) = await spare_rows(control_dsn)
        spare_password = platform.box.decrypt(spare["role_password_encrypted"])
        passwords = {t.slug: await tenant_password(platform, t.id) for t in (alpha, bravo)}

        # Tenant A cannot reach tenant B's database, nor B A's.
        assert "permission denied" in await refusal(
            pg_admin_dsn, alpha.role_name, passwords["alpha"], bravo.database_name
        )
        assert "permission denied" in await refusal(
            pg_admin_dsn, bravo.role_name, passwords["bravo"], alpha.database_name
        )
        # A tenant cannot reach a spare (a future tenant's database), and a spare's role reaches no tenant.
        assert "permission denied" in await refusal(
            pg_admin_dsn, alpha.role_name, passwords["alpha"], spare["database_name"]
        )
        for tenant in (alpha, bravo):
            assert "permission denied" in await refusal(
                pg_admin_dsn, spare["role_name"], spare_password, tenant.database_name
            )


async def test_a_failed_registration_puts_the_spare_back(settings: Settings, control_dsn: str) -> None:
    """The claim is part of the registry transaction: a slug already taken leaves the spare in the pool."""
    async with spare_service(settings, 2) as (_, service):
        await service.spares.refill()
        await service.create(name="Taken", slug="taken", tier="starter")
        await service.spares.refill()
        before = await ready_spares(control_dsn)

        with pytest.raises(SlugTaken):
            await service.create(name="Again", slug="taken", tier="starter")

        assert await ready_spares(control_dsn) == before


async def test_no_spares_kept_with_zero_and_existing_ones_dropped(
    settings: Settings, control_dsn: str, pg_admin_dsn: str
) -> None:
    async with spare_service(settings, 2) as (_, service):
        await service.spares.refill()
        made = await ready_spares(control_dsn)
        assert len(made) == 2 and await spare_objects(pg_admin_dsn) == objects_of(made)

    async with spare_service(settings, 0) as (_, service):
        (outcome,) = await service.spares.refill()
        assert (outcome.dropped, outcome.created, outcome.ready) == (2, 0, 0), outcome
        assert await spare_rows(control_dsn) == []
        assert await spare_objects(pg_admin_dsn) == set()

        admin = FirstAdmin(email="admin@zero.test", password_hash="x")
        tenant = await service.create(name="Zero", slug="zero", tier="starter", admin=admin)
        steps = await step_names(control_dsn, tenant.id)
        assert steps[:3] == ["template", "create_database", "seed_admin"], steps
        assert await claimed_spare(control_dsn, tenant.id) is None
        assert await spare_rows(control_dsn) == []  # nothing refilled behind our back
