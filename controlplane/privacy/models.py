"""Privacy types: export records and their states, erasure results, deletion certificates."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec


class ExportKind(enum.StrEnum):
    #: Everything of a tenant: every table, every stored file.
    TENANT = "tenant"
    #: One user's data (GDPR data access): their row, sessions and keys (no secrets), their audit
    #: entries, the cards they created.
    USER = "user"


class ExportStatus(enum.StrEnum):
    """Where an export is in its life (``tenant_exports.status`` allows exactly these values)."""

    #: Asked for; a worker will claim it.
    PENDING = "pending"
    #: A worker is writing its archive (under a lease; a worker that died leaves it to be claimed again).
    RUNNING = "running"
    #: Its sealed archive is stored; the link downloads it once until ``expires_at``.
    READY = "ready"
    #: Downloaded once; the archive is deleted.
    DOWNLOADED = "downloaded"
    #: Not downloaded in time (or withdrawn by a user erasure); the archive is deleted.
    EXPIRED = "expired"
    FAILED = "failed"


#: States after which the archive is gone for good (the row stays as history).
FINAL_STATES = frozenset({ExportStatus.DOWNLOADED, ExportStatus.EXPIRED, ExportStatus.FAILED})


class ExportRecord(msgspec.Struct, kw_only=True):
    """A ``tenant_exports`` row as the service works with it (never shown as is: see ``Export``)."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_slug: str
    kind: ExportKind
    subject: int | None
    requested_by: str
    status: ExportStatus
    token_hash: bytes
    object_key: str | None
    data_key_encrypted: str | None
    bytes: int | None
    sha256: str | None
    attempts: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    downloaded_at: datetime | None

    def public(self) -> Export:
        return Export(
            id=self.id,
            kind=self.kind,
            subject=self.subject,
            status=self.status,
            requested_by=self.requested_by,
            bytes=self.bytes,
            sha256=self.sha256,
            error=self.error,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            expires_at=self.expires_at,
            downloaded_at=self.downloaded_at,
        )


class Export(msgspec.Struct, kw_only=True):
    """An export as the API shows it."""

    id: uuid.UUID
    kind: ExportKind
    #: The user whose data it holds (user exports).
    subject: int | None
    status: ExportStatus
    requested_by: str
    #: Size and SHA-256 of the zip archive the link downloads (set when ready).
    bytes: int | None
    sha256: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: The link stops working at this time (set when ready).
    expires_at: datetime | None
    downloaded_at: datetime | None


class ExportCreated(Export, kw_only=True):
    """A new export and its one-time download link (shown only here: only the token's hash is kept)."""

    download_token: str
    #: ``GET`` it (with the same credentials as the request) once the export is ready.
    download_url: str


class EraseRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /users/{id}/erase``: the user's email typed back, as a confirmation."""

    confirm_email: Annotated[str, msgspec.Meta(min_length=1, max_length=320)]
    #: Also delete the images of the cards the user created (the cards themselves stay with the tenant).
    delete_files: bool = False


class ErasureResult(msgspec.Struct, kw_only=True):
    """What erasing a user removed (never the email). The control database is scrubbed right after the
    tenant's commit (or by the leader job, if the process dies in between)."""

    erasure_id: uuid.UUID
    user_id: int
    #: What the user's audit entries now name as their actor.
    pseudonym: str
    sessions_removed: int
    api_keys_removed: int
    audit_entries_pseudonymised: int
    #: Rows of other tables the email (or, in audit details, the display name) was scrubbed from.
    rows_scrubbed: int
    #: Images of the user's cards deleted (with ``delete_files``).
    files_removed: int


class DeletionCertificate(msgspec.Struct, kw_only=True):
    """What a tenant purge deleted and when, and which backups remain until when."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_slug: str
    #: The purge in the operations ledger.
    operation_id: int
    purge_started_at: datetime
    purged_at: datetime
    issued_at: datetime
    #: When the last backup of the tenant was destroyed (null while some remain).
    backups_destroyed_at: datetime | None
    document: dict[str, Any]
