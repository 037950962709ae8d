"""Helpers of the collection's page tests: catalog rows and cards made through the tenant API (as the
tenant's admin), real little PNG and JPEG files, and posting a page's multipart card form."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import httpx

from tests.integration.auth_support import TenantAdmin
from tests.integration.web.web_support import csrf_of


async def made(api: httpx.AsyncClient, tenant: TenantAdmin, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /t/{slug}/api{path}`` as the tenant's admin (asserts 201); the row."""
    response = await api.post(tenant.api(path), json=body, headers=tenant.auth)
    assert response.status_code == 201, response.text
    row: dict[str, Any] = response.json()
    return row


def png(width: int = 2, height: int = 3) -> bytes:
    """A real (decodable) grey PNG of ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([128]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def jpeg() -> bytes:
    """Bytes that start like a JPEG (the service checks the signature only, as in ``test_card_images``)."""
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 2


async def post_card(
    browser: httpx.AsyncClient,
    path: str,
    fields: dict[str, str],
    *,
    from_page: str,
    image: tuple[str, bytes, str] | None = None,
) -> httpx.Response:
    """Post the card form at ``path`` as a browser does (multipart; ``image``: filename, bytes, type)."""
    token = csrf_of(await browser.get(from_page))
    files = {"image": image if image is not None else ("", b"", "application/octet-stream")}
    return await browser.post(path, data={**fields, "csrf_token": token}, files=files)
