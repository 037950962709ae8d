"""What storage hygiene finds and does: per-tenant results of a run, the run's report, the findings kept in
the control database, and the counters ``/metrics`` exposes."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Literal

import msgspec

#: Keys listed per tenant and kind of finding in a report (the counts are always whole).
MAX_LISTED = 100

Reason = Literal["orphan", "tenant_gone"]
Resolution = Literal["reappeared", "row_gone", "row_removed"]


class TenantScan(msgspec.Struct, kw_only=True):
    """One tenant's storage area compared with its ``files`` rows (or, for ``leftover``, the area of a
    tenant the registry no longer knows), and what was done about it."""

    tenant_id: uuid.UUID
    #: None for the leftover area of a tenant that is gone.
    slug: str | None
    kind: Literal["tenant", "leftover"] = "tenant"
    #: Objects in the served area, and ``files`` rows.
    objects: int = 0
    rows: int = 0
    #: Objects with no row, older than the safety margin (quarantined when fixing), and their keys.
    orphans: int = 0
    orphan_bytes: int = 0
    orphan_keys: list[str] = msgspec.field(default_factory=list)
    #: Objects with no row younger than the margin: an upload may not have committed its row yet.
    young_orphans: int = 0
    quarantined: int = 0
    #: Quarantined objects whose row came back (moved back to the served area).
    restored: list[str] = msgspec.field(default_factory=list)
    #: Quarantined objects deleted after the grace period, and the bytes freed.
    deleted: int = 0
    reclaimed_bytes: int = 0
    #: Rows with no object (open findings after this run), how many were new, and their keys.
    missing: int = 0
    missing_new: int = 0
    missing_keys: list[str] = msgspec.field(default_factory=list)
    #: Rows with no object removed after the grace period (the card's image cleared).
    missing_removed: list[str] = msgspec.field(default_factory=list)
    #: Why the tenant was not looked at (an operation in progress, no database), or what failed.
    skipped: str | None = None
    error: str | None = None

    @property
    def clean(self) -> bool:
        return self.error is None and not (self.orphans or self.missing)


class HygieneReport(msgspec.Struct, kw_only=True):
    """One run over every tenant (or one): per-tenant results and what is left in quarantine after it.

    A report-only run (``fix`` false) changes nothing; its counts say what a fixing run would do.
    """

    fix: bool
    started_at: datetime
    duration_seconds: float
    tenants: list[TenantScan]
    #: Open entries after the run (whole fleet): files in quarantine and their bytes, rows with no object.
    quarantine_files: int
    quarantine_bytes: int
    missing_files: int

    @property
    def clean(self) -> bool:
        return all(t.clean for t in self.tenants)

    @property
    def failed(self) -> int:
        return sum(t.error is not None for t in self.tenants)

    def describe(self) -> str:
        """The run's outcome line."""
        t = self.tenants
        return (
            f"{len(t)} area(s): {sum(s.orphans for s in t)} orphan(s), {sum(s.quarantined for s in t)} quarantined, "
            f"{sum(len(s.restored) for s in t)} restored, {sum(s.deleted for s in t)} deleted "
            f"({sum(s.reclaimed_bytes for s in t)} bytes), {sum(s.missing for s in t)} missing, "
            f"{sum(len(s.missing_removed) for s in t)} missing row(s) removed, {self.failed} failed"
        )


class QuarantinedFile(msgspec.Struct, kw_only=True):
    """A row of ``quarantined_files``."""

    id: int
    tenant_id: uuid.UUID
    tenant_slug: str | None
    key: str
    bytes: int
    reason: Reason
    found_at: datetime
    delete_after: datetime
    deleted_at: datetime | None = None
    restored_at: datetime | None = None


class MissingFile(msgspec.Struct, kw_only=True):
    """A row of ``missing_files``."""

    id: int
    tenant_id: uuid.UUID
    tenant_slug: str | None
    key: str
    card_id: int | None
    bytes: int
    found_at: datetime
    last_seen_at: datetime
    resolve_after: datetime
    resolved_at: datetime | None = None
    resolution: Resolution | None = None


class HygieneFindings(msgspec.Struct, kw_only=True):
    """``GET /admin/storage/hygiene``: open findings (newest first) and their totals."""

    quarantine_files: int
    quarantine_bytes: int
    missing_files: int
    quarantined: list[QuarantinedFile]
    missing: list[MissingFile]


@dataclasses.dataclass
class HygieneCounters:
    """What fixing runs of this process did since it started (``/metrics`` counters)."""

    quarantined: int = 0
    restored: int = 0
    deleted: int = 0
    reclaimed_bytes: int = 0
    missing_found: int = 0
    missing_removed: int = 0

    def add(self, report: HygieneReport) -> None:
        for scan in report.tenants:
            self.quarantined += scan.quarantined
            self.restored += len(scan.restored)
            self.deleted += scan.deleted
            self.reclaimed_bytes += scan.reclaimed_bytes
            self.missing_found += scan.missing_new
            self.missing_removed += len(scan.missing_removed)
