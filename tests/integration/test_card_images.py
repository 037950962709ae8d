"""Card images over HTTP: ``PUT``/``GET``/``DELETE /cards/{id}/image`` on real tenants and real files.

Proven here: an upload/fetch round trip for JPEG, PNG and WebP, recorded in the tenant's ``files`` table
(bytes, sha256) and stored under ``<storage>/<tenant id>/``; a body whose magic bytes are not an accepted
format, or do not match its Content-Type, is 415 and an oversize one 413, with nothing stored; replacing
an image removes the old file and its row, deleting the card (or the image) removes the file; the
``storage_bytes`` quota refuses uploads past the limit (403) while letting a smaller replacement through;
a failed database write leaves no object behind; and one tenant's uploads never touch another's files.
Uses the test app of ``test_cards_api``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from controlplane.cards import repository
from controlplane.registry.models import QuotaType
from tests.integration.cards_support import MAX_IMAGE_BYTES, CardApi, Json, assert_error, ts

SIGNATURES = {
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "image/png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "image/webp": b"RIFF\x00\x10\x00\x00WEBPVP8 ",
}
EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}


def image(content_type: str, size: int = 600) -> bytes:
    """``size`` bytes that start like an image of ``content_type`` (only the signature is checked)."""
    head = SIGNATURES[content_type]
    return head + os.urandom(size - len(head))


def tenant_dir(api: CardApi, slug: str) -> Path:
    return api.storage.tenant_dir(api.tenants[slug].record.id)


def stored(api: CardApi, slug: str) -> dict[str, bytes]:
    """Every file in the tenant's storage directory, by name."""
    directory = tenant_dir(api, slug)
    return {p.name: p.read_bytes() for p in directory.iterdir()} if directory.exists() else {}


async def files_rows(api: CardApi, slug: str) -> list[Json]:
    return await api.sql(slug, "SELECT key, content_type, bytes, sha256, kind, card_id FROM files ORDER BY id")


async def storage_counter(api: CardApi, slug: str) -> int:
    rows = await api.sql(slug, "SELECT value FROM usage_counters WHERE name = 'storage_bytes'")
    return int(rows[0]["value"])


async def upload(api: CardApi, slug: str, card_id: int, data: bytes, content_type: str | None) -> Any:
    headers = {"content-type": content_type} if content_type else {}
    return await api.request("PUT", slug, f"/cards/{card_id}/image", content=data, headers=headers)


async def assert_nothing_stored(api: CardApi, slug: str = "acme") -> None:
    assert stored(api, slug) == {}
    assert await files_rows(api, slug) == []
    assert await storage_counter(api, slug) == 0


@pytest.mark.parametrize("content_type", list(SIGNATURES))
async def test_upload_and_fetch_round_trip(api: CardApi, content_type: str) -> None:
    card = await api.create("acme", "/cards", {"cardnumber": "1"})
    data = image(content_type)
    digest = hashlib.sha256(data).hexdigest()

    response = await upload(api, "acme", card["id"], data, content_type)
    assert response.status_code == 200, response.text
    info = {"content_type": content_type, "bytes": len(data), "sha256": digest}
    assert response.json() == info

    fetched = await api.request("GET", "acme", f"/cards/{card['id']}/image")
    assert fetched.status_code == 200
    assert fetched.content == data
    assert fetched.headers["content-type"] == content_type
    assert fetched.headers["etag"] == f'"{digest}"'
    assert fetched.headers["x-content-type-options"] == "nosniff"

    after = (await api.request("GET", "acme", f"/cards/{card['id']}")).json()
    assert after["image"] == info
    assert ts(after["updated_at"]) > ts(card["updated_at"])

    (row,) = await files_rows(api, "acme")
    assert row == {**row, "content_type": content_type, "bytes": len(data), "sha256": digest, "card_id": card["id"]}
    assert row["kind"] == "image" and row["key"].endswith(EXTENSIONS[content_type])
    assert stored(api, "acme") == {row["key"]: data}
    assert await storage_counter(api, "acme") == len(data)


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("image/png", image("image/jpeg")),  # declared type does not match the bytes
        ("image/jpeg", image("image/png")),
        ("image/webp", image("image/jpeg")),
        ("image/jpeg", b"GIF89a" + bytes(100)),  # no accepted signature at all
        ("image/webp", b"RIFF\x00\x00\x00\x00WAVEfmt "),  # RIFF, but not WebP
        ("image/png", b"\x89PNG\r\n"),  # truncated signature
        ("image/png", b""),
        ("image/gif", b"GIF89a" + bytes(100)),  # format not accepted
        ("text/plain", image("image/png")),
        ("application/octet-stream", image("image/png")),
        (None, image("image/png")),
    ],
)
async def test_wrong_or_unknown_format_is_415(api: CardApi, content_type: str | None, data: bytes) -> None:
    card = await api.create("acme", "/cards", {"cardnumber": "1"})
    assert_error(await upload(api, "acme", card["id"], data, content_type), 415, "unsupported_media_type")
    await assert_nothing_stored(api)
    assert (await api.request("GET", "acme", f"/cards/{card['id']}")).json() == card


