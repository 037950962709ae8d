"""Helpers of the restore tests: the services wired as the app wires them, tenants with data made through the
API, what the server holds (the tenant's databases and roles, restored and retired ones included), and a
stored object damaged on purpose."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.backups.models import Backup, BackupStatus
from controlplane.backups.restore import RestoreService
from controlplane.backups.retired import RestoreUpkeep
from controlplane.backups.service import BackupService
from controlplane.backups.verification import Verifier
from controlplane.objectstore.local import LocalObjectStore
from controlplane.platform import Platform
from controlplane.provisioning.service import TenantService
from tests.integration.tenant_support import fetch


@dataclass
class Restores:
    """The backup and restore services of one control plane (as the app builds them)."""

    backups: BackupService
    restores: RestoreService
    verifier: Verifier
    upkeep: RestoreUpkeep

    async def backup(self, slug: str) -> Backup:
        made = await self.backups.create(slug, requested_by="test")
        assert made.status is BackupStatus.SUCCEEDED, made.error
        return made


@asynccontextmanager
async def restores_of(platform: Platform, tenants: TenantService) -> AsyncIterator[Restores]:
    backups = BackupService(platform)
    restores = RestoreService(platform, tenants, backups)
    try:
        yield Restores(backups=backups, restores=restores, verifier=restores.verifier, upkeep=restores.upkeep)
    finally:
        await backups.stop()


async def tenant_databases(admin_dsn: str, tenant_id: uuid.UUID) -> dict[str, bool]:
    """Every database of the tenant on the server (its own, restored and retired ones): name -> accepts
    connections."""
    like = f"t\\_{tenant_id.hex}%"
    rows = await fetch(admin_dsn, "SELECT datname, datallowconn FROM pg_database WHERE datname LIKE %s", (like,))
    return {r["datname"]: r["datallowconn"] for r in rows}


async def scratch_databases(admin_dsn: str) -> list[str]:
    rows = await fetch(admin_dsn, "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", ("cvverify\\_%",))
    return [r["datname"] for r in rows]


def object_path(platform: Platform, backup: Backup) -> Path:
    store = platform.objects
    assert isinstance(store, LocalObjectStore)
    return store.path(backup.object_key)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


async def cards_via_api(client: Any, slug: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = await client.get(f"/t/{slug}/api/cards", params={"limit": 100}, headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return sorted(items, key=lambda c: c["id"])


async def add_card(client: Any, slug: str, headers: dict[str, str], number: str, notes: str = "") -> dict[str, Any]:
    response = await client.post(
        f"/t/{slug}/api/cards", json={"cardnumber": number, "year": 1989, "notes": notes}, headers=headers
    )
    assert response.status_code == 201, response.text
    card: dict[str, Any] = response.json()
    return card


async def verifications(control_dsn: str, backup_id: uuid.UUID) -> list[dict[str, Any]]:
    return await fetch(
        control_dsn, "SELECT ok, detail FROM backup_verifications WHERE backup_id = %s ORDER BY id", (backup_id,)
    )
