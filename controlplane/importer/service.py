"""``LegacyImporter``: a legacy single-tenant installation (SQLite + uploads) moved into a tenant.

All or nothing. The file is read and normalised first (a worker thread; nothing is locked yet). Then,
under the tenant's lifecycle lock (no suspend, delete or restore meanwhile), in **one transaction** of
the tenant's database over a management connection:

1. lock the usage counters and the tables (``repository``), read what the tenant has;
2. plan the rows (``plan``: ids kept or mapped, merges) and check the quotas (users, cards, storage
   bytes, as creates through the API do) **before anything is written**;
3. store the images (one object per card, keys from ``storage.new_key``), COPY every table, write the
   ``files`` rows and the tenant's audit row, move the identity sequences past the imported ids, commit.

A failure anywhere rolls the transaction back and removes every object stored so far, so the tenant is
exactly as before; the error says why. A dry run reads every image and writes every row of the plan
(so the database checks them) but stores no object and stops before the rows whose ids come from a
sequence (``files``, the audit row: sequences are not transactional), then rolls back: its report is
what the import would do, its errors what it would fail with.
A crash before the commit leaves nothing in the database; objects it stored have no ``files`` row and
are found by the storage hygiene job. Every import is audited in ``platform_audit`` (``tenant.import``,
dry runs too, with ``dry_run`` in the details; by the route or command that ran it) and a committed one
in the tenant's ``audit_log`` (``legacy.import``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from controlplane.audit import repository as tenant_audit
from controlplane.cards.errors import QuotaExceeded
from controlplane.context import AuditContext
from controlplane.db import AsyncConn
from controlplane.errors import InvalidState, OperationInProgress, ServerUnavailable
from controlplane.importer import repository
from controlplane.importer.errors import ImportFailed
from controlplane.importer.legacy import LegacyData, read_legacy
from controlplane.importer.models import ImportReport
from controlplane.importer.plan import Plan, build_plan
from controlplane.importer.uploads import StoredImage, digest_all, remove_all, store_all
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.registry.models import LimitLookup, QuotaType, Tenant, TenantStatus
from controlplane.storage import Storage
from controlplane.usage.quotas import limits_for

#: Tenants an import may write into (a suspended one too: an operator may import before re-opening it).
IMPORTABLE = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED})


class _DryRun(Exception):
    """Raised at the end of a dry run to roll its transaction back."""


class LegacyImporter:
    """Imports legacy SQLite installations into tenants (the CLI's ``import-sqlite`` and the admin API)."""

    def __init__(self, platform: Platform, tenants: TenantService, storage: Storage | None = None) -> None:
        self._p = platform
        self._tenants = tenants
        #: The tenants' file storage (the one the tenant API serves images from).
        self._storage = storage if storage is not None else tenants.storage

    async def run(
        self, slug: str, source: Path, uploads: Path | None, *, dry_run: bool, actor: AuditContext
    ) -> ImportReport:
        """Import ``source`` (with images under ``uploads``) into tenant ``slug``; its report.

        ``actor`` is who the tenant's audit row names; the callers (route, CLI) record the platform
        action themselves (``tenant.import``, with ``summary(report)``), unpacking included.
        """
        started = time.monotonic()
        await self._tenants.get(slug)  # an unknown tenant is a 404 before the file is read
        max_image_bytes = self._p.settings.http.max_image_bytes
        legacy = await asyncio.to_thread(read_legacy, source, uploads, max_image_bytes=max_image_bytes)
        async with self._tenants.locked_slug(slug) as (control, tenant):
            if tenant.status not in IMPORTABLE:
                raise InvalidState(f"tenant {slug!r} is {tenant.status.value}; import into an active tenant")
            limits = limits_for(self._p.control, tenant.id, ceiling=self._p.settings.billing.quota_ceiling)
            async with self._p.fleet.connect_database(control, tenant.server_id, tenant.database_name) as conn:
                plan = await self._write(conn, tenant, legacy, limits, dry_run=dry_run, actor=actor)
        issues = legacy.issues
        return ImportReport(
            tenant=slug,
            dry_run=dry_run,
            ids=plan.ids,
            imported=plan.counts(),
            merged=plan.merged,
            image_bytes=plan.image_bytes,
            password_resets=plan.resets,
            issue_counts=dict(sorted(issues.counts.items())),
            issues=issues.listed,
            issues_omitted=issues.omitted,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _write(
        self,
        conn: AsyncConn,
        tenant: Tenant,
        legacy: LegacyData,
        limits: LimitLookup,
        *,
        dry_run: bool,
        actor: AuditContext,
    ) -> Plan:
        stored: list[StoredImage] = []
        try:
            async with conn.transaction():
                await repository.prepare(conn, statement_timeout=self._p.settings.database.migration_statement_timeout)
                counters = await repository.lock(conn)
                target = await repository.target_state(conn)
                plan = build_plan(legacy, target, await repository.lowered(conn, [u.email for u in legacy.users]))
                await check_quotas(limits, counters, plan)
                if dry_run:
                    images = await digest_all(plan.images)
                else:
                    await store_all(self._storage, tenant.id, plan.images, stored)
                    images = stored
                await repository.write(conn, plan, images)
                if dry_run:  # before anything that draws on a sequence (not transactional): nothing changes
                    raise _DryRun
                await repository.write_files(conn, images)
                details = {"imported": plan.counts(), "ids": plan.ids, "issues": legacy.issues.counts}
                await tenant_audit.record_tenant(conn, actor, "legacy.import", "tenant", tenant.id, details)
                await repository.catch_up_sequences(conn)
        except _DryRun:
            return plan
        except BaseException as exc:
            await remove_all(self._storage, tenant.id, stored)
            if isinstance(exc, psycopg.Error):
                raise _translated(exc) from exc
            raise
        return plan


async def check_quotas(limits: LimitLookup, counters: dict[str, int], plan: Plan) -> None:
    """Refuse (``QuotaExceeded``) an import that would take a quota past its enforced limit."""
    adding = {
        QuotaType.USERS: ("users", len(plan.users)),
        QuotaType.CARDS: ("cards", len(plan.cards)),
        QuotaType.STORAGE_BYTES: ("storage_bytes", plan.image_bytes),
    }
    for quota, (counter, count) in adding.items():
        if count <= 0:
            continue
        limit = await limits(quota)
        usage = counters.get(counter, 0)
        if limit is not None and usage + count > limit:
            raise QuotaExceeded(
                f"the import needs {count} more {quota.value} and the tenant has {usage} of {limit}; "
                "nothing was imported (raise the quota or the tier first)",
                quota=quota.value,
                limit=limit,
                usage=usage,
                adding=count,
            )


def _translated(exc: psycopg.Error) -> Exception:
    """What a database error during an import is answered with (it was rolled back in every case)."""
    if isinstance(exc, pg_errors.LockNotAvailable):
        return OperationInProgress(
            f"the tenant's tables stayed busy for {repository.LOCK_TIMEOUT}; nothing was imported, retry"
        )
    if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, pg_errors.QueryCanceled):
        return ServerUnavailable(f"the tenant's database server failed during the import: {str(exc).strip()}")
    diag = exc.diag
    where = {k: v for k, v in {"table": diag.table_name, "constraint": diag.constraint_name}.items() if v}
    message = diag.message_primary or str(exc).strip()
    detail = f"the tenant database refused the import, nothing was imported: {message}"
    # "Key (...)=(...) already exists" helps; "Failing row contains (...)" would echo a whole row (hashes too).
    if diag.message_detail and not diag.message_detail.startswith("Failing row contains"):
        detail += f" ({diag.message_detail})"
    return ImportFailed(detail, **where)


def summary(report: ImportReport) -> dict[str, Any]:
    """What the platform audit keeps of an import."""
    return {
        "dry_run": report.dry_run,
        "imported": report.imported,
        "ids": report.ids,
        "issues": report.issue_counts,
        "password_resets": len(report.password_resets),
        "image_bytes": report.image_bytes,
    }