async def test_content_type_parameters_and_case_are_ignored(api: CardApi) -> None:
    card = await api.create("acme", "/cards", {"cardnumber": "1"})
    response = await upload(api, "acme", card["id"], image("image/png"), "Image/PNG; charset=binary")
    assert response.status_code == 200 and response.json()["content_type"] == "image/png"


@pytest.mark.parametrize("size", [MAX_IMAGE_BYTES + 1, 3 * MAX_IMAGE_BYTES, 11_000_000])
async def test_oversize_upload_is_413(api: CardApi, size: int) -> None:
    """Over the image limit (and, at 11 MB, over the app's request body limit as well)."""
    card = await api.create("acme", "/cards", {"cardnumber": "1"})
    assert_error(await upload(api, "acme", card["id"], image("image/png", size), "image/png"), 413, "payload_too_large")
    await assert_nothing_stored(api)


async def test_upload_of_exactly_the_limit_is_accepted(api: CardApi) -> None:
    card = await api.create("acme", "/cards", {"cardnumber": "1"})
    response = await upload(api, "acme", card["id"], image("image/webp", MAX_IMAGE_BYTES), "image/webp")
    assert response.status_code == 200 and response.json()["bytes"] == MAX_IMAGE_BYTES


async def test_replacing_removes_the_old_file_and_row(api: CardApi) -> None:
    card = await api.create("acme", "/cards", {"cardnumber": "1"})
    first, second = image("image/png", 700), image("image/jpeg", 400)
    assert (await upload(api, "acme", card["id"], first, "image/png")).status_code == 200
    (old_row,) = await files_rows(api, "acme")

    assert (await upload(api, "acme", card["id"], second, "image/jpeg")).status_code == 200
    (new_row,) = await files_rows(api, "acme")
    assert new_row["key"] != old_row["key"] and new_row["bytes"] == len(second)
    assert stored(api, "acme") == {new_row["key"]: second}
    assert await storage_counter(api, "acme") == len(second)
    assert (await api.request("GET", "acme", f"/cards/{card['id']}/image")).content == second

    # The same picture on two cards is two objects: removing one leaves the other.
    other = await api.create("acme", "/cards", {"cardnumber": "2"})
    assert (await upload(api, "acme", other["id"], second, "image/jpeg")).status_code == 200
    assert (await api.request("DELETE", "acme", f"/cards/{card['id']}")).status_code == 204
    assert (await api.request("GET", "acme", f"/cards/{other['id']}/image")).content == second


async def test_deleting_the_card_removes_its_file(api: CardApi) -> None:
    card = await api.create("acme", "/cards", {"cardnumber": "1"})
    assert (await upload(api, "acme", card["id"], image("image/png"), "image/png")).status_code == 200
    assert len(stored(api, "acme")) == 1

    assert (await api.request("DELETE", "acme", f"/cards/{card['id']}")).status_code == 204
    await assert_nothing_stored(api)
    assert_error(await api.request("GET", "acme", f"/cards/{card['id']}/image"), 404, "not_found")


async def test_deleting_the_image(api: CardApi) -> None:
    card = await api.create("acme", "/cards", {"cardnumber": "1"})
    assert (await upload(api, "acme", card["id"], image("image/png"), "image/png")).status_code == 200
    before = (await api.request("GET", "acme", f"/cards/{card['id']}")).json()

    assert (await api.request("DELETE", "acme", f"/cards/{card['id']}/image")).status_code == 204
    await assert_nothing_stored(api)
    after = (await api.request("GET", "acme", f"/cards/{card['id']}")).json()
    assert after["image"] is None and ts(after["updated_at"]) > ts(before["updated_at"])
    assert_error(await api.request("GET", "acme", f"/cards/{card['id']}/image"), 404, "not_found")
    assert_error(await api.request("DELETE", "acme", f"/cards/{card['id']}/image"), 404, "not_found")


