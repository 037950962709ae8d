"""Storage hygiene: rows whose object is missing, and storage areas left behind by tenants that are gone.

A ``files`` row with no object is recorded (``missing_files``) and reported, never silently dropped; once
its grace period ended the row is removed and the card's image cleared (audited in the tenant as
``image.lost``), unless the object came back first. A storage area whose tenant is no longer in the
registry (a purge that left it, or anything else) is quarantined whole and removed; one whose tenant has a
running operation is left alone.
"""

from __future__ import annotations

import uuid

from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.storage import new_key
from tests.integration.auth_support import audit_rows, tenant_rows
from tests.integration.hygiene_support import (
    add_image_row,
    area,
    control_rows,
    hygiene_of,
    in_quarantine,
    make_due,
    missing,
    png,
    put_object,
    quarantined,
    storage_of,
)


async def test_a_row_without_its_object_is_reported_then_removed_after_the_grace(
    service: TenantService, platform: Platform
) -> None:
    await service.create(name="Acme", slug="acme", tier="starter")
    hygiene = hygiene_of(platform)
    data = png()
    lost = new_key("ab" * 32, "png")  # recorded, never stored (or lost since)
    card_id = await add_image_row(platform, "acme", lost, data)

    report = await hygiene.run()
    (scan,) = report.tenants
    assert (scan.missing, scan.missing_new, scan.missing_keys) == (1, 1, [lost]) and not scan.clean
    assert report.missing_files == 1
    (finding,) = await missing(platform, scan.tenant_id)
    assert (finding["key"], finding["card_id"], finding["bytes"], finding["resolved_at"]) == (
        lost,
        card_id,
        len(data),
        None,
    )
    (card,) = await tenant_rows(platform, "acme", "SELECT image FROM cards WHERE id = %s", (card_id,))
    assert card["image"] == lost, "reported, not dropped, within the grace period"

    again = await hygiene.run()
    assert again.tenants[0].missing_new == 0 and len(await missing(platform, scan.tenant_id)) == 1

    await make_due(platform)
    done = await hygiene.run()
    assert done.tenants[0].missing_removed == [lost] and done.tenants[0].missing == 0
    assert await tenant_rows(platform, "acme", "SELECT * FROM files") == []
    (card,) = await tenant_rows(platform, "acme", "SELECT image FROM cards WHERE id = %s", (card_id,))
    assert card["image"] is None
    (usage,) = await tenant_rows(platform, "acme", "SELECT value FROM usage_counters WHERE name = 'storage_bytes'")
    assert usage["value"] == 0, "the lost bytes no longer count against the quota"
    (entry,) = await audit_rows(platform, "acme", "image.lost")
    assert entry["actor"] == "system:storage-hygiene" and entry["entity_id"] == str(card_id)
    assert entry["details"]["key"] == lost
    (finding,) = await missing(platform, scan.tenant_id)
    assert finding["resolution"] == "row_removed"
    assert hygiene.counters.missing_found == 1 and hygiene.counters.missing_removed == 1


async def test_a_missing_object_that_comes_back_resolves_by_itself(service: TenantService, platform: Platform) -> None:
    tenant = await service.create(name="Acme", slug="acme", tier="starter")
    storage, hygiene = storage_of(platform), hygiene_of(platform)
    data = png()
    key = new_key("cd" * 32, "png")
    await add_image_row(platform, "acme", key, data)
    await hygiene.run()

    await storage.put(tenant.id, key, data)  # put back (from a file backup, say)
    await make_due(platform)
    report = await hygiene.run()

    assert report.tenants[0].missing == 0 and report.tenants[0].missing_removed == []
    (finding,) = await missing(platform, tenant.id)
    assert finding["resolution"] == "reappeared"
    assert len(await tenant_rows(platform, "acme", "SELECT * FROM files")) == 1


async def test_a_purged_tenants_leftover_area_is_quarantined_and_removed(
    service: TenantService, platform: Platform
) -> None:
    kept = await service.create(name="Kept", slug="kept", tier="starter")
    doomed = await service.create(name="Doomed", slug="doomed", tier="starter")
    storage, hygiene = storage_of(platform), hygiene_of(platform)
    kept_data = png()
    kept_key = await put_object(storage, kept.id, kept_data)
    await add_image_row(platform, "kept", kept_key, kept_data)
    await service.purge("doomed")
    # What a purge from before storage cleanup (or a crash of a hand-made copy) leaves: objects, a write
    # that never finished, under the id of a tenant the registry no longer knows.
    for _ in range(2):
        await put_object(storage, doomed.id, png(), age=5)  # no safety margin for a tenant that is gone
    left = area(storage, doomed.id)
    (storage.tenant_dir(doomed.id) / ".tmp-0123456789abcdef").write_bytes(b"partial")
    # ... and the area of a tenant id that is mid-operation (its row may come back): left alone.
    busy = uuid.uuid4()
    busy_key = await put_object(storage, busy, png())
    await control_rows(
        platform,
        "INSERT INTO tenant_operations (tenant_id, tenant_slug, kind, state)"
        " VALUES (%s, 'busy', 'provision', 'running')",
        (busy,),
    )

    report = await hygiene.run()

    leftovers = [s for s in report.tenants if s.kind == "leftover"]
    assert [(s.tenant_id, s.orphans, s.quarantined) for s in leftovers] == [(doomed.id, 2, 2)]
    assert not storage.tenant_dir(doomed.id).exists()
    assert in_quarantine(storage, doomed.id) == left
    assert {(q["key"], q["reason"]) for q in await quarantined(platform, doomed.id)} == {
        (k, "tenant_gone") for k in left
    }
    assert list(area(storage, busy)) == [busy_key], "a tenant in an operation is not a leftover"
    assert area(storage, kept.id) == {kept_key: kept_data}

    await make_due(platform)
    done = await hygiene.run()
    (gone,) = [s for s in done.tenants if s.kind == "leftover"]
    assert gone.deleted == 2 and gone.reclaimed_bytes == sum(len(v) for v in left.values())
    assert not storage.quarantine_dir(doomed.id).exists() or in_quarantine(storage, doomed.id) == {}
    assert all(q["deleted_at"] is not None for q in await quarantined(platform, doomed.id))
    assert area(storage, kept.id) == {kept_key: kept_data}
    assert list(area(storage, busy)) == [busy_key]
