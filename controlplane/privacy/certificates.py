"""Deletion certificates: for every tenant purge, what was deleted when and what remains until when.

The leader's job (and ``cardvault privacy certificate``) finds succeeded ``purge`` operations in the
ledger that have no certificate and writes one, from records the purge cannot skip: the ledger (its steps
and their durations, start and end), the tombstone the registry's trigger wrote in the transaction that
deleted the tenant's row (names of the database, role and server; the exact time), the tenant's backups
that remain and when each expires, and databases a restore replaced that are still kept. Nothing inside
provisioning has to remember to call it, and a certificate is written once per purge (the operation id
is unique).

The export archives of the purged tenant are ended and deleted first, so the certificate can say none
remain. Backups of a purged tenant expire at their normal time; once none remains, the certificate
records ``backups_destroyed_at``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from controlplane.db import AsyncConn
from controlplane.errors import NotFound
from controlplane.platform import Platform
from controlplane.privacy import certificate_repository as repo
from controlplane.privacy import repository as exports_repo
from controlplane.privacy.exports import Exports
from controlplane.privacy.models import DeletionCertificate

#: Purges certified per run.
PER_RUN = 100
#: What a purge's steps delete (step name -> what the certificate calls it).
_STEP_ITEMS = {"drop_database": "database", "drop_role": "role", "drop_files": "files", "forget": "registry"}


def _step_durations(steps: list[dict[str, Any]]) -> dict[str, float]:
    """Milliseconds of each step in the run that completed the purge (the last time each step ran)."""
    return {str(s["step"]): float(s.get("ms", 0.0)) for s in steps if "step" in s}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class Certificates:
    def __init__(self, platform: Platform, exports: Exports) -> None:
        self._p = platform
        self._exports = exports

    async def issue_pending(self) -> int:
        """Write the certificates of purges that have none; the number written."""
        await self._exports.end_orphans()
        issued = 0
        async with self._p.control.connection() as conn:
            for operation in await repo.purges_without_certificate(conn, PER_RUN):
                document, destroyed = await self._document(conn, operation)
                if await repo.insert(
                    conn,
                    certificate_id=uuid.uuid4(),
                    operation=operation,
                    document=document,
                    backups_destroyed_at=destroyed,
                ):
                    issued += 1
        return issued

    async def _document(self, conn: AsyncConn, operation: dict[str, Any]) -> tuple[dict[str, Any], datetime | None]:
        tenant_id: uuid.UUID = operation["tenant_id"]
        finished: datetime = operation["finished_at"]
        tomb = await repo.tombstone(conn, tenant_id, finished)
        durations = _step_durations(operation["steps"])
        names = {
            "database": {"name": tomb["database_name"], "server": tomb["server_name"]} if tomb else {},
            "role": {"name": tomb["role_name"], "server": tomb["server_name"]} if tomb else {},
            "files": {"location": str(self._p.settings.data_dir / "storage" / str(tenant_id))},
            "registry": {"rows": "tenant, quotas, usage, billing, onboarding and mail rows"},
        }
        deleted = []
        for step, item in _STEP_ITEMS.items():
            entry: dict[str, Any] = {"item": item, "step": step, **names[item]}
            if step in durations:
                entry["duration_ms"] = durations[step]
            # The tombstone is written in the deleting transaction: the registry's exact time. The other
            # steps ran, in this order, between the purge's start and its end.
            entry["deleted_at"] = _iso(tomb["deleted_at"]) if step == "forget" and tomb else None
            entry["deleted_by"] = _iso(finished)
            deleted.append(entry)
        backups = await repo.remaining_backups(conn, tenant_id)
        retained = [
            {
                "backup_id": str(b["id"]),
                "status": b["status"],
                "created_at": _iso(b["created_at"]),
                "expires_at": _iso(b["expires_at"]),
                "bytes": b["bytes"],
                "store": b["store"],
            }
            for b in backups
        ]
        destroyed = None
        if not backups:
            destroyed = await repo.last_backup_deletion(conn, tenant_id) or finished
        expiries = [b["expires_at"] for b in backups if b["expires_at"] is not None]
        document = {
            "tenant": {
                "id": str(tenant_id),
                "slug": operation["tenant_slug"],
                "name": tomb["name"] if tomb else None,
                "tier": tomb["subscription_tier"] if tomb else None,
                "created_at": _iso(tomb["created_at"]) if tomb else None,
            },
            "purge": {
                "operation_id": operation["id"],
                "started_at": _iso(operation["started_at"]),
                "finished_at": _iso(finished),
                "attempts": operation["attempts"],
            },
            "deleted": deleted,
            "export_archives_remaining": await exports_repo.stored_for_tenant(conn, tenant_id),
            "backups_remaining": retained,
            "backups_expire_by": _iso(max(expiries)) if expiries else None,
            "backups_destroyed_at": _iso(destroyed),
            "retired_databases": [
                {
                    "database": r["database_name"],
                    "server": r["server"],
                    "retired_at": _iso(r["retired_at"]),
                    "drop_after": _iso(r["drop_after"]),
                }
                for r in await repo.retired_databases(conn, tenant_id)
            ],
            "kept": "the operations ledger and the platform audit keep the tenant's id and slug, no tenant data",
        }
        return document, destroyed

    async def track_backups(self) -> int:
        """Record ``backups_destroyed_at`` on certificates whose tenant's last backup is gone; how many."""
        closed = 0
        async with self._p.control.connection() as conn:
            for certificate in await repo.awaiting_backups(conn):
                if await repo.remaining_backups(conn, certificate.tenant_id):
                    continue
                at = await repo.last_backup_deletion(conn, certificate.tenant_id) or certificate.purged_at
                await repo.set_backups_destroyed(conn, certificate.id, at)
                closed += 1
        return closed

    async def job(self) -> str:
        issued = await self.issue_pending()
        closed = await self.track_backups()
        return f"{issued} certificate(s) issued, {closed} with every backup destroyed"

    async def find(self, ref: str) -> list[DeletionCertificate]:
        """The certificates of the tenant ``ref`` names (its id, or the slug it had), newest first."""
        try:
            tenant_id: uuid.UUID | None = uuid.UUID(ref)
        except ValueError:
            tenant_id = None
        async with self._p.control.connection() as conn:
            found = await repo.for_tenant(conn, tenant_id=tenant_id, slug=None if tenant_id else ref)
        if not found:
            raise NotFound(f"no deletion certificate for tenant {ref!r}", resource="deletion_certificate")
        return found

    async def newest(self, limit: int) -> list[DeletionCertificate]:
        async with self._p.control.connection() as conn:
            return await repo.newest(conn, limit)
