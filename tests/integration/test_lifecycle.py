"""The tenant lifecycle after provisioning: suspend, resume, rename, change tier, soft delete, purge.

Every transition is checked where it matters: on the server (can the tenant role log in, are its open
sessions ended, is the database still there) and in the registry and ledger. A tenant whose lock is
held by another operation refuses every change with OperationInProgress, and an operation whose slug
is given to another tenant between its lookup and its lock refuses rather than act on that other tenant.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from controlplane.db import AsyncConn
from controlplane.errors import InvalidState, OperationInProgress, TenantNotFound
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import TenantStatus
from controlplane.settings import Settings
from tests.integration.tenant_support import (
    assert_tenant_gone,
    assert_tenant_works,
    connect_as,
    database_exists,
    execute,
    expected_quotas,
    fetch,
    operations,
    quotas,
    reconcile,
    refusal,
    registry_row,
    role_exists,
    snapshot,
    tenant_password,
)

NOT_PERMITTED = "is not permitted to log in"
GRACE = 3600.0


async def test_suspend_locks_the_role_out_and_ends_its_sessions_resume_lets_it_back(
    service: TenantService, platform: Platform, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    password = await tenant_password(platform, tenant.id)
    session = await connect_as(pg_admin_dsn, tenant.role_name, password, tenant.database_name)
    await session.execute("INSERT INTO cards (cardnumber) VALUES ('kept')")

    suspended = await service.suspend("acme")

    assert suspended.status is TenantStatus.SUSPENDED and suspended.suspended_at is not None
    with pytest.raises(psycopg.OperationalError):
        await session.execute("SELECT 1")  # the open session was terminated
    await session.close()
    assert NOT_PERMITTED in await refusal(pg_admin_dsn, tenant.role_name, password, tenant.database_name)
    assert await database_exists(pg_admin_dsn, tenant.database_name)

    resumed = await service.resume("acme")

    assert resumed.status is TenantStatus.ACTIVE and resumed.suspended_at is None
    await assert_tenant_works(platform, pg_admin_dsn, resumed)
    async with await connect_as(pg_admin_dsn, tenant.role_name, password, tenant.database_name) as conn:
        cur = await conn.execute("SELECT cardnumber FROM cards")
        assert await cur.fetchall() == [{"cardnumber": "kept"}]
    kinds = [(op["kind"], op["state"]) for op in await operations(control_dsn, tenant.id)]
    assert kinds == [("provision", "succeeded"), ("suspend", "succeeded"), ("resume", "succeeded")]


async def test_rename_keeps_the_database_and_moves_the_slug(
    service: TenantService, platform: Platform, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")

    renamed = await service.update("acme", new_slug="acme-cards", name="Acme Cards Ltd")

    assert (renamed.id, renamed.database_name, renamed.role_name) == (tenant.id, tenant.database_name, tenant.role_name)
    assert (renamed.slug, renamed.name) == ("acme-cards", "Acme Cards Ltd")
    with pytest.raises(TenantNotFound) as caught:
        await service.get("acme")
    assert caught.value.status == 404
    assert (await service.get("acme-cards")).id == tenant.id
    await assert_tenant_works(platform, pg_admin_dsn, renamed)
    update = (await operations(control_dsn, tenant.id))[-1]
    assert (update["kind"], update["state"], update["tenant_slug"]) == ("update", "succeeded", "acme-cards")
    assert update["params"] == {"slug": "acme-cards", "name": "Acme Cards Ltd"}
    # The old slug is free again.
    again = await service.create(name="New Acme", slug="acme", tier="starter")
    assert again.id != tenant.id


async def test_update_tier_rewrites_quotas_and_keeps_measured_usage(service: TenantService, control_dsn: str) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    await execute(
        control_dsn,
        "UPDATE tenant_quotas SET current_usage = 42 WHERE tenant_id = %s AND quota_type = 'cards'",
        (tenant.id,),
    )

    upgraded = await service.update("acme", tier="enterprise")

    assert upgraded.subscription_tier.value == "enterprise" and upgraded.max_users is None
    assert await quotas(control_dsn, tenant.id) == expected_quotas("enterprise")
    limits = await quotas(control_dsn, tenant.id)
    assert (limits["users"], limits["cards"]) == (None, None)

    downgraded = await service.update("acme", tier="professional")

    assert downgraded.max_users == 10
    limits = await quotas(control_dsn, tenant.id)
    assert (limits["users"], limits["cards"]) == (10, 50_000)
    (row,) = await fetch(
        control_dsn,
        "SELECT current_usage FROM tenant_quotas WHERE tenant_id = %s AND quota_type = 'cards'",
        (tenant.id,),
    )
    assert row["current_usage"] == 42


@pytest.fixture
async def graced(settings: Settings) -> AsyncIterator[TenantService]:
    """A service whose soft deletes keep the tenant for an hour."""
    grace_settings = dataclasses.replace(
        settings, provisioning=dataclasses.replace(settings.provisioning, delete_grace=GRACE)
    )
    async with Platform.open(grace_settings, migrate=False) as opened:
        yield TenantService(opened)


async def test_soft_delete_keeps_the_tenant_for_the_grace_period_locked_out(
    graced: TenantService, platform: Platform, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant = await graced.create(name="Acme", slug="acme", tier="starter")
    password = await tenant_password(platform, tenant.id)
    started = datetime.now(UTC)

    deleted = await graced.delete("acme")

    assert deleted is not None and deleted.status is TenantStatus.DELETING
    assert deleted.delete_after is not None
    assert started + timedelta(seconds=GRACE) <= deleted.delete_after <= datetime.now(UTC) + timedelta(seconds=GRACE)
    assert NOT_PERMITTED in await refusal(pg_admin_dsn, tenant.role_name, password, tenant.database_name)
    assert await database_exists(pg_admin_dsn, tenant.database_name)
    # Not due yet: the reconciler keeps it.
    report = await reconcile(platform, fix=True)
    assert report.clean, report.findings
    assert (await graced.get("acme")).status is TenantStatus.DELETING

    # Resume cancels the deletion.
    resumed = await graced.resume("acme")

    assert resumed.status is TenantStatus.ACTIVE and resumed.delete_after is None
    await assert_tenant_works(platform, pg_admin_dsn, resumed)
    kinds = [op["kind"] for op in await operations(control_dsn, tenant.id)]
    assert kinds == ["provision", "delete", "resume"]


async def test_soft_delete_of_a_suspended_tenant_keeps_it_locked_out(
    graced: TenantService, platform: Platform, pg_admin_dsn: str
) -> None:
    tenant = await graced.create(name="Acme", slug="acme", tier="starter")
    password = await tenant_password(platform, tenant.id)
    await graced.suspend("acme")
    deleted = await graced.delete("acme")
    assert deleted is not None and deleted.status is TenantStatus.DELETING
    assert NOT_PERMITTED in await refusal(pg_admin_dsn, tenant.role_name, password, tenant.database_name)

    # Cancelling the deletion returns it to where it was: still suspended, still locked out.
    restored = await graced.resume("acme")
    assert restored.status is TenantStatus.SUSPENDED and restored.delete_after is None
    assert restored.suspended_at is not None
    assert NOT_PERMITTED in await refusal(pg_admin_dsn, tenant.role_name, password, tenant.database_name)
    assert (await graced.resume("acme")).status is TenantStatus.ACTIVE


async def test_purge_removes_database_role_and_row_but_keeps_the_ledger(
    service: TenantService, platform: Platform, pg_admin_dsn: str, control_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="professional")
    other = await service.create(name="Other", slug="other", tier="starter")
    password = await tenant_password(platform, tenant.id)
    session = await connect_as(pg_admin_dsn, tenant.role_name, password, tenant.database_name)

    assert await service.delete("acme", now=True) is None

    with pytest.raises(psycopg.OperationalError):
        await session.execute("SELECT 1")
    await session.close()
    await assert_tenant_gone(control_dsn, pg_admin_dsn, tenant.id)
    with pytest.raises(TenantNotFound):
        await service.get("acme")
    kinds = [(op["kind"], op["state"]) for op in await operations(control_dsn, tenant.id)]
    assert kinds == [("provision", "succeeded"), ("purge", "succeeded")]
    # Only that tenant went.
    await assert_tenant_works(platform, pg_admin_dsn, await service.get("other"))
    assert other.database_name != tenant.database_name


async def test_purge_after_soft_delete(graced: TenantService, pg_admin_dsn: str, control_dsn: str) -> None:
    tenant = await graced.create(name="Acme", slug="acme", tier="starter")
    await graced.delete("acme")
    await graced.purge("acme")
    await assert_tenant_gone(control_dsn, pg_admin_dsn, tenant.id)
    assert [op["kind"] for op in await operations(control_dsn, tenant.id)] == ["provision", "delete", "purge"]


async def test_a_held_tenant_lock_refuses_every_other_operation(
    service: TenantService, platform: Platform, control_dsn: str, pg_admin_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "suspend": lambda: service.suspend("acme"),
        "resume": lambda: service.resume("acme"),
        "update": lambda: service.update("acme", name="Other"),
        "rename": lambda: service.update("acme", new_slug="acme-two"),
        "tier": lambda: service.update("acme", tier="enterprise"),
        "delete": lambda: service.delete("acme"),
        "delete-now": lambda: service.delete("acme", now=True),
        "purge": lambda: service.purge("acme"),
    }
    before = await snapshot(control_dsn, pg_admin_dsn)
    async with service.locked(tenant.id):
        for name, call in calls.items():
            with pytest.raises(OperationInProgress) as caught:
                await call()
            assert (caught.value.code, caught.value.status) == ("operation_in_progress", 409), name
        with pytest.raises(OperationInProgress):
            async with service.locked(tenant.id):
                pass
    assert await snapshot(control_dsn, pg_admin_dsn) == before
    # Released: the same operation goes through.
    assert (await service.suspend("acme")).status is TenantStatus.SUSPENDED
    assert await role_exists(pg_admin_dsn, tenant.role_name)


async def test_purge_while_provisioning_is_refused(service: TenantService, control_dsn: str, pg_admin_dsn: str) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    await execute(control_dsn, "UPDATE tenants SET status = 'provisioning' WHERE id = %s", (tenant.id,))
    before = await snapshot(control_dsn, pg_admin_dsn)
    with pytest.raises(InvalidState):
        await service.delete("acme", now=True)
    assert await snapshot(control_dsn, pg_admin_dsn) == before


#: Operations by slug, each of which looks the tenant up, locks its id, and acts.
BY_SLUG: dict[str, Callable[[TenantService], Awaitable[object]]] = {
    "suspend": lambda s: s.suspend("acme"),
    "delete": lambda s: s.delete("acme"),
    "delete-now": lambda s: s.delete("acme", now=True),
    "purge": lambda s: s.purge("acme"),
    "update": lambda s: s.update("acme", name="Changed", tier="enterprise"),
}


@pytest.mark.parametrize("operation", list(BY_SLUG))
async def test_an_operation_never_acts_on_a_tenant_that_took_its_slug_meanwhile(
    operation: str,
    service: TenantService,
    platform: Platform,
    control_dsn: str,
    pg_admin_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Paused after its lookup by slug and before the lock: meanwhile (another replica) the tenant is
    renamed and a new tenant takes the slug. The operation holds the first tenant's lock, so acting on
    the newcomer would be unlocked: it refuses (retry), and neither tenant is changed."""
    first = await service.create(name="Acme", slug="acme", tier="starter")
    looked_up, resume = asyncio.Event(), asyncio.Event()
    take_lock = service.locked

    @asynccontextmanager
    async def paused(tenant_id: uuid.UUID) -> AsyncIterator[AsyncConn]:
        looked_up.set()
        await resume.wait()
        async with take_lock(tenant_id) as conn:
            yield conn

    monkeypatch.setattr(service, "locked", paused)
    pending = asyncio.create_task(BY_SLUG[operation](service))
    await looked_up.wait()
    elsewhere = TenantService(platform)
    await elsewhere.update("acme", new_slug="acme-old")
    newcomer = await elsewhere.create(name="Newcomer", slug="acme", tier="starter")
    before = (await registry_row(control_dsn, first.id), await registry_row(control_dsn, newcomer.id))
    resume.set()

    with pytest.raises(OperationInProgress) as caught:
        await pending
    assert (caught.value.status, caught.value.extra["slug"]) == (409, "acme")
    assert (await registry_row(control_dsn, first.id), await registry_row(control_dsn, newcomer.id)) == before
    assert [op["kind"] for op in await operations(control_dsn, newcomer.id)] == ["provision"]
    assert [op["kind"] for op in await operations(control_dsn, first.id)] == ["provision", "update"]
    await assert_tenant_works(platform, pg_admin_dsn, await elsewhere.get("acme"))
    await assert_tenant_works(platform, pg_admin_dsn, await elsewhere.get("acme-old"))


