"""``S3ObjectStore``: objects in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...), under a key prefix.

boto3's client is synchronous (and thread-safe): every call runs in a worker thread (``asyncio.to_thread``)
so the event loop never waits on the network.

- ``put`` streams: a stream smaller than one part is one ``PutObject``; a larger one is a multipart upload
  of ``part_size`` parts (S3 wants at least 5 MiB but for the last), reading the next part while the
  previous one uploads, so at most two parts are in memory. An object appears whole at
  ``CompleteMultipartUpload`` or not at all; if the stream (or an upload) raises, the upload is aborted,
  so no part is left behind (S3 bills stored parts of unfinished uploads).
- ``get`` streams the body in ``CHUNK_SIZE`` reads; ``stat`` is ``HeadObject``; ``delete`` looks first (S3's
  delete answers the same whether there was an object or not); ``list`` pages through
  ``ListObjectsV2``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from controlplane.objectstore import CHUNK_SIZE, ObjectNotFound, StoredObject, validate_key
from controlplane.settings import BackupSettings

#: S3's smallest part (all but the last).
MIN_PART_SIZE = 5 * 1024 * 1024
#: Bytes per part by default: 16 MiB parts reach 160 GB within S3's 10,000 parts.
DEFAULT_PART_SIZE = 16 * 1024 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}


_session: Any = None


def _shared_session() -> Any:
    """One boto3 session for every store of the process: a session parses the service models once (~0.2 s)."""
    global _session
    if _session is None:
        _session = boto3.session.Session()
    return _session


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING


class S3ObjectStore:
    """Objects in ``bucket`` under ``prefix`` (see the module doc)."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        page_size: int = 1000,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 parts are at least {MIN_PART_SIZE} bytes, not {part_size}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.page_size = page_size
        self.description = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        config = Config(
            connect_timeout=10,
            read_timeout=60,
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=20,
        )
        self.client: Any = _shared_session().client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            config=config,
        )

    @classmethod
    def from_settings(cls, settings: BackupSettings) -> S3ObjectStore:
        return cls(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint or None,
            region=settings.s3_region,
            access_key=settings.s3_access_key or None,
            secret_key=settings.s3_secret_key or None,
        )

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> StoredObject:
        full = self._key(key)
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        uploading: asyncio.Task[None] | None = None
        number = 0

        async def upload(number: int, body: bytes) -> None:
            done = await asyncio.to_thread(
                self.client.upload_part,
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
            )
            parts.append({"PartNumber": number, "ETag": done["ETag"]})

        async def start_part(body: bytes) -> None:
            nonlocal upload_id, uploading, number
            if uploading is not None:
                await uploading  # at most one part in flight while the next one is read
            if upload_id is None:
                started = await asyncio.to_thread(self.client.create_multipart_upload, Bucket=self.bucket, Key=full)
                upload_id = started["UploadId"]
            number += 1
            uploading = asyncio.create_task(upload(number, body))

        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                while len(buffer) >= self.part_size:
                    body = bytes(buffer[: self.part_size])
                    del buffer[: self.part_size]
                    await start_part(body)
            if upload_id is None:
                await asyncio.to_thread(self.client.put_object, Bucket=self.bucket, Key=full, Body=bytes(buffer))
            else:
                if buffer:
                    await start_part(bytes(buffer))
                if uploading is not None:
                    await uploading
                await asyncio.to_thread(
                    self.client.complete_multipart_upload,
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": sorted(parts, key=lambda p: p["PartNumber"])},
                )
        except BaseException:
            if uploading is not None and not uploading.done():
                uploading.cancel()
                with contextlib.suppress(BaseException):
                    await uploading
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(
                        self.client.abort_multipart_upload, Bucket=self.bucket, Key=full, UploadId=upload_id
                    )
            raise
        return StoredObject(key=key, size=size, sha256=digest.hexdigest())

    async def get(self, key: str) -> AsyncIterator[bytes]:
        full = self._key(key)
        try:
            response = await asyncio.to_thread(self.client.get_object, Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if _missing(exc):
                raise ObjectNotFound(key) from None
            raise
        body = response["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, CHUNK_SIZE):
                yield chunk
        finally:
            body.close()

    async def stat(self, key: str) -> int | None:
        full = self._key(key)
        try:
            head = await asyncio.to_thread(self.client.head_object, Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return int(head["ContentLength"])

    async def delete(self, key: str) -> bool:
        if await self.stat(key) is None:
            return False
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=self._key(key))
        return True

    async def list(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> builtins.list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=base + prefix, PaginationConfig={"PageSize": self.page_size}
        )
        for page in pages:
            keys.extend(item["Key"][len(base) :] for item in page.get("Contents", ()))
        return sorted(keys)
