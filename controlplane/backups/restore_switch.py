"""Switching a tenant to another database, and settling a switch that failed or was interrupted.

A restore (or a rollback) ends with three steps, after the new database (``plan.source``) is complete:

- ``quiesce``: the live database accepts no connection any more (``ALLOW_CONNECTIONS false``) and its
  sessions are ended: the tenant is in maintenance, its API answers 503 ``tenant_unavailable`` with
  ``Retry-After``, and every replica is told to close the tenant's pool (NOTIFY).
- ``switch``: one transaction on the server renames the live database to ``plan.retired`` and the source
  to the tenant's database name, and gives the tenant role CONNECT on it (``restore_catalog.switch``):
  either both renames happened or neither. The tenant's database keeps its name (``t_<id hex>``), so
  the registry, the reconciler and every cached credential stay right.
- ``record``: one transaction on the control database: the retired database with its ``drop_after``,
  the tenant's status and schema revision, the ledger row ``succeeded``, and a NOTIFY so every replica
  drops its cached tenant and pool.

``settle`` decides from the server alone what happened, so it works the same after an exception in this
process and after a crash (any process, later): if the renames happened (``plan.retired`` exists, or the
tenant's database exists and the source does not), it finishes (``record``); otherwise it undoes: drops
the restored database, re-opens the live one, and for a re-created tenant drops its role and registry
row. The live database is never touched before the switch.
"""

from __future__ import annotations

import logging
import uuid

from controlplane.backups import restore_catalog
from controlplane.backups import restore_repository as repo
from controlplane.backups.restore_models import RestoreMode, SwitchPlan
from controlplane.db import AsyncConn
from controlplane.errors import ServerNotFound
from controlplane.platform import Platform
from controlplane.provisioning import catalog
from controlplane.provisioning import repository as ledger
from controlplane.provisioning.models import Operation, OperationState
from controlplane.provisioning.steps import Steps
from controlplane.registry import repository as registry
from controlplane.registry.models import TIER_QUOTAS, Tenant, TenantStatus, parse_tier

log = logging.getLogger(__name__)


