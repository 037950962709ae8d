"""A tenant's backup holds its stored files (card images), sealed, in a second object; a restore puts back the
ones the restored database names and the storage lacks.

Proven here: the files object holds exactly the tenant's images (another tenant's never) and shows none of
their bytes at rest; the manifest counts them and the retained backups' usage includes them; a purged tenant
restored from its backup serves its images again, byte for byte, to its own admin only; restoring an older
backup brings back an image deleted since; a corrupted files object is refused before anything changes; a
file missing at backup time is listed and the backup succeeds; expiry deletes both objects; a backup made
before files were kept still restores; and a purged tenant whose re-creation fails keeps no file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from controlplane.backups.files import read_files
from controlplane.backups.models import Backup, files_object_key
from controlplane.backups.restore_models import BackupCorrupted
from controlplane.errors import OperationFailed
from controlplane.objectstore.local import LocalObjectStore
from controlplane.objectstore.sealed import unseal
from controlplane.platform import Platform
from controlplane.provisioning.models import OperationState
from controlplane.provisioning.service import TenantService
from controlplane.settings import Settings
from tests.integration.auth_support import TenantAdmin, create_tenant
from tests.integration.backup_support import data_key, plaintext
from tests.integration.restore_support import flip_byte, restores_of, verifications
from tests.integration.tenant_support import execute, fetch, login_tenant_admin, operations, snapshot

Client = AsyncTestClient[Any]


def png(size: int = 700) -> bytes:
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(size)


async def with_images(client: Client, t: TenantAdmin, count: int) -> dict[int, bytes]:
    """``count`` cards of ``t`` with an image each, uploaded through the API: card id -> image."""
    uploaded = {}
    for i in range(count):
        card = await client.post(t.api("/cards"), json={"cardnumber": f"F-{i}"}, headers=t.auth)
        assert card.status_code == 201, card.text
        data = png()
        response = await client.put(
            t.api(f"/cards/{card.json()['id']}/image"), content=data, headers={**t.auth, "content-type": "image/png"}
        )
        assert response.status_code == 200, response.text
        uploaded[card.json()["id"]] = data
    return uploaded


def area(settings: Settings, tenant_id: uuid.UUID) -> dict[str, bytes]:
    """The tenant's stored files, by key."""
    directory = settings.data_dir / "storage" / str(tenant_id)
    return {p.name: p.read_bytes() for p in directory.iterdir()} if directory.exists() else {}


def files_path(platform: Platform, backup: Backup) -> Path:
    assert isinstance(platform.objects, LocalObjectStore)
    return platform.objects.path(files_object_key(backup.tenant_id, backup.id))


async def backed_up_files(platform: Platform, backup: Backup) -> dict[str, bytes]:
    """The files object of the backup, unsealed and read: key -> bytes."""
    key = await data_key(platform, backup.id)

    async def sealed() -> AsyncIterator[bytes]:
        yield files_path(platform, backup).read_bytes()

    return {entry.key: data async for entry, data in read_files(unseal(sealed(), key))}


async def image_of(client: Client, slug: str, card_id: int, auth: dict[str, str]) -> Any:
    return await client.get(f"/t/{slug}/api/cards/{card_id}/image", headers=auth)


async def test_a_backup_holds_the_images_sealed_and_a_purged_tenant_gets_them_back(
    client: Client, platform: Platform, service: TenantService, settings: Settings, control_dsn: str
) -> None:
    acme = await create_tenant(client, "acme")
    images = await with_images(client, acme, 2)
    other = await create_tenant(client, "other")
    other_images = await with_images(client, other, 1)
    stored = area(settings, acme.id)
    assert sorted(stored.values()) == sorted(images.values())

    async with restores_of(platform, service) as r:
        backup = await r.backup("acme")
    files = backup.manifest["files"]
    assert isinstance(files, dict)
    assert (files["count"], files["bytes"], files["missing"], files["damaged"]) == (
        2,
        sum(len(i) for i in images.values()),
        [],
        [],
    )
    sealed = files_path(platform, backup).read_bytes()
    assert (files["size"], files["sha256"]) == (len(sealed), hashlib.sha256(sealed).hexdigest())
    dump = await plaintext(platform, backup)
    for data in [*images.values(), *other_images.values()]:
        assert data[16:80] not in sealed  # ciphertext at rest
        assert data[16:80] not in dump  # the images are not in the dump either
    # Exactly acme's files: never another tenant's.
    assert await backed_up_files(platform, backup) == stored
    usage = await fetch(
        control_dsn,
        "SELECT bytes_used, file_count FROM tenant_storage_usage WHERE tenant_id = %s AND storage_type = 'backups'",
        (acme.id,),
    )
    assert usage == [{"bytes_used": backup.bytes + len(sealed), "file_count": 1}]

    response = await client.delete("/admin/tenants/acme?now=true")
    assert response.status_code == 204, response.text
    assert area(settings, acme.id) == {}
    async with restores_of(platform, service) as r:
        op = await r.restores.restore("acme", latest=True)
    assert op.state is OperationState.SUCCEEDED
    assert [s["step"] for s in op.steps][-3:] == ["create_role", "files", "switch"]
    assert area(settings, acme.id) == stored

    auth = await login_tenant_admin(client, "acme")
    for card_id, data in images.items():
        response = await image_of(client, "acme", card_id, auth)
        assert (response.status_code, response.content) == (200, data)
        # Another tenant's admin never gets them.
        refused = await image_of(client, "acme", card_id, other.auth)
        assert refused.status_code in (401, 403, 404), refused.text
    assert sorted(area(settings, other.id).values()) == sorted(other_images.values())


