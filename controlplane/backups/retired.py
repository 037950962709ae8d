"""Databases a restore replaced: switching back to one (rollback), dropping them after the window, and the
restore upkeep job.

- ``rollback(slug)`` (``cardvault backups rollback SLUG``): the tenant's newest retired database that
  still exists becomes its database again, by the same quiesce / switch / record steps as a restore (a
  ``restore`` operation with mode ``rollback``); the database it replaces is retired in turn, for the same
  window.
- ``drop_due()``: retired databases past ``drop_after`` (``CARDVAULT_RESTORE_ROLLBACK_WINDOW`` after the
  restore), and those of a purged tenant, are dropped under the tenant's lock (a rollback in progress keeps
  its database), then forgotten.
- ``RestoreUpkeep.run()`` (leader job ``restore_upkeep``, and ``cardvault backups upkeep``): settles restores
  interrupted by a crash (finished if their switch happened, else undone: ``restore_switch``), drops the
  retired databases that are due, and the scratch databases of verifications that died.
"""

from __future__ import annotations

import logging
import secrets

from controlplane.backups import restore_catalog
from controlplane.backups import restore_repository as repo
from controlplane.backups.restore_models import NothingToRollBack, RestoreMode, SwitchPlan
from controlplane.backups.restore_switch import Switch
from controlplane.backups.verification import Verifier
from controlplane.errors import (
    CardVaultError,
    InvalidState,
    OperationFailed,
    OperationInProgress,
    ServerNotFound,
)
from controlplane.platform import Platform
from controlplane.provisioning import catalog
from controlplane.provisioning import repository as ledger
from controlplane.provisioning.models import Operation, OperationKind, OperationState
from controlplane.provisioning.service import TenantService
from controlplane.provisioning.steps import Steps
from controlplane.registry.models import TenantStatus

log = logging.getLogger(__name__)


class RetiredDatabases:
    """Rollbacks to retired databases, and their drop once the rollback window has passed."""

    def __init__(self, platform: Platform, tenants: TenantService, switch: Switch | None = None) -> None:
        self._p = platform
        self._tenants = tenants
        self.switch = switch or Switch(platform)

    async def rollback(self, slug: str, *, requested_by: str | None = None) -> Operation:
        """Switch the tenant back to the database its last restore replaced; the finished operation."""
        async with self._tenants.locked_slug(slug) as (conn, tenant):
            if tenant.status not in (TenantStatus.ACTIVE, TenantStatus.SUSPENDED):
                raise InvalidState(
                    f"cannot roll back a tenant that is {tenant.status.value}", status=tenant.status.value
                )
            await self.switch.settle_tenant(conn, tenant.id)
            candidates = [r for r in await repo.retired_for(conn, tenant.id) if r.server_id == tenant.server_id]
            async with self._p.fleet.admin(conn, tenant.server_id) as admin:
                present = await restore_catalog.existing(admin, [r.database_name for r in candidates])
            source = next((r.database_name for r in candidates if r.database_name in present), None)
            if source is None:
                raise NothingToRollBack(f"tenant {slug!r} has no retired database to switch back to", slug=slug)
            plan = SwitchPlan(
                mode=RestoreMode.ROLLBACK,
                server_id=tenant.server_id,
                source=source,
                retired=restore_catalog.retired_name(tenant.id, secrets.token_hex(4)),
                status_after=tenant.status.value,
                requested_by=requested_by,
            )
            op_id = await ledger.start(conn, tenant.id, tenant.slug, OperationKind.RESTORE, plan.to_params())
            steps = Steps(self._p)
            try:
                await steps.run("quiesce", lambda: self.switch.quiesce(conn, tenant, plan))
                await steps.run("switch", lambda: self.switch.switch(conn, tenant, plan))
                await steps.run("record", lambda: self.switch.record(conn, tenant, op_id, plan, steps))
            except Exception as exc:
                failed_step = steps.current
                if not await self.switch.settle(conn, tenant.id, op_id, plan, steps, str(exc)):
                    if isinstance(exc, CardVaultError):
                        raise
                    raise OperationFailed(f"rollback failed at step {failed_step}: {exc}", step=failed_step) from exc
            found = await ledger.get(conn, op_id)
        assert found is not None
        return found

    async def drop_due(self) -> int:
        """Drop the retired databases whose rollback window has passed; how many were dropped."""
        async with self._p.control.connection() as conn:
            due = await repo.due_retired(conn)
        dropped = 0
        for retired in due:
            try:
                async with self._tenants.locked(retired.tenant_id) as conn:
                    if not await repo.still_due(conn, retired.server_id, retired.database_name):
                        continue  # brought back by a rollback, or the tenant re-created, meanwhile
                    if not retired.database_name.startswith(f"t_{retired.tenant_id.hex}_"):
                        log.error("refusing to drop %s: not a retired database's name", retired.database_name)
                        continue
                    try:
                        async with self._p.fleet.admin(conn, retired.server_id) as admin:
                            await catalog.drop_database(admin, retired.database_name)
                    except ServerNotFound:
                        pass  # the server is gone, and its databases with it
                    await repo.forget_retired(conn, retired.server_id, retired.database_name)
                    dropped += 1
            except OperationInProgress:
                continue  # an operation on the tenant is running: next time
            except CardVaultError as exc:
                log.warning("retired database %s not dropped: %s", retired.database_name, exc.detail)
        return dropped


class RestoreUpkeep:
    """The restore upkeep: interrupted restores settled, retired databases dropped, verification leftovers
    cleared (one leader job; ``cardvault backups upkeep`` runs it once)."""

    def __init__(
        self, platform: Platform, tenants: TenantService, retired: RetiredDatabases, verifier: Verifier
    ) -> None:
        self._p = platform
        self._tenants = tenants
        self.retired = retired
        self._verifier = verifier

    async def settle_interrupted(self) -> list[str]:
        """Restores left ``running`` by a process that died, each finished or undone: what was done."""
        async with self._p.control.connection() as conn:
            running = await repo.running_restores(conn)
        outcomes = []
        for op_id, tenant_id in running:
            try:
                async with self._tenants.locked(tenant_id) as conn:
                    op = await ledger.get(conn, op_id)
                    if op is None or op.state is not OperationState.RUNNING:
                        continue
                    outcome = await self.retired.switch.settle_interrupted(conn, op)
                    outcomes.append(f"restore #{op_id} of {op.tenant_slug}: {outcome}")
            except OperationInProgress:
                continue  # a live process runs it
            except CardVaultError as exc:
                outcomes.append(f"restore #{op_id}: not settled ({exc.detail})")
        return outcomes

    async def run(self) -> str:
        settled = await self.settle_interrupted()
        dropped = await self.retired.drop_due()
        cleared = await self._verifier.clear_leftovers()
        parts = [*settled, f"{dropped} retired database(s) dropped", f"{cleared} verification leftover(s) dropped"]
        return "; ".join(parts)