class Switch:
    """The last steps of a restore or rollback, and the settling of one that did not finish."""

    def __init__(self, platform: Platform) -> None:
        self._p = platform

    async def quiesce(self, conn: AsyncConn, tenant: Tenant, plan: SwitchPlan) -> None:
        async with self._p.fleet.admin(conn, plan.server_id) as admin:
            await restore_catalog.close_database(admin, tenant.database_name)
        await repo.notify_tenant_changed(conn, tenant.id)

    async def switch(self, conn: AsyncConn, tenant: Tenant, plan: SwitchPlan) -> None:
        async with self._p.fleet.admin(conn, plan.server_id) as admin:
            await restore_catalog.switch(
                admin,
                live=tenant.database_name,
                source=plan.source,
                retired=plan.retired,
                role=tenant.role_name,
                login=plan.status_after == TenantStatus.ACTIVE.value,
                role_exists=await catalog.role_exists(admin, tenant.role_name),
            )

    async def record(self, conn: AsyncConn, tenant: Tenant, op_id: int, plan: SwitchPlan, steps: Steps) -> None:
        """The switch in the registry and the ledger (idempotent: the settling of a crash runs it again)."""
        async with self._p.fleet.connect_database(conn, plan.server_id, tenant.database_name) as live:
            revision = await restore_catalog.schema_revision(live, self._p.tenant_scripts.version_table)
        status = TenantStatus(plan.status_after)
        async with conn.transaction():
            if plan.retired is not None:
                await repo.retire(
                    conn,
                    server_id=plan.server_id,
                    database_name=plan.retired,
                    tenant_id=tenant.id,
                    reason=_reason(plan, op_id),
                    keep_seconds=self._p.settings.backups.rollback_window,
                )
            if plan.mode is RestoreMode.ROLLBACK:
                await repo.forget_retired(conn, plan.server_id, plan.source)
            if plan.mode is RestoreMode.RECREATE:
                await registry.set_quotas(conn, tenant.id, TIER_QUOTAS[parse_tier(plan.tier or "starter")])
            suspended_at = tenant.suspended_at if status is TenantStatus.SUSPENDED else None
            await registry.set_status(conn, tenant.id, status, suspended_at=suspended_at, schema_revision=revision)
            await registry.set_migration_result(conn, tenant.id, revision=revision, error=None)
            await repo.notify_tenant_changed(conn, tenant.id)
            await ledger.finish(conn, op_id, OperationState.SUCCEEDED, steps=steps.timings)

    # -- settling ---------------------------------------------------------------------------------------

    async def settle(
        self, conn: AsyncConn, tenant_id: uuid.UUID, op_id: int, plan: SwitchPlan, steps: Steps, error: str
    ) -> bool:
        """Finish the operation if its switch happened (True), else undo it (False). Idempotent; the caller
        holds the tenant's lock. ``error``: why it did not finish by itself (kept in the ledger on undo)."""
        failed_step = steps.current
        tenant = await registry.get_by_id(conn, tenant_id)
        if tenant is None:
            # Purged while its restore was interrupted (a soft-deleted tenant whose grace ended): nothing to
            # switch to any more; what the restore made goes too.
            await self._drop(conn, plan, [plan.source, *([plan.retired] if plan.retired else [])])
            await ledger.finish(
                conn, op_id, OperationState.ROLLED_BACK, steps=steps.timings, step=failed_step,
                error=f"{error}; the tenant no longer exists",
            )  # fmt: skip
            return False
        async with self._p.fleet.admin(conn, plan.server_id) as admin:
            names = [tenant.database_name, plan.source, *([plan.retired] if plan.retired else [])]
            present = await restore_catalog.existing(admin, names)
        if plan.retired is not None:
            switched = plan.retired in present
        else:
            switched = tenant.database_name in present and plan.source not in present
        if switched:
            await steps.run("record", lambda: self.record(conn, tenant, op_id, plan, steps))
            log.warning("restore #%d of %s finished after %s", op_id, tenant.slug, error)
            return True
        await self._undo(conn, tenant, op_id, plan, steps, error)
        return False

    async def _undo(
        self, conn: AsyncConn, tenant: Tenant, op_id: int, plan: SwitchPlan, steps: Steps, error: str
    ) -> None:
        failed_step = steps.current
        async with self._p.fleet.admin(conn, plan.server_id) as admin:
            if plan.drop_source_on_undo:
                await catalog.drop_database(admin, plan.source)
            await restore_catalog.reopen_database(admin, tenant.database_name)
            if plan.mode is RestoreMode.RECREATE:
                await catalog.drop_role(admin, tenant.role_name)
        async with conn.transaction():
            if plan.mode is RestoreMode.RECREATE:
                await registry.delete_tenant(conn, tenant.id)  # purged it was, purged it stays
            else:
                await repo.notify_tenant_changed(conn, tenant.id)  # its pools were closed by the quiesce
            await ledger.finish(
                conn, op_id, OperationState.ROLLED_BACK, steps=steps.timings, step=failed_step, error=error
            )
        log.warning("restore #%d of %s undone: %s", op_id, tenant.slug, error)

    async def _drop(self, conn: AsyncConn, plan: SwitchPlan, names: list[str]) -> None:
        try:
            async with self._p.fleet.admin(conn, plan.server_id) as admin:
                for name in names:
                    if name != plan.source or plan.drop_source_on_undo:
                        await catalog.drop_database(admin, name)
        except ServerNotFound:
            pass  # the server was removed: so were its databases

    async def settle_interrupted(self, conn: AsyncConn, op: Operation) -> str:
        """Settle a restore operation left ``running`` by a process that died (the caller holds the lock)."""
        current = await ledger.get(conn, op.id)
        if current is None or current.state is not OperationState.RUNNING:
            return "already settled"
        await ledger.retry(conn, op.id)
        plan = SwitchPlan.from_params(current.params)
        steps = Steps(self._p)
        steps.current = current.step
        finished = await self.settle(conn, op.tenant_id, op.id, plan, steps, "interrupted")
        return "finished" if finished else "rolled back"

    async def settle_tenant(self, conn: AsyncConn, tenant_id: uuid.UUID) -> list[str]:
        """Settle every interrupted restore of the tenant (the caller holds its lock, so none is live)."""
        outcomes = []
        for op in await ledger.for_tenant(conn, tenant_id, limit=10):
            if op.kind.value == "restore" and op.state is OperationState.RUNNING:
                outcomes.append(await self.settle_interrupted(conn, op))
        return outcomes


def _reason(plan: SwitchPlan, op_id: int) -> str:
    if plan.mode is RestoreMode.ROLLBACK:
        return f"rollback #{op_id}"
    return f"restore #{op_id} of backup {plan.backup_id}"
