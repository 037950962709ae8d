"""Storage hygiene on real tenants and their real storage areas: orphaned objects.

An object with no ``files`` row, older than the safety margin, is moved out of the served area into the
quarantine and recorded (``quarantined_files``); it is deleted once its grace period ended, or moved back
when a row for it reappears (a restore from a backup). A young one (an upload whose row may be on its way)
is left alone, a report-only run changes nothing, and a tenant under an operation is skipped. One tenant's
quarantine never touches another's objects, even under the same key. Runs never overlap.
"""

from __future__ import annotations

import pytest

from controlplane import db
from controlplane.errors import OperationInProgress
from controlplane.hygiene.service import HYGIENE_LOCK
from controlplane.platform import Platform
from controlplane.provisioning.locking import tenant_lock_key
from controlplane.provisioning.service import TenantService
from tests.integration.hygiene_support import (
    add_image_row,
    area,
    hygiene_of,
    in_quarantine,
    make_due,
    png,
    put_object,
    quarantined,
    storage_of,
)


async def test_an_old_orphan_is_quarantined_then_deleted_after_the_grace(
    service: TenantService, platform: Platform
) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    storage, hygiene = storage_of(platform), hygiene_of(platform)
    kept_data, orphan_data, young_data = png(), png(500), png()
    kept = await put_object(storage, tenant.id, kept_data)
    await add_image_row(platform, "acme", kept, kept_data)
    orphan = await put_object(storage, tenant.id, orphan_data)
    young = await put_object(storage, tenant.id, young_data, age=60)

    report = await hygiene.run()
    (scan,) = report.tenants
    assert (scan.objects, scan.rows, scan.orphans, scan.young_orphans, scan.quarantined) == (3, 1, 1, 1, 1)
    assert scan.orphan_keys == [orphan] and scan.orphan_bytes == len(orphan_data)
    assert area(storage, tenant.id) == {kept: kept_data, young: young_data}, "the young one is left alone"
    assert in_quarantine(storage, tenant.id) == {orphan: orphan_data}
    (entry,) = await quarantined(platform, tenant.id)
    assert (entry["key"], entry["bytes"], entry["reason"], entry["tenant_slug"]) == (
        orphan,
        len(orphan_data),
        "orphan",
        "acme",
    )
    assert (entry["delete_after"] - entry["found_at"]).total_seconds() == platform.settings.privacy.quarantine_grace
    assert (report.quarantine_files, report.quarantine_bytes) == (1, len(orphan_data))

    again = await hygiene.run()  # within the grace period: kept in quarantine
    assert again.tenants[0].deleted == 0 and again.tenants[0].quarantined == 0
    assert in_quarantine(storage, tenant.id) == {orphan: orphan_data}

    await make_due(platform)
    done = await hygiene.run()
    assert (done.tenants[0].deleted, done.tenants[0].reclaimed_bytes) == (1, len(orphan_data))
    assert in_quarantine(storage, tenant.id) == {}
    (entry,) = await quarantined(platform, tenant.id)
    assert entry["deleted_at"] is not None and entry["restored_at"] is None
    assert area(storage, tenant.id) == {kept: kept_data, young: young_data}
    assert done.quarantine_files == 0
    counters = hygiene.counters
    assert (counters.quarantined, counters.deleted, counters.reclaimed_bytes) == (1, 1, len(orphan_data))


async def test_a_row_reappearing_moves_the_object_back(service: TenantService, platform: Platform) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    storage, hygiene = storage_of(platform), hygiene_of(platform)
    data = png()
    key = await put_object(storage, tenant.id, data)
    await hygiene.run()
    assert area(storage, tenant.id) == {}

    await add_image_row(platform, "acme", key, data)  # e.g. the tenant database restored from a backup
    await make_due(platform)  # even past its grace: a row claims it, so it is not deleted
    report = await hygiene.run()

    assert report.tenants[0].restored == [key] and report.tenants[0].deleted == 0
    assert area(storage, tenant.id) == {key: data} and in_quarantine(storage, tenant.id) == {}
    (entry,) = await quarantined(platform, tenant.id)
    assert entry["restored_at"] is not None and entry["deleted_at"] is None
    assert report.tenants[0].missing == 0 and hygiene.counters.restored == 1


async def test_quarantine_of_one_tenant_never_touches_another(service: TenantService, platform: Platform) -> None:
    a = await service.create(name="A", slug="tenant-a", tier="starter")
    b = await service.create(name="B", slug="tenant-b", tier="starter")
    storage, hygiene = storage_of(platform), hygiene_of(platform)
    data = png()
    key = await put_object(storage, a.id, data)  # an orphan in A ...
    await storage.put(b.id, key, data)  # ... and the very same key, B's own image, in B
    await add_image_row(platform, "tenant-b", key, data)
    b_orphan = await put_object(storage, b.id, png(), age=60)  # B's young upload
    before_b = area(storage, b.id)

    report = await hygiene.run()

    by_slug = {s.slug: s for s in report.tenants}
    assert by_slug["tenant-a"].quarantined == 1 and by_slug["tenant-b"].quarantined == 0
    assert area(storage, a.id) == {} and in_quarantine(storage, a.id) == {key: data}
    assert area(storage, b.id) == before_b and b_orphan in before_b
    assert in_quarantine(storage, b.id) == {} and await quarantined(platform, b.id) == []
    await make_due(platform)
    await hygiene.run()
    assert area(storage, b.id) == before_b, "deleting A's quarantined copy leaves B's object alone"


async def test_a_report_only_run_changes_nothing(service: TenantService, platform: Platform) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    storage, hygiene = storage_of(platform), hygiene_of(platform)
    key = await put_object(storage, tenant.id, png())
    before = area(storage, tenant.id)

    report = await hygiene.run(fix=False)

    assert report.tenants[0].orphan_keys == [key] and report.tenants[0].quarantined == 0 and not report.clean
    assert area(storage, tenant.id) == before and in_quarantine(storage, tenant.id) == {}
    assert await quarantined(platform, tenant.id) == []
    assert hygiene.counters.quarantined == 0


async def test_a_tenant_under_an_operation_is_left_alone(service: TenantService, platform: Platform) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    storage, hygiene = storage_of(platform), hygiene_of(platform)
    await put_object(storage, tenant.id, png())
    before = area(storage, tenant.id)

    async with platform.control.connection() as conn:  # what a purge, a restore or an import holds
        assert await db.try_advisory_lock(conn, tenant_lock_key(tenant.id))
        try:
            report = await hygiene.run()
        finally:
            await db.advisory_unlock(conn, tenant_lock_key(tenant.id))

    assert report.tenants[0].skipped == "an operation on the tenant is in progress"
    assert area(storage, tenant.id) == before
    assert (await hygiene.run()).tenants[0].quarantined == 1  # once the operation is over


async def test_runs_never_overlap(platform: Platform) -> None:
    async with platform.control.connection() as conn:
        assert await db.try_advisory_lock(conn, HYGIENE_LOCK)
        try:
            with pytest.raises(OperationInProgress):
                await hygiene_of(platform).run()
        finally:
            await db.advisory_unlock(conn, HYGIENE_LOCK)
    assert (await hygiene_of(platform).run()).tenants == []
