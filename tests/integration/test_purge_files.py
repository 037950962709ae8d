"""A purge removes every byte of the tenant: its database, its role, its row, and its stored files.

Card images live under ``$CARDVAULT_DATA_DIR/storage/<tenant id>/``. Purging a tenant (at once, or after
a soft delete) removes that directory and nothing else: another tenant's images stay, byte for byte. A
purge that fails or dies at any of its steps is finished by the reconciler, files included.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from controlplane.errors import OperationFailed
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from controlplane.settings import Settings
from tests.integration.auth_support import TenantAdmin, create_tenant
from tests.integration.tenant_support import assert_tenant_gone, operations, reconcile

Client = AsyncTestClient[Any]
PURGE_STEPS = ("drop_database", "drop_role", "drop_files", "forget")


def png(size: int = 300) -> bytes:
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(size)


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return dataclasses.replace(settings, data_dir=tmp_path / "data")


def files_of(settings: Settings, tenant_id: uuid.UUID) -> dict[str, bytes]:
    directory = settings.data_dir / "storage" / str(tenant_id)
    return {p.name: p.read_bytes() for p in directory.iterdir()} if directory.exists() else {}


async def with_images(client: Client, t: TenantAdmin, count: int) -> dict[int, bytes]:
    """``count`` cards of ``t`` with an image each, uploaded through the API: card id -> image."""
    uploaded = {}
    for i in range(count):
        card = await client.post(t.api("/cards"), json={"cardnumber": str(i)}, headers=t.auth)
        assert card.status_code == 201, card.text
        data = png()
        response = await client.put(
            t.api(f"/cards/{card.json()['id']}/image"), content=data, headers={**t.auth, "content-type": "image/png"}
        )
        assert response.status_code == 200, response.text
        uploaded[card.json()["id"]] = data
    return uploaded


@pytest.mark.parametrize("how", ["now", "after soft delete"])
async def test_purge_removes_the_tenants_files_and_only_its(
    how: str, client: Client, service: TenantService, settings: Settings, control_dsn: str, pg_admin_dsn: str
) -> None:
    doomed = await create_tenant(client, "doomed")
    kept = await create_tenant(client, "kept")
    doomed_images = await with_images(client, doomed, 3)
    assert sorted(files_of(settings, doomed.id).values()) == sorted(doomed_images.values())
    kept_images = await with_images(client, kept, 2)
    kept_files = files_of(settings, kept.id)
    assert sorted(kept_files.values()) == sorted(kept_images.values())

    if how == "now":
        response = await client.delete("/admin/tenants/doomed?now=true")
        assert response.status_code == 204, response.text
    else:
        assert (await client.delete("/admin/tenants/doomed")).status_code == 200
        assert len(files_of(settings, doomed.id)) == 3  # a soft delete keeps everything (it may be undone)
        await service.purge("doomed")

    assert not (settings.data_dir / "storage" / str(doomed.id)).exists()
    await assert_tenant_gone(control_dsn, pg_admin_dsn, doomed.id)
    purge = (await operations(control_dsn, doomed.id))[-1]
    assert (purge["kind"], purge["state"]) == ("purge", "succeeded")
    assert [s["step"] for s in purge["steps"]] == list(PURGE_STEPS)
    assert files_of(settings, kept.id) == kept_files
    for card_id, data in kept_images.items():
        image = await client.get(kept.api(f"/cards/{card_id}/image"), headers=kept.auth)
        assert image.status_code == 200 and image.content == data


@asynccontextmanager
async def failing(settings: Settings, spec: str) -> AsyncIterator[TenantService]:
    async with Platform.open(dataclasses.replace(settings, failpoints=spec), migrate=False) as opened:
        yield TenantService(opened)


@pytest.mark.parametrize("point", [f"{when}:{step}" for step in PURGE_STEPS[:3] for when in ("before", "after")])
async def test_a_failed_purge_leaves_no_file_once_the_reconciler_finished_it(
    point: str, settings: Settings, service: TenantService, platform: Platform, control_dsn: str, pg_admin_dsn: str
) -> None:
    doomed = await service.create(name="Doomed", slug="doomed", tier="starter")
    kept = await service.create(name="Kept", slug="kept", tier="starter")
    for tenant in (doomed, kept):
        for i in range(2):
            await service.storage.put(tenant.id, f"object-{i}.png", png())
    kept_files = files_of(settings, kept.id)

    async with failing(settings, f"{point}=raise") as broken:
        with pytest.raises(OperationFailed):
            await broken.purge("doomed")
    report = await reconcile(platform, fix=True)
    assert all(f.action in ("purged", "finished") for f in report.findings), report.findings

    assert not (settings.data_dir / "storage" / str(doomed.id)).exists()
    await assert_tenant_gone(control_dsn, pg_admin_dsn, doomed.id)
    assert files_of(settings, kept.id) == kept_files
