"""The object store the settings choose: S3 when ``CARDVAULT_BACKUP_S3_BUCKET`` is set, else a directory."""

from __future__ import annotations

from controlplane.objectstore import ObjectStore
from controlplane.objectstore.local import LocalObjectStore
from controlplane.settings import Settings


def store_for(settings: Settings) -> ObjectStore:
    if settings.backups.uses_s3:
        from controlplane.objectstore.s3 import S3ObjectStore  # boto3 only when it is used

        return S3ObjectStore.from_settings(settings.backups)
    return LocalObjectStore(settings.backup_dir)