async def test_images_of_missing_cards_are_404(api: CardApi) -> None:
    assert_error(await upload(api, "acme", 42, image("image/png"), "image/png"), 404, "not_found")
    assert_error(await api.request("GET", "acme", "/cards/42/image"), 404, "not_found")
    assert_error(await api.request("DELETE", "acme", "/cards/42/image"), 404, "not_found")
    await assert_nothing_stored(api)


async def test_storage_quota(api: CardApi) -> None:
    api.tenants["acme"].limits[QuotaType.STORAGE_BYTES] = 1000
    one = await api.create("acme", "/cards", {"cardnumber": "1"})
    two = await api.create("acme", "/cards", {"cardnumber": "2"})
    assert (await upload(api, "acme", one["id"], image("image/png", 600), "image/png")).status_code == 200

    body = assert_error(
        await upload(api, "acme", two["id"], image("image/png", 600), "image/png"), 403, "quota_exceeded"
    )
    assert (body["quota"], body["limit"], body["usage"]) == ("storage_bytes", 1000, 600)
    assert len(stored(api, "acme")) == 1 and len(await files_rows(api, "acme")) == 1

    # A replacement only needs the difference: 600 -> 1000 fits, 1000 -> 1001 does not.
    assert (await upload(api, "acme", one["id"], image("image/png", 1000), "image/png")).status_code == 200
    body = assert_error(
        await upload(api, "acme", one["id"], image("image/png", 1001), "image/png"), 403, "quota_exceeded"
    )
    assert body["usage"] == 1000
    assert await storage_counter(api, "acme") == 1000 == sum(len(b) for b in stored(api, "acme").values())

    # Freeing space makes room again.
    assert (await api.request("DELETE", "acme", f"/cards/{one['id']}/image")).status_code == 204
    assert (await upload(api, "acme", two["id"], image("image/png", 900), "image/png")).status_code == 200


async def test_failed_database_write_leaves_no_object(api: CardApi, monkeypatch: pytest.MonkeyPatch) -> None:
    card = await api.create("acme", "/cards", {"cardnumber": "1"})

    async def broken_insert(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("simulated failure after the object was stored")

    monkeypatch.setattr(repository, "insert_file", broken_insert)
    response = await upload(api, "acme", card["id"], image("image/png"), "image/png")
    assert_error(response, 500, "internal_error")
    await assert_nothing_stored(api)


async def test_uploads_never_touch_another_tenants_files(api: CardApi) -> None:
    a = await api.create("acme", "/cards", {"cardnumber": "A"})
    b = await api.create("globex", "/cards", {"cardnumber": "B"})
    assert a["id"] == b["id"]
    acme_image = image("image/png")
    assert (await upload(api, "acme", a["id"], acme_image, "image/png")).status_code == 200
    acme_dir = tenant_dir(api, "acme")

    def snapshot() -> dict[str, tuple[int, int, bytes]]:
        return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in acme_dir.iterdir()}

    before = snapshot()
    for data, content_type in ((image("image/jpeg"), "image/jpeg"), (image("image/webp"), "image/webp")):
        assert (await upload(api, "globex", b["id"], data, content_type)).status_code == 200
    assert (await api.request("DELETE", "globex", f"/cards/{b['id']}")).status_code == 204

    assert snapshot() == before
    assert tenant_dir(api, "globex") != acme_dir and stored(api, "globex") == {}
    assert (await api.request("GET", "acme", f"/cards/{a['id']}/image")).content == acme_image
    assert_error(await api.request("GET", "globex", f"/cards/{b['id']}/image"), 404, "not_found")


async def test_a_lost_object_is_reported_not_crashed_on(api: CardApi) -> None:
    card = await api.create("acme", "/cards", {"cardnumber": "1"})
    assert (await upload(api, "acme", card["id"], image("image/png"), "image/png")).status_code == 200
    for path in tenant_dir(api, "acme").iterdir():
        path.unlink()  # an operator's mistake, or a restore without the files
    assert_error(await api.request("GET", "acme", f"/cards/{card['id']}/image"), 404, "image_missing")
    # Replacing or deleting still works and leaves everything consistent.
    assert (await upload(api, "acme", card["id"], image("image/jpeg"), "image/jpeg")).status_code == 200
    assert (await api.request("DELETE", "acme", f"/cards/{card['id']}")).status_code == 204
    await assert_nothing_stored(api)
