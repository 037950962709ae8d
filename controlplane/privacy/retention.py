"""Audit-log retention: entries older than ``CARDVAULT_AUDIT_RETENTION`` are deleted, in the control
database's ``platform_audit`` and in every tenant database's ``audit_log`` (``0`` keeps them forever).

Tenant databases are visited like the usage collector visits them: a short-lived management connection
each (``application_name`` ``cardvault-controlplane-retention``), never a request pool, at most
``concurrency`` at once; suspended and deleting tenants too (their entries age all the same). A tenant
that cannot be reached is counted as failed and tried again on the next run; it never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import msgspec

from controlplane import db
from controlplane.platform import Platform
from controlplane.privacy import audit_repository as repo
from controlplane.registry import repository as registry
from controlplane.registry.models import Tenant, TenantStatus

log = logging.getLogger(__name__)

#: ``application_name`` suffix of the retention connections.
RETENTION_ROLE = "retention"
#: Statuses whose database exists (provisioning ones are not finished, broken ones have none).
_WITH_DATABASE = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.DELETING})


class RetentionReport(msgspec.Struct, kw_only=True):
    """What one run deleted."""

    retention_seconds: float
    platform_deleted: int = 0
    #: Entries deleted per tenant id (tenants that had none to delete included).
    tenant_deleted: dict[uuid.UUID, int] = msgspec.field(default_factory=dict)
    failed: list[str] = msgspec.field(default_factory=list)

    def describe(self) -> str:
        if not self.retention_seconds:
            return "audit retention off (CARDVAULT_AUDIT_RETENTION=0)"
        deleted = sum(self.tenant_deleted.values())
        return (
            f"{self.platform_deleted} platform and {deleted} tenant audit entries deleted"
            f" ({len(self.tenant_deleted)} tenant(s), {len(self.failed)} failed)"
        )


class AuditRetention:
    def __init__(self, platform: Platform, *, concurrency: int | None = None) -> None:
        self._p = platform
        self._slots = asyncio.Semaphore(concurrency or platform.settings.usage.concurrency)

    async def run(self) -> RetentionReport:
        seconds = self._p.settings.privacy.audit_retention
        report = RetentionReport(retention_seconds=seconds)
        if seconds <= 0:
            return report
        async with self._p.control.connection() as conn:
            report.platform_deleted = await repo.delete_old_platform_audit(conn, seconds)
            tenants = [t for t in await registry.list_tenants(conn) if t.status in _WITH_DATABASE]
            dsns = {}
            for server_id in {t.server_id for t in tenants}:
                try:
                    dsns[server_id] = await self._p.fleet.dsn(conn, server_id)
                except Exception as exc:
                    log.warning("audit retention: server %s: %s", server_id, exc)
        results = await asyncio.gather(
            *(self._tenant(t, dsns.get(t.server_id), seconds) for t in tenants), return_exceptions=True
        )
        for tenant, result in zip(tenants, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            if isinstance(result, int):
                report.tenant_deleted[tenant.id] = result
            else:
                report.failed.append(tenant.slug)
                log.warning("audit retention: tenant %s: %s", tenant.slug, result)
        return report

    async def _tenant(self, tenant: Tenant, dsn: str | None, seconds: float) -> int:
        if dsn is None:
            raise LookupError("its server's DSN could not be read")
        async with (
            self._slots,
            db.connect(dsn, self._p.settings.database, dbname=tenant.database_name, role=RETENTION_ROLE) as conn,
        ):
            return await repo.delete_old_tenant_audit(conn, seconds)

    async def job(self) -> str:
        return (await self.run()).describe()
