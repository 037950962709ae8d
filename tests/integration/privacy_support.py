"""Helpers of the privacy tests: cards and images made through the API, exports asked for, waited on and
downloaded, archives opened and checked against their manifest, and reads of ``tenant_exports`` and the
stored objects that go around the code under test."""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
import zipfile
from typing import Any

from litestar.testing import AsyncTestClient

from controlplane.settings import Settings
from tests.conftest import eventually
from tests.integration.auth_support import TenantAdmin
from tests.integration.tenant_support import fetch

Client = AsyncTestClient[Any]


def png(size: int = 200) -> bytes:
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(size)


async def card_with_image(client: Client, t: TenantAdmin, auth: dict[str, str], notes: str) -> tuple[int, bytes]:
    """A card with ``notes`` and a PNG image, made through the API as ``auth``: (card id, image bytes)."""
    card = await client.post(t.api("/cards"), json={"cardnumber": "C-1", "notes": notes}, headers=auth)
    assert card.status_code == 201, card.text
    image = png()
    put = await client.put(
        t.api(f"/cards/{card.json()['id']}/image"), content=image, headers={**auth, "content-type": "image/png"}
    )
    assert put.status_code == 200, put.text
    return int(card.json()["id"]), image


async def ask(client: Client, t: TenantAdmin, path: str, auth: dict[str, str]) -> dict[str, Any]:
    """POST an export request (``/exports``, ``/me/export``, ``/users/{id}/export``); its 202 body."""
    response = await client.post(t.api(path), headers=auth)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "pending" and body["download_token"], body
    return body


async def wait_ready(client: Client, t: TenantAdmin, export_id: str, auth: dict[str, str]) -> dict[str, Any]:
    """The export once it is ready (the request's process makes it in the background)."""
    seen: dict[str, Any] = {}

    async def ready() -> bool:
        response = await client.get(t.api(f"/exports/{export_id}"), headers=auth)
        assert response.status_code == 200, response.text
        seen.update(response.json())
        assert seen["status"] != "failed", seen
        return bool(seen["status"] == "ready")

    await eventually(ready, f"export {export_id} ready", within=30)
    return seen


def download_path(export_id: str, token: str) -> str:
    return f"/exports/{export_id}/download?token={token}"


async def export_row(control_dsn: str, export_id: str | uuid.UUID) -> dict[str, Any]:
    rows = await fetch(control_dsn, "SELECT * FROM tenant_exports WHERE id = %s", (uuid.UUID(str(export_id)),))
    assert rows, f"no export {export_id}"
    return rows[0]


def stored_object(settings: Settings, key: str) -> bytes | None:
    """The stored (sealed) object under ``key`` in the local object store, if it is there."""
    path = settings.backup_dir / key
    return path.read_bytes() if path.exists() else None


def open_archive(data: bytes) -> tuple[zipfile.ZipFile, dict[str, Any]]:
    """The zip and its manifest, after checking that every entry matches the manifest's size and sha256."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    manifest: dict[str, Any] = json.loads(archive.read("manifest.json"))
    names = {info.filename for info in archive.infolist()} - {"manifest.json"}
    assert {e["name"] for e in manifest["entries"]} == names
    for entry in manifest["entries"]:
        content = archive.read(entry["name"])
        assert len(content) == entry["bytes"], entry
        assert hashlib.sha256(content).hexdigest() == entry["sha256"], entry
    return archive, manifest


def everything(archive: zipfile.ZipFile) -> bytes:
    """Every entry's content, concatenated (to look for what must not be there)."""
    return b"\n".join(archive.read(info.filename) for info in archive.infolist())


def table(archive: zipfile.ZipFile, name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(archive.read(f"tables/{name}.json"))
    return rows
