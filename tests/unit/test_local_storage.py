"""``LocalStorage`` and storage keys: round trips, atomic writes, per-tenant directories, refused paths; the
listing and the quarantine storage hygiene uses."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from controlplane.storage import InvalidStorageKey, Storage, StoredObject, new_key, validate_key
from controlplane.storage.local import LocalStorage

A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
B = uuid.UUID("00000000-0000-4000-8000-00000000000b")


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


def key_for(data: bytes, extension: str = "png") -> str:
    return new_key(hashlib.sha256(data).hexdigest(), extension)


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def test_local_storage_is_a_storage(storage: LocalStorage) -> None:
    assert isinstance(storage, Storage)


async def test_round_trip(storage: LocalStorage, tmp_path: Path) -> None:
    key = key_for(b"picture")
    assert await storage.get(A, key) is None
    assert await storage.usage(A) == 0

    await storage.put(A, key, b"picture")
    assert await storage.get(A, key) == b"picture"
    assert (tmp_path / "storage" / str(A) / key).read_bytes() == b"picture"
    assert await storage.usage(A) == len(b"picture")

    await storage.put(A, key, b"replaced")  # overwriting is allowed and atomic
    assert await storage.get(A, key) == b"replaced"

    assert await storage.delete(A, key) is True
    assert await storage.delete(A, key) is False  # idempotent
    assert await storage.get(A, key) is None
    assert await storage.usage(A) == 0


async def test_writes_leave_no_temporary_files(storage: LocalStorage) -> None:
    keys = [key_for(bytes([i])) for i in range(20)]
    await asyncio.gather(*(storage.put(A, key, os.urandom(1000)) for key in keys))
    assert sorted(p.name for p in storage.tenant_dir(A).iterdir()) == sorted(keys)
    assert await storage.usage(A) == 20 * 1000


async def test_a_failed_write_leaves_nothing(storage: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_replace(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        await storage.put(A, key_for(b"x"), b"x")
    assert list(storage.tenant_dir(A).iterdir()) == []


async def test_usage_skips_temporary_files(storage: LocalStorage) -> None:
    await storage.put(A, key_for(b"x"), b"12345")
    (storage.tenant_dir(A) / ".tmp-leftover").write_bytes(b"0" * 100)
    assert await storage.usage(A) == 5


async def test_tenants_are_kept_apart(storage: LocalStorage) -> None:
    key = key_for(b"same key in both")
    await storage.put(A, key, b"tenant a")
    await storage.put(B, key, b"tenant b")
    assert await storage.get(A, key) == b"tenant a"
    assert await storage.get(B, key) == b"tenant b"
    assert storage.tenant_dir(A) != storage.tenant_dir(B)

    await storage.delete(B, key)
    assert await storage.get(A, key) == b"tenant a"
    assert await storage.usage(A) == len(b"tenant a") and await storage.usage(B) == 0


BAD_KEYS = [
    "",
    ".",
    "..",
    "../x.png",
    "../../etc/passwd",
    "..%2f..%2fx",
    "a/b.png",
    "a\\b.png",
    "/etc/passwd",
    ".hidden",
    ".tmp-123",
    "-rf",
    "x.png/",
    "x.png\x00.jpg",
    "UPPER.png",
    "x.tar.gz",
    "x." + "a" * 9,
    "k" * 200,
    " x.png",
    "x .png",
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_keys_that_could_escape_are_refused(storage: LocalStorage, key: str, tmp_path: Path) -> None:
    for call in (storage.put(A, key, b"x"), storage.get(A, key), storage.delete(A, key)):
        with pytest.raises(InvalidStorageKey):
            await call
    assert files_under(tmp_path) == [], "nothing may be written anywhere"


@pytest.mark.parametrize("tenant", ["../" + str(A), str(A), "..", None, 42])
async def test_tenant_ids_must_be_uuids(storage: LocalStorage, tenant: Any) -> None:
    with pytest.raises(InvalidStorageKey):
        await storage.put(tenant, key_for(b"x"), b"x")
    with pytest.raises(InvalidStorageKey):
        await storage.usage(tenant)


async def test_symlinks_do_not_lead_outside(storage: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"secret")
    key = key_for(b"link")
    storage.tenant_dir(A).mkdir(parents=True)
    (storage.tenant_dir(A) / key).symlink_to(outside)
    for call in (storage.get(A, key), storage.delete(A, key), storage.put(A, key, b"overwrite")):
        with pytest.raises(InvalidStorageKey):
            await call
    assert outside.read_bytes() == b"secret"

    # A tenant directory that is itself a link out of the root is refused as well.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    storage.tenant_dir(B).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(InvalidStorageKey):
        await storage.put(B, key, b"x")
    assert list(elsewhere.iterdir()) == []


def test_new_keys() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    first, second = new_key(digest, "png"), new_key(digest, "png")
    assert first != second, "equal content still gets its own object"
    assert first.startswith(digest + "-") and first.endswith(".png")
    validate_key(A, first)
    with pytest.raises(InvalidStorageKey):
        new_key("../" + digest, "png")
    with pytest.raises(InvalidStorageKey):
        new_key(digest, "p/ng")


# -- listing and quarantine (storage hygiene) -------------------------------------------------------


async def test_keys_list_objects_with_size_and_time_and_nothing_else(storage: LocalStorage, tmp_path: Path) -> None:
    key = key_for(b"listed")
    await storage.put(A, key, b"12345")
    os.utime(storage.tenant_dir(A) / key, (1_000_000, 1_000_000))
    await storage.put(B, key_for(b"b"), b"b")
    (storage.tenant_dir(A) / ".tmp-0123456789abcdef").write_bytes(b"partial")  # a write in progress
    (storage.tenant_dir(A) / "NotAKey.PNG").write_bytes(b"x")  # nothing can name it
    (tmp_path / "outside.png").write_bytes(b"secret")
    (storage.tenant_dir(A) / key_for(b"link")).symlink_to(tmp_path / "outside.png")

    assert await storage.keys(A) == [StoredObject(key, 5, 1_000_000.0)]
    assert await storage.stat(A, key) == StoredObject(key, 5, 1_000_000.0)
    assert await storage.stat(A, key_for(b"none")) is None
    assert await storage.keys(uuid.uuid4()) == []  # no area at all


async def test_quarantine_takes_an_object_out_of_service_until_restored(storage: LocalStorage) -> None:
    key = key_for(b"orphan")
    await storage.put(A, key, b"orphaned bytes")

    assert await storage.quarantine(A, key) == len(b"orphaned bytes")
    assert await storage.get(A, key) is None and await storage.keys(A) == [] and await storage.usage(A) == 0
    assert (storage.root / ".quarantine" / str(A) / key).read_bytes() == b"orphaned bytes"
    assert await storage.quarantine(A, key) is None  # nothing served under the key any more
    assert storage.quarantine_dir(A) not in storage.tenant_dir(A).parents

    assert await storage.restore(A, key) is True
    assert await storage.get(A, key) == b"orphaned bytes"
    assert await storage.restore(A, key) is True  # served already: nothing to do, still true
    assert await storage.restore(A, key_for(b"never")) is False

    await storage.quarantine(A, key)
    assert await storage.delete_quarantined(A, key) == len(b"orphaned bytes")
    assert await storage.delete_quarantined(A, key) is None
    assert await storage.restore(A, key) is False
    assert await storage.get(A, key) is None


async def test_quarantine_of_one_tenant_never_touches_another(storage: LocalStorage) -> None:
    key = key_for(b"same key")
    await storage.put(A, key, b"a")
    await storage.put(B, key, b"b")
    await storage.quarantine(A, key)
    assert await storage.get(B, key) == b"b"
    assert await storage.restore(B, key) is True  # B's own object; A's quarantined copy stays put
    assert await storage.delete_quarantined(B, key) is None
    assert (storage.quarantine_dir(A) / key).read_bytes() == b"a"


async def test_areas_are_the_tenant_directories(storage: LocalStorage) -> None:
    await storage.put(A, key_for(b"a"), b"a")
    key = key_for(b"b")
    await storage.put(B, key, b"b")
    await storage.quarantine(B, key)
    (storage.root / "not-a-tenant").mkdir()
    (storage.root / str(A).replace("-", "")).mkdir()  # a UUID, but not as a tenant directory is named
    assert sorted(await storage.areas()) == sorted([A, B])


async def test_remove_area_only_when_no_object_is_left(storage: LocalStorage) -> None:
    key = key_for(b"x")
    await storage.put(A, key, b"x")
    assert await storage.remove_area(A) is False and await storage.get(A, key) == b"x"
    await storage.quarantine(A, key)
    (storage.tenant_dir(A) / ".tmp-leftover").write_bytes(b"partial")
    assert await storage.remove_area(A) is True
    assert not storage.tenant_dir(A).exists()
    assert (storage.quarantine_dir(A) / key).exists(), "the quarantine is kept"
    assert await storage.remove_area(A) is True  # gone already


async def test_delete_all_removes_the_quarantine_too(storage: LocalStorage) -> None:
    first, second, other = key_for(b"1"), key_for(b"2"), key_for(b"b")
    await storage.put(A, first, b"1")
    await storage.put(A, second, b"2")
    await storage.quarantine(A, first)
    await storage.put(B, other, b"b")
    await storage.quarantine(B, other)
    assert await storage.delete_all(A) == 1  # served objects removed; the quarantined one goes too
    assert not storage.tenant_dir(A).exists() and not storage.quarantine_dir(A).exists()
    assert (storage.quarantine_dir(B) / other).exists()


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_quarantine_refuses_keys_that_could_escape(storage: LocalStorage, key: str, tmp_path: Path) -> None:
    for call in (storage.quarantine(A, key), storage.restore(A, key), storage.delete_quarantined(A, key)):
        with pytest.raises(InvalidStorageKey):
            await call
    assert files_under(tmp_path) == []


async def test_a_planted_quarantine_link_is_not_followed(storage: LocalStorage, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    key = key_for(b"x")
    await storage.put(A, key, b"x")
    (storage.root / ".quarantine").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(InvalidStorageKey):
        await storage.quarantine(A, key)
    assert await storage.get(A, key) == b"x" and list(elsewhere.iterdir()) == []
