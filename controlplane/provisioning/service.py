"""The tenant lifecycle: create, suspend, resume, update, delete, purge.

Each operation runs under the tenant's advisory lock (on the control database, held by the session that
does the work: ``locking``), is recorded in ``tenant_operations``, and is made of idempotent steps. A failure inside
a step undoes what was done; a crash leaves the operation ``running`` with its lock released, which is
how the reconciler recognises it and finishes or undoes it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from controlplane import db
from controlplane.accounts import directory
from controlplane.accounts import repository as accounts
from controlplane.crypto import new_password, tenant_role_verifier
from controlplane.db import AsyncConn
from controlplane.errors import (
    CardVaultError,
    InvalidState,
    OperationFailed,
)
from controlplane.fleet.models import Server
from controlplane.platform import Platform
from controlplane.provisioning import catalog, placement
from controlplane.provisioning import repository as ledger
from controlplane.provisioning.inputs import FirstAdmin, validate_name
from controlplane.provisioning.models import OperationKind, OperationState, SpareClaim
from controlplane.provisioning.spares import SparePool
from controlplane.provisioning.steps import Steps
from controlplane.provisioning.template import Templates
from controlplane.provisioning.updates import TenantUpdates
from controlplane.registry import repository as registry
from controlplane.registry.models import (
    TIER_QUOTAS,
    QuotaType,
    Tenant,
    TenantStatus,
    database_name_for,
    parse_tier,
    role_name_for,
    validate_slug,
)
from controlplane.storage import Storage
from controlplane.storage.local import LocalStorage

__all__ = ["FirstAdmin", "TenantService", "validate_name"]

log = logging.getLogger(__name__)


class TenantService(TenantUpdates):
    """One service behind both the CLI and the admin API."""

    def __init__(self, platform: Platform, storage: Storage | None = None) -> None:
        super().__init__(platform)
        #: Where the tenants' files live; a purge removes the tenant's whole area.
        self.storage = storage if storage is not None else LocalStorage(platform.settings.data_dir / "storage")
        self.templates = Templates(platform)
        #: Spare databases: claimed by ``create`` instead of a clone when one is ready.
        self.spares = SparePool(platform, self.templates)
        self._provisioned: list[Callable[[float, bool], None]] = []

    def on_provisioned(self, listener: Callable[[float, bool], None]) -> None:
        """Call ``listener(seconds, succeeded)`` after every provisioning this process runs (metrics)."""
        self._provisioned.append(listener)

    # -- create ---------------------------------------------------------------------------------

    async def create(
        self,
        *,
        name: str,
        slug: str,
        tier: str,
        admin: FirstAdmin | None = None,
        with_registration: Callable[[AsyncConn, uuid.UUID], Awaitable[None]] | None = None,
    ) -> Tenant:
        """Register and provision a tenant (with its first tenant_admin when ``admin`` is given);
        on failure nothing of it is left anywhere.

        ``with_registration(conn, tenant_id)`` writes the caller's own rows about the tenant in the
        transaction that registers it (rows that reference ``tenants`` with ON DELETE CASCADE): they
        exist exactly when the tenant does, whatever fails or crashes afterwards."""
        name = validate_name(name)
        validate_slug(slug)
        tier_ = parse_tier(tier)
        tenant_id = uuid.uuid4()
        password = new_password()
        params: dict[str, object] = {"tier": tier_.value}
        if admin is not None:
            # Kept (encrypted) in the ledger so the reconciler can finish an interrupted provisioning.
            params["admin"] = {"email": admin.email, "password_hash": self._p.box.encrypt(admin.password_hash)}
        async with self.locked(tenant_id) as conn:
            server = await placement.place(self._p, conn)
            async with conn.transaction():
                # A spare claimed here goes back to the pool if the registration fails (slug taken).
                spare = await self.spares.claim(conn, server.id)
                claim = SpareClaim(name=spare.database_name, revision=spare.schema_revision) if spare else None
                if claim is not None:
                    params["spare"] = claim.to_params()
                await registry.insert_tenant(
                    conn,
                    tenant_id=tenant_id,
                    slug=slug,
                    name=name,
                    tier=tier_,
                    max_users=TIER_QUOTAS[tier_][QuotaType.USERS],
                    server_id=server.id,
                    database_name=database_name_for(tenant_id),
                    role_name=role_name_for(tenant_id),
                    # A spare's role keeps its password: it becomes the tenant's credential.
                    role_password_encrypted=spare.role_password_encrypted if spare else self._p.box.encrypt(password),
                )
                op_id = await ledger.start(
                    conn, tenant_id, slug, OperationKind.PROVISION, {"server": server.name, **params}
                )
                if with_registration is not None:
                    await with_registration(conn, tenant_id)
            steps = Steps(self._p)
            started = time.perf_counter()
            try:
                await self.provision_steps(conn, tenant_id, server, password, op_id, steps, admin, claim)
            except Exception as exc:
                self._observe(time.perf_counter() - started, succeeded=False)
                failed_step = steps.current  # before the undo runs its own steps
                await self.undo_provision(conn, tenant_id, op_id, steps, exc)
                if isinstance(exc, CardVaultError):
                    raise
                raise OperationFailed(
                    f"provisioning failed at step {failed_step}: {exc}; nothing was kept", step=failed_step
                ) from exc
            finally:
                if claim is not None:
                    self.spares.claimed(server.id)  # replaced in the background, off this signup's path
            self._observe(time.perf_counter() - started, succeeded=True)
            tenant = await registry.get_by_id(conn, tenant_id)
        assert tenant is not None
        log.info("tenant %s provisioned on %s in %s", slug, server.name, steps.timings)
        return tenant

    def _observe(self, seconds: float, *, succeeded: bool) -> None:
        for listener in self._provisioned:
            listener(seconds, succeeded)

    async def provision_steps(
        self,
        conn: AsyncConn,
        tenant_id: uuid.UUID,
        server: Server,
        password: str,
        op_id: int,
        steps: Steps,
        admin: FirstAdmin | None = None,
        spare: SpareClaim | None = None,
    ) -> None:
        """The idempotent provisioning steps, also used by the reconciler to finish an interrupted one.

        With a claimed ``spare``, its database and role are renamed to the tenant's (``claim_spare``)
        instead of cloning the template and creating the role.
        """
        database, role = database_name_for(tenant_id), role_name_for(tenant_id)
        if spare is not None:
            revision = spare.revision
            await steps.run("claim_spare", lambda: self.spares.take_over(conn, server.id, spare.name, database, role))
        else:
            revision = await steps.run("template", lambda: self.templates.ensure(conn, server))
            await steps.run("create_database", lambda: self.templates.clone(conn, server, database))

        if admin is not None:

            async def seed_admin() -> None:
                async with self._p.fleet.connect_database(conn, server.id, database) as tenant_db:
                    await accounts.seed_tenant_admin(tenant_db, admin.email, admin.password_hash)
                key = directory.directory_key(self._p.settings.security.secret_key)
                await directory.add_entry(conn, key, tenant_id, admin.email)  # the finder knows it at once

            await steps.run("seed_admin", seed_admin)

        async def create_role() -> None:
            async with self._p.fleet.admin(conn, server.id) as admin:
                await catalog.create_tenant_role(admin, role, database, tenant_role_verifier(password))

        if spare is None:
            await steps.run("create_role", create_role)

        async def activate() -> None:
            tenant = await registry.get_by_id(conn, tenant_id)
            assert tenant is not None
            async with conn.transaction():
                # No need to wait for the flush: if a crash loses this commit, the tenant is back in
                # provisioning with its operation running, and the reconciler finishes it again.
                await db.commit_without_flush(conn)
                await registry.set_quotas(conn, tenant_id, TIER_QUOTAS[tenant.subscription_tier])
                await registry.set_status(conn, tenant_id, TenantStatus.ACTIVE, schema_revision=revision)
                await ledger.finish(conn, op_id, OperationState.SUCCEEDED, steps=steps.timings)

        await steps.run("activate", activate)

    async def undo_provision(
        self, conn: AsyncConn, tenant_id: uuid.UUID, op_id: int, steps: Steps, cause: BaseException
    ) -> None:
        """Remove everything a failed provisioning made. If even that fails, the reconciler finishes it."""
        failed_step = steps.current
        try:
            tenant = await registry.get_by_id(conn, tenant_id)
            spare = await ledger.claimed_spare(conn, tenant_id) if tenant else None
            if tenant is not None and spare is not None:
                # Not renamed yet (or half): the spare goes too, never back to the pool.
                await steps.run("drop_spare", lambda: self.spares.drop_objects(conn, tenant.server_id, spare))
            await self._remove_everything(conn, tenant_id, steps)
            await ledger.finish(
                conn, op_id, OperationState.ROLLED_BACK, steps=steps.timings, step=failed_step, error=str(cause)
            )
        except Exception as undo_exc:
            log.error("undoing provisioning of %s failed (%s); the reconciler will finish it", tenant_id, undo_exc)
            await ledger.finish(
                conn,
                op_id,
                OperationState.FAILED,
                steps=steps.timings,
                step=failed_step,
                error=f"{cause}; undo failed: {undo_exc}",
            )

    async def _remove_everything(self, conn: AsyncConn, tenant_id: uuid.UUID, steps: Steps) -> None:
        """Drop the tenant's database and role, remove its files, then its registry row (in that order:
        until the row goes, an interrupted purge is finished by the reconciler, so nothing is orphaned)."""
        tenant = await registry.get_by_id(conn, tenant_id)
        if tenant is None:
            return
        database, role = tenant.database_name, tenant.role_name

        async def drop_database() -> None:
            async with self._p.fleet.admin(conn, tenant.server_id) as admin:
                await catalog.drop_database(admin, database)

        async def drop_role() -> None:
            async with self._p.fleet.admin(conn, tenant.server_id) as admin:
                await catalog.drop_role(admin, role)

        async def drop_files() -> None:
            removed = await self.storage.delete_all(tenant_id)
            log.info("removed %d stored file(s) of tenant %s", removed, tenant_id)

        async def forget() -> None:
            await registry.delete_tenant(conn, tenant_id)

        await steps.run("drop_database", drop_database)
        await steps.run("drop_role", drop_role)
        await steps.run("drop_files", drop_files)
        await steps.run("forget", forget)

    # -- lifecycle ------------------------------------------------------------------------------

    async def suspend(self, slug: str) -> Tenant:
        return await self._transition(slug, OperationKind.SUSPEND, {TenantStatus.ACTIVE})

    async def resume(self, slug: str) -> Tenant:
        """Re-open a suspended tenant, or cancel the pending deletion of a soft-deleted one (which
        returns it to active, or to suspended if it was suspended when it was deleted)."""
        return await self._transition(slug, OperationKind.RESUME, {TenantStatus.SUSPENDED, TenantStatus.DELETING})

    async def delete(self, slug: str, *, now: bool = False) -> Tenant | None:
        """Soft delete (locked out, purged after the grace period) or, with ``now``, purge at once."""
        if now:
            await self.purge(slug)
            return None
        return await self._transition(
            slug, OperationKind.DELETE, {TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.BROKEN}
        )

    async def _transition(self, slug: str, kind: OperationKind, allowed_from: set[TenantStatus]) -> Tenant:
        async with self.locked_slug(slug) as (conn, tenant):
            if tenant.status not in allowed_from:
                raise InvalidState(
                    f"cannot {kind.value} a tenant that is {tenant.status.value}",
                    status=tenant.status.value,
                )
            op_id = await ledger.start(conn, tenant.id, slug, kind)
            steps = Steps(self._p)
            try:
                await self.apply_transition(conn, tenant, kind, op_id, steps)
            except Exception as exc:
                failed_step = steps.current
                await self._match_access(conn, tenant.id)
                await ledger.finish(
                    conn, op_id, OperationState.FAILED, steps=steps.timings, step=failed_step, error=str(exc)
                )
                if isinstance(exc, CardVaultError):
                    raise
                raise OperationFailed(f"{kind.value} failed at step {failed_step}: {exc}", step=failed_step) from exc
            updated = await registry.get_by_id(conn, tenant.id)
        assert updated is not None
        return updated

    async def _match_access(self, conn: AsyncConn, tenant_id: uuid.UUID) -> None:
        """Undo of a failed transition: the role may log in exactly when the registry says active."""
        tenant = await registry.get_by_id(conn, tenant_id)
        if tenant is None or tenant.status is TenantStatus.BROKEN:
            return
        try:
            async with self._p.fleet.admin(conn, tenant.server_id) as admin:
                allowed = tenant.status is TenantStatus.ACTIVE
                await catalog.set_role_login(admin, tenant.role_name, tenant.database_name, allowed=allowed)
        except Exception as exc:
            log.error("could not restore the access of %s after a failed operation: %s", tenant.slug, exc)

    async def apply_transition(
        self, conn: AsyncConn, tenant: Tenant, kind: OperationKind, op_id: int, steps: Steps
    ) -> None:
        """Steps of suspend / resume / delete; idempotent, so the reconciler can re-run them."""
        allow_login = kind is OperationKind.RESUME
        if kind is OperationKind.RESUME and tenant.status is TenantStatus.DELETING and tenant.suspended_at:
            # Cancelling a deletion returns the tenant to where it was: suspended stays suspended.
            status, suspended_at, delete_after = TenantStatus.SUSPENDED, tenant.suspended_at, None
            allow_login = False
        elif kind is OperationKind.RESUME:
            status, suspended_at, delete_after = TenantStatus.ACTIVE, None, None
        elif kind is OperationKind.SUSPEND:
            status, suspended_at, delete_after = TenantStatus.SUSPENDED, datetime.now(UTC), None
        else:
            grace = timedelta(seconds=self._p.settings.provisioning.delete_grace)
            status, suspended_at, delete_after = TenantStatus.DELETING, tenant.suspended_at, datetime.now(UTC) + grace

        async def set_access() -> None:
            async with self._p.fleet.admin(conn, tenant.server_id) as admin:
                await catalog.set_role_login(admin, tenant.role_name, tenant.database_name, allowed=allow_login)

        async def record() -> None:
            async with conn.transaction():
                await registry.set_status(conn, tenant.id, status, suspended_at=suspended_at, delete_after=delete_after)
                await ledger.finish(conn, op_id, OperationState.SUCCEEDED, steps=steps.timings)

        if tenant.status is not TenantStatus.BROKEN:
            await steps.run("set_access", set_access)
        await steps.run("record", record)

    async def purge(self, slug: str, *, expect: uuid.UUID | None = None, only_due: bool = False) -> None:
        """End every session, drop the database and the role, remove the tenant's files, forget the
        tenant. Nothing is left.

        For the reconciler, which acts on what it listed a moment ago: ``expect`` refuses a slug that
        now names another tenant, ``only_due`` a tenant that is no longer deleting and past its grace
        period under the lock (resumed meanwhile): either is left alone.
        """
        async with self.locked_slug(slug, expect=expect) as (conn, tenant):
            if tenant.status is TenantStatus.PROVISIONING:
                raise InvalidState("the tenant is still being provisioned", status=tenant.status.value)
            now = datetime.now(UTC)
            if only_due and (
                tenant.status is not TenantStatus.DELETING or tenant.delete_after is None or tenant.delete_after > now
            ):
                raise InvalidState("the tenant is no longer due for purging", status=tenant.status.value)
            # From here on the tenant is deleting and due: if a step fails (or the process dies), the
            # reconciler finishes the purge instead of finding an active tenant without a database.
            due = min(tenant.delete_after, now) if tenant.delete_after else now
            async with conn.transaction():
                await registry.set_status(
                    conn, tenant.id, TenantStatus.DELETING, suspended_at=tenant.suspended_at, delete_after=due
                )
                op_id = await ledger.start(conn, tenant.id, slug, OperationKind.PURGE)
            steps = Steps(self._p)
            try:
                await self.finish_purge(conn, tenant.id, op_id, steps)
            except CardVaultError:
                raise
            except Exception as exc:
                raise OperationFailed(
                    f"purge failed at step {steps.current}: {exc}; the reconciler will finish it", step=steps.current
                ) from exc

    async def finish_purge(self, conn: AsyncConn, tenant_id: uuid.UUID, op_id: int, steps: Steps) -> None:
        try:
            await self._remove_everything(conn, tenant_id, steps)
        except Exception as exc:
            await ledger.finish(
                conn, op_id, OperationState.FAILED, steps=steps.timings, step=steps.current, error=str(exc)
            )
            raise
        await ledger.finish(conn, op_id, OperationState.SUCCEEDED, steps=steps.timings)