@pytest.fixture
async def ungraced(settings: Settings) -> AsyncIterator[Platform]:
    """A platform whose soft deletes are due for purging at once."""
    changed = dataclasses.replace(settings, provisioning=dataclasses.replace(settings.provisioning, delete_grace=0))
    async with Platform.open(changed, migrate=False) as opened:
        yield opened


async def test_the_reconcilers_purge_leaves_a_tenant_resumed_after_it_was_listed(
    ungraced: Platform, pg_admin_dsn: str, control_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler lists the due purges, then purges each: a tenant resumed in between (another
    replica) is no longer due under the lock and must survive it."""
    platform, service = ungraced, TenantService(ungraced)
    doomed = await service.create(name="Acme", slug="acme", tier="starter")
    await service.delete("acme")
    listed, resume = asyncio.Event(), asyncio.Event()
    take_lock = TenantService.locked

    @asynccontextmanager
    async def paused(self: TenantService, tenant_id: uuid.UUID) -> AsyncIterator[AsyncConn]:
        if tenant_id == doomed.id and not listed.is_set():
            listed.set()
            await resume.wait()
        async with take_lock(self, tenant_id) as conn:
            yield conn

    monkeypatch.setattr(TenantService, "locked", paused)
    pending = asyncio.create_task(reconcile(platform, fix=True))
    await asyncio.wait_for(listed.wait(), timeout=30)
    assert (await TenantService(platform).resume("acme")).status is TenantStatus.ACTIVE
    resume.set()

    report = await pending
    [finding] = [f for f in report.findings if f.kind == "purge_due"]
    assert finding.action is not None and "no longer due" in finding.action
    await assert_tenant_works(platform, pg_admin_dsn, await service.get("acme"))
    assert [op["kind"] for op in await operations(control_dsn, doomed.id)] == ["provision", "delete", "resume"]


async def test_a_purge_expecting_another_tenant_id_is_refused(
    service: TenantService, platform: Platform, pg_admin_dsn: str
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    await service.delete("acme")
    with pytest.raises(OperationInProgress):
        await service.purge("acme", expect=uuid.uuid4(), only_due=True)
    assert (await service.get("acme")).status is TenantStatus.DELETING
    assert await database_exists(pg_admin_dsn, tenant.database_name)
