"""The reconciler: makes the registry and the servers agree again after crashes and failures.

One cycle (``cardvault reconcile [--fix]``, and periodically inside the service):

1. operations left ``running`` whose tenant lock is free (their process died) are finished: an
   interrupted provisioning is retried up to ``max_attempts`` times, then undone; suspend / resume /
   delete / purge are re-run (their steps are idempotent);
2. tenants stuck in ``provisioning`` with no live operation (an undo that itself failed) are undone;
3. soft-deleted tenants past ``delete_after`` are purged;
4. every server is diffed against the registry: a registry row whose database is gone is marked
   ``broken`` (or purged if it was being deleted); a lost login role is re-created; a ``t_*`` database or
   role with no registry row is dropped **only if the ledger shows this control plane made it** — anything
   else is reported as foreign and never touched; one of a tenant with a ``running`` move in the ledger
   (its copy on the target before the switch, its source database before it is retired) is reported as
   ``move_in_progress`` and left to the move (the move's ``_m``/``_p`` names never look like tenant names);
5. on every server, a database PUBLIC may connect to (``public_connect``: every tenant role could log
   in to it) has that privilege revoked, the server's own user keeping CONNECT, one database at a time (one
   that fails, e.g. "tuple concurrently updated" by a GRANT provisioning commits meanwhile, gets
   ``failed: ...`` and is retried next cycle); tenant databases still being provisioned are skipped (their
   provisioning revokes it). A server registered before server
   identities were recorded gets its identity (``server_identity``) recorded, unless another
   registered server already has it (the same server twice: reported, never changed);
6. every server's spare databases are checked against their rows (``spare_reconciler``): leftovers of
   a refill that died and broken spares are dropped, and so are ``cvspare_*`` orphans of this control
   plane; another control plane's are reported only. Spares are never ``t_*`` orphans.

Without ``fix`` nothing is changed; everything found is reported.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime

from controlplane.crypto import tenant_role_verifier
from controlplane.db import AsyncConn
from controlplane.errors import CardVaultError, OperationInProgress
from controlplane.fleet import catalog as fleet_catalog
from controlplane.fleet import repository as fleet_repository
from controlplane.fleet.models import Server
from controlplane.platform import Platform
from controlplane.provisioning import catalog, server_checks
from controlplane.provisioning import repository as ledger
from controlplane.provisioning.models import (
    Finding,
    Operation,
    OperationKind,
    OperationState,
    ReconcileReport,
    SpareClaim,
)
from controlplane.provisioning.service import FirstAdmin, TenantService
from controlplane.provisioning.spare_reconciler import SpareReconciler
from controlplane.provisioning.spares import SparePool
from controlplane.provisioning.steps import Steps
from controlplane.registry import repository as registry
from controlplane.registry.models import Tenant, TenantStatus

log = logging.getLogger(__name__)

_TRANSITIONS = (OperationKind.SUSPEND, OperationKind.RESUME, OperationKind.DELETE)
#: Interrupted operations another package settles (a ``restore``: ``controlplane.backups``' restore upkeep
#: finishes or undoes it from its ledger params); the reconciler reports them and leaves them alone.
_SETTLED_ELSEWHERE = {
    OperationKind.RESTORE: "left to the restore upkeep (cardvault backups upkeep)",
    OperationKind.MOVE: "left to the move upkeep (cardvault tenants move-upkeep)",
}


class Reconciler:
    def __init__(self, platform: Platform, service: TenantService) -> None:
        self._p = platform
        self._service = service
        self._spares = SpareReconciler(platform, service.spares)

    @property
    def spares(self) -> SparePool:
        """The spare pool of the service this reconciler finishes operations with (the refill job's)."""
        return self._service.spares

    async def run(self, *, fix: bool) -> ReconcileReport:
        report = ReconcileReport(fixed=fix)
        await self._interrupted_operations(report, fix)
        await self._stuck_provisioning(report, fix)
        await self._due_purges(report, fix)
        async with self._p.control.connection() as conn:
            servers = await fleet_repository.list_servers(conn)
        for server in servers:
            try:
                await self._diff_server(report, server, fix)
            except Exception as exc:  # one server's unexpected failure does not end the cycle
                log.warning("reconciling server %s failed: %s", server.name, exc, exc_info=exc)
                finding = Finding(kind="reconcile_failed", server=server.name, subject=server.name, detail=str(exc))
                finding.action = f"failed: {exc} (retried next cycle)"
                report.findings.append(finding)
        log.info(
            "reconcile cycle: %d finding(s)%s",
            len(report.findings),
            "".join(f"; {f.kind} {f.subject}: {f.action}" for f in report.findings),
        )
        return report

    # -- 1. interrupted operations ----------------------------------------------------------------

    async def _interrupted_operations(self, report: ReconcileReport, fix: bool) -> None:
        async with self._p.control.connection() as conn:
            operations = await ledger.running(conn)
        for op in operations:
            try:
                async with self._service.locked(op.tenant_id) as conn:
                    if not await _still_running(conn, op):
                        continue
                    finding = Finding(
                        kind="interrupted_operation",
                        server="",
                        subject=op.tenant_slug,
                        detail=f"{op.kind.value} #{op.id} (attempt {op.attempts}) stopped after step {op.step}",
                    )
                    report.findings.append(finding)
                    if fix:
                        finding.action = await self._finish(conn, op)
            except OperationInProgress:
                continue  # a live process holds the tenant: the operation is not interrupted

    async def _finish(self, conn: AsyncConn, op: Operation) -> str:
        if op.kind in _SETTLED_ELSEWHERE:
            return _SETTLED_ELSEWHERE[op.kind]
        tenant = await registry.get_by_id(conn, op.tenant_id)
        steps = Steps(self._p)
        try:
            if op.kind is OperationKind.PROVISION:
                return await self._finish_provision(conn, op, tenant, steps)
            if tenant is None and op.kind is OperationKind.PURGE:
                # It died after its last step (forget): the purge is complete.
                await ledger.finish(conn, op.id, OperationState.SUCCEEDED, steps=[], step="forget")
                return "finished"
            if tenant is None:
                await ledger.finish(conn, op.id, OperationState.FAILED, steps=[], error="tenant no longer exists")
                return "closed"
            if op.kind in _TRANSITIONS:
                await ledger.retry(conn, op.id)
                await self._service.apply_transition(conn, tenant, op.kind, op.id, steps)
                return "finished"
            if op.kind is OperationKind.PURGE:
                await ledger.retry(conn, op.id)
                await self._service.finish_purge(conn, tenant.id, op.id, steps)
                return "finished"
            await ledger.finish(conn, op.id, OperationState.FAILED, steps=[], error="interrupted")
            return "closed"
        except Exception as exc:
            log.warning("could not finish %s #%d: %s", op.kind.value, op.id, exc)
            return f"failed: {exc}"

    async def _finish_provision(self, conn: AsyncConn, op: Operation, tenant: Tenant | None, steps: Steps) -> str:
        if tenant is None or tenant.status is not TenantStatus.PROVISIONING:
            await ledger.finish(conn, op.id, OperationState.ROLLED_BACK, steps=[], error="interrupted")
            return "closed"
        if op.attempts >= self._p.settings.provisioning.max_attempts:
            await self._service.undo_provision(conn, tenant.id, op.id, steps, RuntimeError("too many attempts"))
            return "rolled back"
        await ledger.retry(conn, op.id)
        server = await self._p.fleet.get(conn, tenant.server_name)
        password = await self._password(conn, tenant.id)
        try:
            admin = FirstAdmin.from_ledger(op.params, self._p.box)
            spare = SpareClaim.from_params(op.params)
            await self._service.provision_steps(conn, tenant.id, server, password, op.id, steps, admin, spare)
        except Exception as exc:
            await self._service.undo_provision(conn, tenant.id, op.id, steps, exc)
            return "rolled back"
        return "finished"

    async def _password(self, conn: AsyncConn, tenant_id: uuid.UUID) -> str:
        encrypted = await registry.role_password_encrypted(conn, tenant_id)
        assert encrypted is not None
        return self._p.box.decrypt(encrypted)

    # -- 2. provisioning with nobody working on it ------------------------------------------------

    async def _stuck_provisioning(self, report: ReconcileReport, fix: bool) -> None:
        for tenant in await self._service.list(status=TenantStatus.PROVISIONING):
            try:
                async with self._service.locked(tenant.id) as conn:
                    fresh = await registry.get_by_id(conn, tenant.id)
                    if fresh is None or fresh.status is not TenantStatus.PROVISIONING:
                        continue
                    if any(op.state is OperationState.RUNNING for op in await ledger.for_tenant(conn, tenant.id, 5)):
                        continue  # an interrupted operation that step 1 could not finish this cycle
                    finding = Finding(
                        kind="failed_provisioning",
                        server=tenant.server_name,
                        subject=tenant.slug,
                        detail="provisioning failed earlier and its undo did not complete",
                    )
                    report.findings.append(finding)
                    if fix:
                        op_id = await ledger.start(conn, tenant.id, tenant.slug, OperationKind.REPAIR)
                        await self._service.undo_provision(
                            conn, tenant.id, op_id, Steps(self._p), RuntimeError("failed provisioning")
                        )
                        finding.action = "rolled back"
            except OperationInProgress:
                continue

    # -- 3. purges that are due --------------------------------------------------------------------

    async def _due_purges(self, report: ReconcileReport, fix: bool) -> None:
        now = datetime.now(UTC)
        for tenant in await self._service.list(status=TenantStatus.DELETING):
            if tenant.delete_after is None or tenant.delete_after > now:
                continue
            finding = Finding(
                kind="purge_due",
                server=tenant.server_name,
                subject=tenant.slug,
                detail=f"deleted, grace period ended {tenant.delete_after.isoformat()}",
            )
            report.findings.append(finding)
            if fix:
                finding.action = await self._attempt(
                    self._service.purge(tenant.slug, expect=tenant.id, only_due=True), "purged"
                )

    # -- 4. registry vs servers --------------------------------------------------------------------

    async def _diff_server(self, report: ReconcileReport, server: Server, fix: bool) -> None:
        try:
            async with self._p.control.connection() as conn, self._p.fleet.admin(conn, server.id) as admin:
                databases = await catalog.tenant_databases(admin)
                roles = await catalog.tenant_roles(admin)
                tenants = await registry.list_tenants(conn, server_id=server.id)
                open_databases = await fleet_catalog.open_databases(admin)
                reached = await fleet_catalog.identity(admin) if server.identity is None else None
                tag = await self._service.spares.tag(conn)
        except CardVaultError as exc:
            report.findings.append(
                Finding(kind="server_unreachable", server=server.name, subject=server.name, detail=exc.detail)
            )
            return
        if reached is not None:
            await server_checks.unidentified(self._p, report, server, reached, fix)
        # Tenant databases being provisioned, and this control plane's spares (one being made is open
        # until its role is granted; the spare check drops any left that way), revoke PUBLIC themselves.
        being_provisioned = {t.database_name for t in tenants if t.status is TenantStatus.PROVISIONING}
        open_databases = [d for d in open_databases if not _own_spare(d.name, tag)]
        closing = [d for d in open_databases if d.name not in being_provisioned]
        await server_checks.public_connect(self._p, report, server, closing, fix)
        registered = {t.database_name for t in tenants}
        for tenant in tenants:
            if tenant.status is TenantStatus.PROVISIONING or tenant.status is TenantStatus.BROKEN:
                continue
            if tenant.database_name not in databases:
                await self._missing_database(report, server, tenant, fix)
            elif tenant.role_name not in roles:
                await self._missing_role(report, server, tenant, fix)
        # Tenant databases and roles share the name t_<tenant id hex>.
        orphans = {name: (name in databases, name in roles) for name in (databases | roles) - registered}
        if orphans:
            await self._orphans(report, server, orphans, fix)
        await self._spares.run(report, server, fix)

    async def _missing_database(self, report: ReconcileReport, server: Server, tenant: Tenant, fix: bool) -> None:
        finding = Finding(
            kind="missing_database",
            server=server.name,
            subject=tenant.slug,
            detail=f"registry row ({tenant.status.value}) points at database {tenant.database_name}, which is gone",
        )
        report.findings.append(finding)
        if not fix:
            return
        if tenant.status is TenantStatus.DELETING:
            finding.action = await self._attempt(self._service.purge(tenant.slug, expect=tenant.id), "purged")
            return
        try:
            async with self._service.locked(tenant.id) as conn:
                if await self._settled_meanwhile(conn, server, tenant):
                    finding.action = "skipped: the tenant moved or its database appeared meanwhile"
                    return
                if await self._spares.rename_lost(conn, server, tenant):
                    finding.action = "renamed again from the spare it claimed (a crash lost the rename)"
                    return
                async with conn.transaction():
                    await registry.set_status(conn, tenant.id, TenantStatus.BROKEN, suspended_at=tenant.suspended_at)
                    op_id = await ledger.start(
                        conn, tenant.id, tenant.slug, OperationKind.REPAIR, {"finding": "missing_database"}
                    )
                    await ledger.finish(conn, op_id, OperationState.SUCCEEDED, steps=[], step="mark_broken")
                finding.action = "marked broken (restore from backup, or purge)"
        except OperationInProgress:
            finding.action = "skipped: operation in progress"

    async def _settled_meanwhile(self, conn: AsyncConn, server: Server, tenant: Tenant) -> bool:
        """Whether, seen under the tenant's lock, the finding no longer holds: a move (or restore) that
        switched the tenant between this run's listing of the server and the lock."""
        now = await registry.get_by_id(conn, tenant.id)
        if now is None or now.server_id != server.id or now.database_name != tenant.database_name:
            return True
        async with self._p.fleet.admin(conn, server.id) as admin:
            return await catalog.database_exists(admin, tenant.database_name)

    async def _missing_role(self, report: ReconcileReport, server: Server, tenant: Tenant, fix: bool) -> None:
        finding = Finding(
            kind="missing_role", server=server.name, subject=tenant.slug, detail=f"role {tenant.role_name} is gone"
        )
        report.findings.append(finding)
        if not fix:
            return
        try:
            async with self._service.locked(tenant.id) as conn, self._p.fleet.admin(conn, server.id) as admin:
                verifier = tenant_role_verifier(await self._password(conn, tenant.id))
                await catalog.create_tenant_role(admin, tenant.role_name, tenant.database_name, verifier)
                if tenant.status is not TenantStatus.ACTIVE:
                    await catalog.set_role_login(admin, tenant.role_name, tenant.database_name, allowed=False)
                finding.action = "role re-created"
        except OperationInProgress:
            finding.action = "skipped: operation in progress"

    async def _orphans(
        self, report: ReconcileReport, server: Server, orphans: dict[str, tuple[bool, bool]], fix: bool
    ) -> None:
        ids = {name: uuid.UUID(hex=name[2:]) for name in orphans}
        async with self._p.control.connection() as conn:
            ours = await ledger.known_tenant_ids(conn, ids.values())
            moving = {op.tenant_id for op in await ledger.running(conn) if op.kind is OperationKind.MOVE}
        for name, (has_database, has_role) in sorted(orphans.items()):
            what = " and ".join(w for w, present in (("database", has_database), ("role", has_role)) if present)
            if ids[name] in moving:
                # The tenant's copy on the target before the switch, or its source database before it is
                # retired: the move (or the move upkeep, for an interrupted one) settles it.
                report.findings.append(
                    Finding(
                        kind="move_in_progress",
                        server=server.name,
                        subject=name,
                        detail=f"{what} of a tenant whose move is running: left to the move (or the move upkeep)",
                    )
                )
                continue
            mine = ids[name] in ours
            finding = Finding(
                kind="orphan",
                server=server.name,
                subject=name,
                detail=f"{what} with no registry row; "
                + (
                    "made by this control plane" if mine else "not in this control plane's ledger (foreign): left alone"
                ),
            )
            report.findings.append(finding)
            if not (fix and mine):
                continue
            try:
                async with self._service.locked(ids[name]) as conn:
                    if await registry.get_by_id(conn, ids[name]) is not None:
                        finding.action = "skipped: registered meanwhile"
                        continue
                    async with self._p.fleet.admin(conn, server.id) as admin:
                        await catalog.drop_database(admin, name)
                        await catalog.drop_role(admin, name)
                    finding.action = "dropped"
            except OperationInProgress:
                finding.action = "skipped: operation in progress"

    @staticmethod
    async def _attempt(work: Awaitable[None], done: str) -> str:
        try:
            await work
        except OperationInProgress:
            return "skipped: operation in progress"
        except CardVaultError as exc:
            return f"failed: {exc.detail}"
        return done


def _own_spare(name: str, tag: str) -> bool:
    match = catalog.SPARE_NAME_PATTERN.fullmatch(name)
    return match is not None and match.group(1) == tag


async def _still_running(conn: AsyncConn, op: Operation) -> bool:
    current = await ledger.get(conn, op.id)
    return current is not None and current.state is OperationState.RUNNING
