"""What an export archive holds, written as one zip stream.

- ``tables/<table>.json`` and ``tables/<table>.csv`` for every dataset (``dataset_repository``): a whole
  tenant's tables, or one user's rows;
- ``files/<key>`` for every stored file of the tenant (card images; tenant exports only). A file the
  ``files`` table names but the storage does not have is listed under ``missing_files``;
- ``manifest.json`` last: the format, the tenant (id and slug), the export's kind and subject, the
  tenant schema revision, when it was made, the rows per table, and the size and SHA-256 of every other
  entry, so the receiver can check what they got.

Everything is read from the caller's connection to the tenant database (one snapshot) and from the
tenant's ``Storage``; nothing of any other tenant is ever opened.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import msgspec

from controlplane.db import AsyncConn
from controlplane.privacy import dataset_repository as datasets
from controlplane.privacy.models import ExportKind
from controlplane.privacy.zipstream import ArchiveEntry, ZipStream, single
from controlplane.storage import Storage

FORMAT = "cardvault-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class Manifest(msgspec.Struct, kw_only=True):
    """``manifest.json``: what the archive holds."""

    format: str = FORMAT
    version: int = FORMAT_VERSION
    export_id: uuid.UUID
    kind: ExportKind
    tenant_id: uuid.UUID
    tenant_slug: str
    #: The user whose data a user export holds.
    subject: int | None
    schema_revision: str | None
    created_at: datetime
    #: Rows per table.
    tables: dict[str, int]
    #: Every entry but the manifest itself: name, size and SHA-256 of its content.
    entries: list[ArchiveEntry]
    #: Keys of files the ``files`` table lists but the storage did not have.
    missing_files: list[str]


class ArchiveSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Which export an archive is for."""

    export_id: uuid.UUID
    kind: ExportKind
    tenant_id: uuid.UUID
    tenant_slug: str
    subject: int | None
    created_at: datetime


async def write_archive(conn: AsyncConn, storage: Storage, spec: ArchiveSpec) -> AsyncIterator[bytes]:
    """The zip archive of ``spec``'s export, streamed (``conn``: the tenant database, in one snapshot)."""
    archive = ZipStream(spec.created_at)
    revision = await datasets.schema_revision(conn)
    if spec.kind is ExportKind.TENANT:
        chosen = await datasets.tenant_datasets(conn)
    else:
        assert spec.subject is not None
        chosen = await datasets.user_datasets(conn, spec.subject)
    counts: dict[str, int] = {}
    for dataset in chosen:
        async for piece in archive.add(f"tables/{dataset.table}.json", datasets.json_rows(conn, dataset, counts)):
            yield piece
        async for piece in archive.add(f"tables/{dataset.table}.csv", datasets.csv_rows(conn, dataset)):
            yield piece
    missing: list[str] = []
    if spec.kind is ExportKind.TENANT:
        for row in await datasets.stored_files(conn):
            data = await storage.get(spec.tenant_id, row["key"])
            if data is None:
                missing.append(row["key"])
                continue
            # Images are compressed already: stored as they are.
            async for piece in archive.add(f"files/{row['key']}", single(data), compress=False):
                yield piece
    manifest = Manifest(
        export_id=spec.export_id,
        kind=spec.kind,
        tenant_id=spec.tenant_id,
        tenant_slug=spec.tenant_slug,
        subject=spec.subject,
        schema_revision=revision,
        created_at=spec.created_at,
        tables=counts,
        entries=list(archive.entries),
        missing_files=missing,
    )
    async for piece in archive.add(MANIFEST, single(msgspec.json.format(msgspec.json.encode(manifest)))):
        yield piece
    yield archive.finish()
