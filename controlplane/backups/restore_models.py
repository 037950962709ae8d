"""Restore and verification types: what a restore records in its ledger params, a verification's result, a
retired database, and the errors a restore or a verification answers with."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

import msgspec

from controlplane.errors import CardVaultError, Conflict

#: Name prefix of the scratch databases verifications restore into (``cvverify_<tag>_<hex>``): never ``t_*``
#: nor ``cvspare_*``, so neither the reconciler nor the spare pool ever takes one for its own.
VERIFY_PREFIX = "cvverify_"


class BackupCorrupted(CardVaultError):
    """The stored object is not what was stored: another checksum or size, truncated, or it fails
    authentication. Refused before anything is created; a failed verification records it."""

    status = 422
    code = "backup_corrupted"


class RestoreCheckFailed(CardVaultError):
    """``pg_restore`` failed, or the restored database does not match the backup's manifest (row counts,
    schema revision). The restored database was dropped; nothing else changed."""

    status = 422
    code = "restore_check_failed"


class PreBackupFailed(CardVaultError):
    """The backup of the live database a restore takes first failed: the restore did not start."""

    status = 503
    code = "pre_backup_failed"


class BackupUnusable(Conflict):
    """The backup cannot be restored: not succeeded, expired, or its last verification failed."""

    code = "backup_unusable"


class BackupMismatch(Conflict):
    """The backup is another tenant's: a backup is only ever restored into the tenant it was taken of."""

    code = "backup_mismatch"


class NothingToRollBack(Conflict):
    """The tenant has no retired database to switch back to (never restored, or the window has passed)."""

    code = "nothing_to_roll_back"


class RestoreMode(enum.StrEnum):
    """What a restore operation replaces (``params["mode"]`` of its ledger row)."""

    #: The tenant is registered: a new database replaces its live one (or stands in for a missing one).
    REPLACE = "replace"
    #: The tenant was purged: it is registered again (same id and slug) around the restored database.
    RECREATE = "recreate"
    #: ``cardvault backups rollback``: a retired database becomes the live one again.
    ROLLBACK = "rollback"


class SwitchPlan(msgspec.Struct, frozen=True, kw_only=True):
    """A restore (or rollback) as its ledger row keeps it (``params``): enough for any process to finish it
    or undo it after a crash, by looking at which of the named databases exist.

    ``source`` becomes the tenant's database under its usual name; the live database, when there is one,
    becomes ``retired``. The two renames are one transaction on the server: either happened or neither.
    """

    mode: RestoreMode
    server_id: uuid.UUID
    #: The database that takes over (a restored one, or a retired one for a rollback).
    source: str
    #: The name the current live database gets (None: there is no live database to retire).
    retired: str | None
    #: Status the tenant has once switched (the login role may connect exactly when it is ``active``).
    status_after: str
    backup_id: uuid.UUID | None = None
    #: Tier of a re-created tenant (its quotas).
    tier: str | None = None
    #: The backup taken of the live database just before (trigger ``pre_restore``).
    pre_backup_id: uuid.UUID | None = None
    #: Who asked (``cli:<user>``, ``admin:<id>``, ``automation``).
    requested_by: str | None = None

    @property
    def drop_source_on_undo(self) -> bool:
        """A restored database is dropped when the restore is undone; a retired one (rollback) is kept."""
        return self.mode is not RestoreMode.ROLLBACK

    def to_params(self) -> dict[str, Any]:
        params: dict[str, Any] = msgspec.to_builtins(self)
        return params

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SwitchPlan:
        fields = {f: params[f] for f in cls.__struct_fields__ if f in params}
        return msgspec.convert(fields, cls, strict=False)


class Verification(msgspec.Struct, kw_only=True):
    """One test restore of a backup into a scratch database, and what it found."""

    id: int
    backup_id: uuid.UUID
    ok: bool
    detail: str
    seconds: float
    at: datetime


class RetiredDatabase(msgspec.Struct, kw_only=True):
    """A tenant database a restore replaced, kept for a rollback until ``drop_after``."""

    server_id: uuid.UUID
    database_name: str
    tenant_id: uuid.UUID
    reason: str
    retired_at: datetime
    drop_after: datetime
