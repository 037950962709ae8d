"""One storage area against its tenant's ``files`` rows: what is orphaned, missing, due or back, and (when
fixing) doing it. ``StorageHygiene`` (``service.py``) runs this for every tenant.

Order of work, each step safe to be interrupted (the next run finishes it):

1. Quarantined objects whose row came back (a restore from a backup) are moved back, then their entries
   closed.
2. Quarantined objects past ``delete_after`` are deleted, then their entries closed.
3. Objects with no row, older than the safety margin, are recorded first (the entry is the intent), then
   moved to the quarantine. An upload writes its object before committing its row
   (``cards.service.CardVault.put_image``), so a young object with no row may be one whose row is on
   its way: it is left alone.
4. Rows with no object: the object is looked for again (it may have been written after the listing
   began), then recorded (``missing_files``). Once past ``resolve_after`` (found + the quarantine grace)
   the row is removed from the tenant database and the card's image cleared (audited there as
   ``image.lost``): the reference points nowhere and no one can bring the object back, and keeping the
   row would keep the card answering 404 ``image_missing`` and count the lost bytes against the
   tenant's storage quota. A finding whose object reappears, or whose row goes, resolves by itself.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from controlplane.db import AsyncConn
from controlplane.hygiene import repository, tenant_repository
from controlplane.hygiene.models import MAX_LISTED, TenantScan
from controlplane.hygiene.repository import NewMissing, NewQuarantined, Target
from controlplane.storage import InvalidStorageKey, Storage, StoredObject


@dataclasses.dataclass(frozen=True)
class ScanContext:
    """What every area's scan in one run shares."""

    storage: Storage
    fix: bool
    #: The control database's clock at the start of the run (``delete_after``, ``resolve_after``).
    now: datetime
    grace: timedelta
    #: Objects with no row modified after this (Unix time, file system clock) are left alone.
    young_after: float
    clock: Callable[[], float]


async def scan_tenant(ctx: ScanContext, target: Target, control: AsyncConn, tenant: AsyncConn) -> TenantScan:
    """Compare the tenant's area with its rows and (``ctx.fix``) act on it; ``control`` and ``tenant``
    are autocommit connections to the control and the tenant database."""
    tenant_id = target.tenant_id
    scan = TenantScan(tenant_id=tenant_id, slug=target.slug)
    listed = {o.key: o for o in await ctx.storage.keys(tenant_id)}  # before the rows: see step 4
    rows = await tenant_repository.file_rows(tenant)
    quarantined = await repository.open_quarantined(control, tenant_id)
    scan.objects, scan.rows = len(listed), len(rows)

    # 1. back from quarantine
    back = [q for q in quarantined if q.key in rows]
    restored_ids = []
    for q in back:
        if not ctx.fix or await ctx.storage.restore(tenant_id, q.key):
            scan.restored.append(q.key)
        restored_ids.append(q.id)  # nothing left in quarantine either way
    # 2. past the grace period
    due = [q for q in quarantined if q.key not in rows and q.delete_after <= ctx.now]
    for q in due:
        freed = await ctx.storage.delete_quarantined(tenant_id, q.key) if ctx.fix else q.bytes
        scan.deleted += 1
        scan.reclaimed_bytes += freed or 0
    # 3. orphans
    orphans = [o for key, o in listed.items() if key not in rows]
    old = [o for o in orphans if o.modified <= ctx.young_after]
    scan.young_orphans = len(orphans) - len(old)
    scan.orphans, scan.orphan_bytes = len(old), sum(o.bytes for o in old)
    scan.orphan_keys = [o.key for o in old[:MAX_LISTED]]
    # 4. rows with no object (keys about to come back from quarantine are not lost)
    lost = await _lost(ctx.storage, tenant_id, rows, listed, {q.key for q in back})
    missing = await repository.open_missing(control, tenant_id)
    known = {m.key for m in missing}
    new = [NewMissing(key, row.card_id, row.bytes) for key, row in lost.items() if key not in known]
    still = [m for m in missing if m.key in lost]
    due_missing = [m for m in still if m.resolve_after <= ctx.now]

    if not ctx.fix:
        scan.missing, scan.missing_new = len(lost), len(new)
        scan.missing_keys = list(lost)[:MAX_LISTED]
        scan.missing_removed = [m.key for m in due_missing]
        return scan

    async with control.transaction():
        await repository.close_quarantined(control, restored_ids, restored=True)
        await repository.close_quarantined(control, [q.id for q in due], restored=False)
        await repository.add_quarantined(
            control, tenant_id, target.slug, "orphan", [NewQuarantined(o.key, o.bytes) for o in old], ctx.grace
        )
    scan.quarantined = await _quarantine(ctx.storage, tenant_id, old)

    removed = []
    for m in due_missing:
        async with tenant.transaction():
            await tenant_repository.remove_lost_file(tenant, m.key)
        removed.append(m)
    removed_keys = {m.key for m in removed}
    async with control.transaction():
        scan.missing_new = await repository.add_missing(control, tenant_id, target.slug, new, ctx.grace)
        await repository.resolve_missing(control, [m.id for m in missing if m.key not in rows], "row_gone")
        await repository.resolve_missing(
            control, [m.id for m in missing if m.key in rows and m.key not in lost], "reappeared"
        )
        await repository.resolve_missing(control, [m.id for m in removed], "row_removed")
        await repository.seen_missing(control, [m.id for m in still if m.key not in removed_keys])
    scan.missing_removed = [m.key for m in removed]
    remaining = [key for key in lost if key not in removed_keys]
    scan.missing, scan.missing_keys = len(remaining), remaining[:MAX_LISTED]
    return scan


