"""Backup types: a backup row, its manifest, and the object key it is stored under."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

import msgspec


class BackupStatus(enum.StrEnum):
    """Where a backup is in its life (``backups.status`` allows exactly these values)."""

    #: Asked for (scheduled, by an operator or a tenant admin); not started yet.
    PENDING = "pending"
    #: Its dump is streaming into the store.
    RUNNING = "running"
    #: Stored whole: ``bytes``, ``sha256`` and ``manifest`` are set; restorable until ``expires_at``.
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: Past its retention: its object is deleted (``deleted_at``), the row stays as history.
    EXPIRED = "expired"


class BackupTrigger(enum.StrEnum):
    SCHEDULED = "scheduled"
    #: An operator (CLI or admin API).
    MANUAL = "manual"
    #: A tenant admin (``POST /t/{slug}/api/backups``).
    TENANT = "tenant"
    #: Taken of the live database just before a restore replaces it.
    PRE_RESTORE = "pre_restore"


class Manifest(msgspec.Struct, kw_only=True):
    """What a backup held at dump time; every restore is checked against it."""

    schema_revision: str | None
    #: ``server_version_num`` of the server dumped (pg_dump's and pg_restore's major version match it).
    server_version: int
    #: Rows per table (``schema.table``) counted in the dump's own snapshot.
    tables: dict[str, int]
    #: ``pg_dump --version`` of the binary that made it.
    pg_dump: str = ""


class Backup(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_slug: str
    server_id: uuid.UUID
    database_name: str
    schema_revision: str | None
    status: BackupStatus
    trigger: BackupTrigger
    requested_by: str | None
    store: str
    object_key: str
    bytes: int | None
    sha256: str | None
    manifest: dict[str, object]
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    deleted_at: datetime | None


def object_key(tenant_id: uuid.UUID, backup_id: uuid.UUID) -> str:
    """Where a backup is stored: grouped per tenant, so one prefix lists (or purges) a tenant's backups."""
    return f"backups/{tenant_id}/{backup_id}.dump.cvs"
