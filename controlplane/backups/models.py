"""Backup types: a backup row, its manifest, and the object key it is stored under."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

import msgspec

from controlplane.errors import Conflict, NotFound


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


class FilesManifest(msgspec.Struct, kw_only=True):
    """The second object of a backup: the stored files its dump's ``files`` rows name (``manifest["files"]``)."""

    #: Where the files object is stored (``files_object_key``); None when the dump names no file (no object).
    key: str | None
    #: Size and sha256 (hex) of the stored (sealed) object, checked before any restore.
    size: int
    sha256: str | None
    #: Files it holds, and their bytes (before sealing).
    count: int
    bytes: int
    #: Keys of rows whose object was not in storage at backup time (the first ``files.MAX_LISTED_KEYS``).
    missing: list[str] = msgspec.field(default_factory=list)
    missing_count: int = 0
    #: Keys of rows whose object did not match its row (another size or sha256, unreadable): not kept.
    damaged: list[str] = msgspec.field(default_factory=list)
    damaged_count: int = 0


class Manifest(msgspec.Struct, kw_only=True):
    """What a backup held at dump time; every restore is checked against it."""

    schema_revision: str | None
    #: ``server_version_num`` of the server dumped (pg_dump's and pg_restore's major version match it).
    server_version: int
    #: Rows per table (``schema.table``) counted in the dump's own snapshot.
    tables: dict[str, int]
    #: ``pg_dump --version`` of the binary that made it.
    pg_dump: str = ""
    #: The tenant's stored files, in an object of their own (None: a backup made before files were kept).
    files: FilesManifest | None = None


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


def files_object_key(tenant_id: uuid.UUID, backup_id: uuid.UUID) -> str:
    """Where a backup's stored files are kept: beside its dump (the same prefix, purged and listed with it)."""
    return f"backups/{tenant_id}/{backup_id}.files.cvs"


#: Statuses of a backup whose dump may still be running (at most one per tenant unless asked otherwise).
OPEN_STATUSES = (BackupStatus.PENDING, BackupStatus.RUNNING)


class TenantBackup(msgspec.Struct, kw_only=True):
    """A backup as the tenant's own admins see it: no object key, data key, server or database name, and
    no error text (pg_dump's messages name servers): a failed one just says ``failed``."""

    id: uuid.UUID
    status: BackupStatus
    trigger: BackupTrigger
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    bytes: int | None
    schema_revision: str | None

    @classmethod
    def of(cls, backup: Backup) -> TenantBackup:
        return cls(
            id=backup.id,
            status=backup.status,
            trigger=backup.trigger,
            created_at=backup.created_at,
            started_at=backup.started_at,
            finished_at=backup.finished_at,
            expires_at=backup.expires_at,
            bytes=backup.bytes,
            schema_revision=backup.schema_revision,
        )


class TenantBackupState(msgspec.Struct, frozen=True, kw_only=True):
    """One tenant's backup standing, for planning and metrics (tenants that are active or suspended)."""

    tenant_id: uuid.UUID
    slug: str
    tier: str
    status: str
    server_id: uuid.UUID
    created_at: datetime
    #: ``created_at`` of its newest backup that is not failed (pending, running, succeeded or expired).
    last_requested: datetime | None
    #: ``created_at`` of its newest failed backup (a failure is retried after a pause, not at every run).
    last_failed: datetime | None
    #: ``finished_at`` of its newest successful backup (expired ones included).
    last_succeeded: datetime | None
    #: Bytes and number of its retained backups (succeeded, not expired).
    retained_bytes: int = 0
    retained: int = 0
    #: A backup of it is pending or running.
    open: bool = False


class BackupOverview(msgspec.Struct, frozen=True, kw_only=True):
    """What ``/metrics`` shows about backups; replaced whole by each refresh (no database at scrape time)."""

    refreshed_at: datetime
    #: Tenants (active or suspended) by slug: last success (Unix time, None: never) and whether it is stale.
    last_success: dict[str, float | None]
    stale: dict[str, bool]
    #: Bytes of every retained backup, of existing tenants or not.
    retained_bytes: int
    retained: int


class BackupNotFound(NotFound):
    code = "backup_not_found"


class BackupInProgress(Conflict):
    """The tenant already has a backup pending or running."""

    code = "backup_in_progress"
