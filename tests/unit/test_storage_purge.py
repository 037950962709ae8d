"""``Storage.delete_all`` (what a tenant purge runs) on ``LocalStorage``: every object and the tenant's
directory go, another tenant's objects stay, a second run finds nothing, and a planted symlink is removed
without following it."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from controlplane.storage import new_key
from controlplane.storage.local import LocalStorage

A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
B = uuid.UUID("00000000-0000-4000-8000-00000000000b")


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


def key_for(data: bytes) -> str:
    return new_key(hashlib.sha256(data).hexdigest(), "png")


async def test_removes_every_object_of_the_tenant_and_only_its(storage: LocalStorage) -> None:
    for tenant in (A, B):
        for i in range(3):
            await storage.put(tenant, key_for(bytes([i])), os.urandom(100))
    # A write that died half-way leaves a temporary file: it goes too (and is not counted as an object).
    (storage.tenant_dir(A) / ".tmp-0123456789abcdef").write_bytes(b"partial")
    kept = {p.name: p.read_bytes() for p in storage.tenant_dir(B).iterdir()}

    assert await storage.delete_all(A) == 3

    assert not storage.tenant_dir(A).exists()
    assert {p.name: p.read_bytes() for p in storage.tenant_dir(B).iterdir()} == kept
    assert await storage.usage(A) == 0


async def test_is_idempotent(storage: LocalStorage) -> None:
    assert await storage.delete_all(A) == 0  # nothing was ever stored
    await storage.put(A, key_for(b"x"), b"x")
    assert await storage.delete_all(A) == 1
    assert await storage.delete_all(A) == 0


async def test_a_planted_symlink_is_removed_not_followed(storage: LocalStorage, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_bytes(b"not the tenant's")
    storage.root.mkdir(parents=True)
    storage.tenant_dir(A).symlink_to(elsewhere, target_is_directory=True)
    await storage.put(B, key_for(b"b"), b"b")
    (storage.tenant_dir(B) / "link").symlink_to(elsewhere / "precious")

    assert await storage.delete_all(A) == 0
    assert await storage.delete_all(B) == 2

    assert not storage.tenant_dir(A).is_symlink() and not storage.tenant_dir(B).exists()
    assert (elsewhere / "precious").read_bytes() == b"not the tenant's"
