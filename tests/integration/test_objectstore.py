"""The ``ObjectStore`` contract, run against both stores: ``LocalObjectStore`` (a directory) and
``S3ObjectStore`` against a real S3-compatible server (``moto_server``, see ``tests/s3_harness.py``).

A stored object reads back byte for byte with its size and sha256; a stream that raises leaves nothing
(no object, no temporary file, no unfinished multipart upload); ``list`` gives the keys under a prefix,
sorted, across pages; ``delete`` is idempotent; a missing key is ``ObjectNotFound`` / ``None``; keys that
could escape the store are refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.objectstore import InvalidObjectKey, ObjectNotFound, ObjectStore
from controlplane.objectstore.local import LocalObjectStore
from controlplane.objectstore.s3 import MIN_PART_SIZE, S3ObjectStore
from tests.s3_harness import ACCESS_KEY, PREFIX, REGION, SECRET_KEY, S3Server

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalObjectStore(tmp_path / "store")
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    yield S3ObjectStore(
        bucket,
        prefix=PREFIX,
        endpoint_url=server.endpoint,
        region=REGION,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        part_size=MIN_PART_SIZE,
        page_size=2,
    )


async def stream(data: bytes, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


async def failing(data: bytes) -> AsyncIterator[bytes]:
    async for chunk in stream(data):
        yield chunk
    raise RuntimeError("the producer broke")


async def read(store: ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.get(key)])


def leftovers(store: ObjectStore) -> list[Any]:
    """What a store may leave behind: temporary files, unfinished multipart uploads."""
    if isinstance(store, LocalObjectStore):
        return [p for p in store.root.rglob("*") if p.is_file()] if store.root.exists() else []
    assert isinstance(store, S3ObjectStore)
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket)
    objects = store.client.list_objects_v2(Bucket=store.bucket)
    return [*uploads.get("Uploads", []), *objects.get("Contents", [])]


@pytest.mark.parametrize("size", [0, 1, 3 * MiB, 11 * MiB + 7])
async def test_an_object_reads_back_whole_with_its_size_and_sha256(store: ObjectStore, size: int) -> None:
    data = os.urandom(size)
    stored = await store.put("backups/t1/b1.dump.cvs", stream(data))
    assert (stored.key, stored.size, stored.sha256) == (
        "backups/t1/b1.dump.cvs",
        size,
        hashlib.sha256(data).hexdigest(),
    )
    assert await read(store, "backups/t1/b1.dump.cvs") == data
    assert await store.stat("backups/t1/b1.dump.cvs") == size
    # Replacing it replaces it whole.
    await store.put("backups/t1/b1.dump.cvs", stream(b"second"))
    assert await read(store, "backups/t1/b1.dump.cvs") == b"second"


@pytest.mark.parametrize("size", [10, 12 * MiB])
async def test_a_stream_that_raises_leaves_nothing(store: ObjectStore, size: int) -> None:
    with pytest.raises(RuntimeError, match="the producer broke"):
        await store.put("backups/t1/broken.dump.cvs", failing(os.urandom(size)))
    assert await store.stat("backups/t1/broken.dump.cvs") is None
    assert await store.list("backups/") == []
    assert leftovers(store) == []
    # An object already there is left as it was.
    await store.put("backups/t1/kept.dump.cvs", stream(b"kept"))
    with pytest.raises(RuntimeError):
        await store.put("backups/t1/kept.dump.cvs", failing(os.urandom(size)))
    assert await read(store, "backups/t1/kept.dump.cvs") == b"kept"


async def test_list_gives_the_keys_under_a_prefix_sorted_across_pages(store: ObjectStore) -> None:
    keys = [f"backups/{t}/{b}.dump.cvs" for t in ("t2", "t1") for b in ("b3", "b1", "b2")] + ["exports/t1/e1.zip"]
    for key in keys:
        await store.put(key, stream(key.encode()))
    assert await store.list("backups/t1/") == [f"backups/t1/b{n}.dump.cvs" for n in (1, 2, 3)]
    assert await store.list("backups/") == sorted(k for k in keys if k.startswith("backups/"))
    assert await store.list("exports/") == ["exports/t1/e1.zip"]
    assert await store.list("nothing/") == []


async def test_delete_is_idempotent_and_missing_keys_are_not_found(store: ObjectStore) -> None:
    await store.put("backups/t1/b1.dump.cvs", stream(b"x"))
    assert await store.delete("backups/t1/b1.dump.cvs") is True
    assert await store.delete("backups/t1/b1.dump.cvs") is False
    assert await store.stat("backups/t1/b1.dump.cvs") is None
    with pytest.raises(ObjectNotFound):
        await read(store, "backups/t1/b1.dump.cvs")
    assert await store.list("backups/") == []


@pytest.mark.parametrize("key", ["../escape", "backups/../x", "/abs", "Backups/x", ".hidden", "a//b", "a/.b", ""])
async def test_keys_that_could_escape_the_store_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidObjectKey):
        await store.put(key, stream(b"x"))
    with pytest.raises(InvalidObjectKey):
        await store.stat(key)
    with pytest.raises(InvalidObjectKey):
        await store.delete(key)


async def test_s3_objects_live_under_the_prefix_in_multipart_parts(s3_server: S3Server, s3_bucket: str) -> None:
    store = S3ObjectStore(
        s3_bucket,
        prefix="/deep/prefix/",
        endpoint_url=s3_server.endpoint,
        region=REGION,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        part_size=MIN_PART_SIZE,
    )
    assert store.description == f"s3://{s3_bucket}/deep/prefix"
    data = os.urandom(2 * MIN_PART_SIZE + 5)
    await store.put("backups/t/b.dump.cvs", stream(data, piece=MiB))
    raw = s3_server.client()
    head = raw.head_object(Bucket=s3_bucket, Key="deep/prefix/backups/t/b.dump.cvs")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of three parts
    assert await store.list("backups/") == ["backups/t/b.dump.cvs"]
    with pytest.raises(ValueError, match="at least"):
        S3ObjectStore(s3_bucket, endpoint_url=s3_server.endpoint, part_size=MIN_PART_SIZE - 1)
