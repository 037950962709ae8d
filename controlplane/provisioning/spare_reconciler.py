"""The reconciler's look at one server's spare databases (step 6 of ``Reconciler.run``).

Spares are never tenant orphans (their names are not ``t_*``); here they are checked against their rows:

- a ``creating`` or ``dropping`` row (its refill died half-way) is dropped: database, role, row;
- a ``ready`` spare whose database or role is gone, or whose privileges are not as made (the same check a
  claim runs), is dropped, so no signup claims it;
- a ``cvspare_*`` database or role with no row, claimed by no provisioning that is running or whose tenant
  is registered, is an orphan: dropped if its tag is this control plane's, reported and left alone if
  another control plane made it. (A registered tenant's claimed spare still under its spare name is a
  rename a crash lost: the registry diff renames it again, ``Reconciler._missing_database``.)

It runs under the server's spare lock: while a refill works on the server, the server is skipped (its
spares are in motion, and the refill clears a dead refill's leftovers itself). Claims take no lock; a
spare being claimed is protected by its row (still there) or by the claim recorded in the ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from controlplane.db import AsyncConn
from controlplane.errors import CardVaultError
from controlplane.fleet.models import Server
from controlplane.platform import Platform
from controlplane.provisioning import catalog
from controlplane.provisioning import repository as ledger
from controlplane.provisioning import spares_repository as repo
from controlplane.provisioning.models import Finding, ReconcileReport, Spare, SpareState
from controlplane.provisioning.spares import SparePool, SpareUnusable
from controlplane.registry.models import Tenant, TenantStatus

log = logging.getLogger(__name__)


class SpareReconciler:
    def __init__(self, platform: Platform, pool: SparePool) -> None:
        self._p = platform
        self._pool = pool

    async def run(self, report: ReconcileReport, server: Server, fix: bool) -> None:
        try:
            async with self._pool.locked(server.id) as conn:
                if conn is not None:
                    await self._check(conn, report, server, fix)
        except CardVaultError as exc:  # unreachable: the server diff reports it
            log.warning("spares of %s not checked: %s", server.name, exc.detail)

    async def rename_lost(self, conn: AsyncConn, server: Server, tenant: Tenant) -> bool:
        """For a registered tenant whose database is missing: if its provisioning claimed a spare that is
        still there under the spare's name (a crash of the server lost the rename, whose commit does not
        wait for the flush), rename it again and give its role the access the tenant's status allows."""
        spare = await ledger.claimed_spare(conn, tenant.id)
        if spare is None:
            return False
        try:
            await self._pool.take_over(conn, server.id, spare, tenant.database_name, tenant.role_name)
        except SpareUnusable:
            return False
        if tenant.status is not TenantStatus.ACTIVE:
            async with self._p.fleet.admin(conn, server.id) as admin:
                await catalog.set_role_login(admin, tenant.role_name, tenant.database_name, allowed=False)
        log.warning("tenant %s: its database was found under its spare's name %s and renamed", tenant.slug, spare)
        return True

    async def _check(self, conn: AsyncConn, report: ReconcileReport, server: Server, fix: bool) -> None:
        async with self._p.fleet.admin(conn, server.id) as admin:
            databases, roles = await catalog.spare_objects(admin)
            # Rows first, then claims: a claim deletes its row and records itself in one transaction, so
            # every spare in the catalog is seen in one or the other.
            spares = await repo.for_server(conn, server.id)
            claimed = await ledger.spare_claims(conn, databases | roles)
            # Listed again: a claim finished between the first listing and the reads renamed its spare.
            again_databases, again_roles = await catalog.spare_objects(admin)
            access = {
                s.database_name: await catalog.tenant_access_problems(admin, s.role_name, s.database_name)
                for s in spares
                if s.state is SpareState.READY
            }
        for spare in spares:
            if spare.state is not SpareState.READY:
                await self._interrupted(conn, report, server, spare, fix)
            elif access[spare.database_name]:
                await self._broken(conn, report, server, spare, "; ".join(access[spare.database_name]), fix)
        known = {s.database_name for s in spares} | {s.role_name for s in spares} | claimed
        orphans = ((databases & again_databases) | (roles & again_roles)) - known
        tag = await self._pool.tag(conn)
        for name in sorted(orphans):
            what = " and ".join(w for w, found in (("database", name in databases), ("role", name in roles)) if found)
            match = catalog.SPARE_NAME_PATTERN.fullmatch(name)
            mine = match is not None and match.group(1) == tag
            finding = Finding(
                kind="orphan_spare",
                server=server.name,
                subject=name,
                detail=f"spare {what} with no spare row and no provisioning claiming it; "
                + ("made by this control plane" if mine else "another control plane's (foreign): left alone"),
            )
            report.findings.append(finding)
            if fix and mine:
                finding.action = await self._attempt(self._pool.drop_objects(conn, server.id, name))

    async def _interrupted(
        self, conn: AsyncConn, report: ReconcileReport, server: Server, spare: Spare, fix: bool
    ) -> None:
        finding = Finding(
            kind="interrupted_spare",
            server=server.name,
            subject=spare.database_name,
            detail=f"left {spare.state.value} by a refill that stopped",
        )
        report.findings.append(finding)
        if fix:
            finding.action = await self._attempt(self._pool.discard(conn, server.id, spare))

    async def _broken(
        self, conn: AsyncConn, report: ReconcileReport, server: Server, spare: Spare, problems: str, fix: bool
    ) -> None:
        finding = Finding(
            kind="broken_spare", server=server.name, subject=spare.database_name, detail=f"ready, but {problems}"
        )
        report.findings.append(finding)
        if not fix:
            return
        if not await repo.mark_dropping(conn, [spare.database_name]):
            finding.action = "skipped: claimed meanwhile"
            return
        finding.action = await self._attempt(self._pool.discard(conn, server.id, spare))

    @staticmethod
    async def _attempt(work: Awaitable[None]) -> str:
        try:
            await work
        except CardVaultError as exc:
            return f"failed: {exc.detail}"
        except Exception as exc:
            return f"failed: {exc}"
        return "dropped"
