"""The object store the settings choose: S3 when ``CARDVAULT_BACKUP_S3_BUCKET`` is set, else a directory."""

from __future__ import annotations

from controlplane.objectstore import ObjectStore
from controlplane.objectstore.local import LocalObjectStore
from controlplane.settings import Settings


def store_for(settings: Settings) -> ObjectStore:
    return LocalObjectStore(settings.backup_dir)