async def scan_leftover(ctx: ScanContext, control: AsyncConn, tenant_id: uuid.UUID, *, area: bool) -> TenantScan:
    """The area (``area``) and quarantine of a tenant the registry no longer knows: every object it left
    is quarantined (no upload can be on its way: a tenant's row exists before its first object), the
    area removed, and quarantined objects past their grace deleted."""
    scan = TenantScan(tenant_id=tenant_id, slug=None, kind="leftover")
    listed = await ctx.storage.keys(tenant_id) if area else []
    quarantined = await repository.open_quarantined(control, tenant_id)
    due = [q for q in quarantined if q.delete_after <= ctx.now]
    scan.objects = len(listed)
    scan.orphans, scan.orphan_bytes = len(listed), sum(o.bytes for o in listed)
    scan.orphan_keys = [o.key for o in listed[:MAX_LISTED]]
    scan.deleted = len(due)
    if not ctx.fix:
        scan.reclaimed_bytes = sum(q.bytes for q in due)
        return scan
    for q in due:
        scan.reclaimed_bytes += await ctx.storage.delete_quarantined(tenant_id, q.key) or 0
    async with control.transaction():
        await repository.close_quarantined(control, [q.id for q in due], restored=False)
        files = [NewQuarantined(o.key, o.bytes) for o in listed]
        await repository.add_quarantined(control, tenant_id, None, "tenant_gone", files, ctx.grace)
    scan.quarantined = await _quarantine(ctx.storage, tenant_id, listed)
    if area and not await ctx.storage.remove_area(tenant_id):
        scan.error = "objects appeared in the area while it was cleaned up; left for the next run"
    return scan


async def _quarantine(storage: Storage, tenant_id: uuid.UUID, objects: list[StoredObject]) -> int:
    """Move ``objects`` (already recorded) to the quarantine; how many were still there to move."""
    moved = 0
    for o in objects:
        moved += await storage.quarantine(tenant_id, o.key) is not None
    return moved


async def _lost(
    storage: Storage,
    tenant_id: uuid.UUID,
    rows: dict[str, tenant_repository.FileRow],
    listed: dict[str, StoredObject],
    coming_back: set[str],
) -> dict[str, tenant_repository.FileRow]:
    """Rows whose object is not in the area. Looked for once more: an upload writes its object before
    its row, so a row committed after the listing began has its object, just not in the listing."""
    lost = {}
    for key, row in rows.items():
        if key in listed or key in coming_back:
            continue
        try:
            found = await storage.stat(tenant_id, key)
        except InvalidStorageKey:  # a key no storage can hold (written by hand?): nothing can serve it
            found = None
        if found is None:
            lost[key] = row
    return lost