async def test_restoring_an_older_backup_brings_back_an_image_deleted_since(
    client: Client, platform: Platform, service: TenantService, settings: Settings
) -> None:
    acme = await create_tenant(client, "acme")
    images = await with_images(client, acme, 2)
    stored = area(settings, acme.id)
    async with restores_of(platform, service) as r:
        backup = await r.backup("acme")
        verified = await r.verifier.verify(backup.id)
        assert verified.ok and "2 stored file(s)" in verified.detail, verified.detail

        gone, kept = list(images)
        response = await client.delete(acme.api(f"/cards/{gone}/image"), headers=acme.auth)
        assert response.status_code == 204, response.text
        assert len(area(settings, acme.id)) == 1
        assert (await image_of(client, "acme", gone, acme.auth)).status_code == 404

        op = await r.restores.restore("acme", backup_id=backup.id, pre_backup=False)

    assert op.state is OperationState.SUCCEEDED
    assert area(settings, acme.id) == stored
    for card_id in (gone, kept):
        response = await image_of(client, "acme", card_id, acme.auth)
        assert (response.status_code, response.content) == (200, images[card_id])


async def test_a_corrupted_files_object_is_refused_before_anything_changes(
    client: Client, platform: Platform, service: TenantService, settings: Settings, control_dsn: str, pg_admin_dsn: str
) -> None:
    acme = await create_tenant(client, "acme")
    images = await with_images(client, acme, 1)
    async with restores_of(platform, service) as r:
        backup = await r.backup("acme")
        (card_id,) = images
        assert (await client.delete(acme.api(f"/cards/{card_id}/image"), headers=acme.auth)).status_code == 204
        flip_byte(files_path(platform, backup), 40)
        before = await snapshot(control_dsn, pg_admin_dsn)

        with pytest.raises(BackupCorrupted, match="files object"):
            await r.restores.restore("acme", backup_id=backup.id, pre_backup=False)

    after = await snapshot(control_dsn, pg_admin_dsn)
    assert (after.registry["tenants"], after.registry["tenant_operations"], after.databases, after.roles) == (
        before.registry["tenants"],
        before.registry["tenant_operations"],
        before.databases,
        before.roles,
    )
    assert area(settings, acme.id) == {}  # nothing put back
    assert [v["ok"] for v in await verifications(control_dsn, backup.id)] == [False]  # never offered again


async def test_a_missing_file_is_listed_and_expiry_deletes_both_objects(
    client: Client, platform: Platform, service: TenantService, settings: Settings, control_dsn: str
) -> None:
    acme = await create_tenant(client, "acme")
    await with_images(client, acme, 2)
    lost, present = sorted(area(settings, acme.id))
    (settings.data_dir / "storage" / str(acme.id) / lost).unlink()

    async with restores_of(platform, service) as r:
        backup = await r.backup("acme")
        files = backup.manifest["files"]
        assert isinstance(files, dict)
        assert (files["count"], files["missing"], files["missing_count"]) == (1, [lost], 1)
        assert list(await backed_up_files(platform, backup)) == [present]

        await execute(
            control_dsn, "UPDATE backups SET expires_at = now() - interval '1 second' WHERE id = %s", (backup.id,)
        )
        assert await r.backups.expire() == 1
    assert not files_path(platform, backup).exists()
    assert await platform.objects.list(f"backups/{acme.id}/") == []
    usage = await fetch(
        control_dsn,
        "SELECT bytes_used, file_count FROM tenant_storage_usage WHERE tenant_id = %s AND storage_type = 'backups'",
        (acme.id,),
    )
    assert usage == [{"bytes_used": 0, "file_count": 0}]


async def test_a_backup_made_before_files_were_kept_still_restores(
    client: Client, platform: Platform, service: TenantService, settings: Settings, control_dsn: str
) -> None:
    acme = await create_tenant(client, "acme")
    images = await with_images(client, acme, 1)
    async with restores_of(platform, service) as r:
        backup = await r.backup("acme")
        files_path(platform, backup).unlink()
        await execute(control_dsn, "UPDATE backups SET manifest = manifest - 'files' WHERE id = %s", (backup.id,))
        op = await r.restores.restore("acme", backup_id=backup.id, pre_backup=False)
    assert op.state is OperationState.SUCCEEDED
    ((card_id, data),) = images.items()
    response = await image_of(client, "acme", card_id, acme.auth)
    assert (response.status_code, response.content) == (200, data)  # the live file was never touched
    assert sorted(area(settings, acme.id).values()) == [data]


async def test_a_failed_re_creation_takes_the_files_it_put_back_away_again(
    client: Client, platform: Platform, service: TenantService, settings: Settings, control_dsn: str
) -> None:
    acme = await create_tenant(client, "acme")
    await with_images(client, acme, 1)
    async with restores_of(platform, service) as r:
        await r.backup("acme")
    assert (await client.delete("/admin/tenants/acme?now=true")).status_code == 204

    failing = dataclasses.replace(settings, failpoints="after:files=raise")
    async with Platform.open(failing, migrate=False) as p, restores_of(p, TenantService(p)) as broken:
        with pytest.raises(OperationFailed):
            await broken.restores.restore("acme", latest=True)

    restore = (await operations(control_dsn, acme.id))[-1]
    assert (restore["kind"], restore["state"], restore["step"]) == ("restore", "rolled_back", "files")
    assert await fetch(control_dsn, "SELECT 1 FROM tenants WHERE id = %s", (acme.id,)) == []
    assert not (settings.data_dir / "storage" / str(acme.id)).exists()  # purged it was, purged it stays
