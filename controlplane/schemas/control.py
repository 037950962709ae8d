"""Upgrading the control database (the registry) to head; concurrent callers (replicas starting) take turns."""

from __future__ import annotations

import asyncio

from controlplane import db
from controlplane.schemas.alembic_runner import registry_scripts
from controlplane.settings import Settings

_REGISTRY_MIGRATION_LOCK = db.lock_key("cardvault:registry-migration")


async def migrate_registry(settings: Settings) -> str:
    """Upgrade the control database to head under an advisory lock; the revision it is at."""
    scripts = registry_scripts(settings.provisioning)
    dsn = db.management_conninfo(settings.database.url, settings.database, role="migrate")
    async with db.connect(settings.database.url, settings.database, role="migrate-lock") as conn:
        await db.advisory_lock(conn, _REGISTRY_MIGRATION_LOCK)
        try:
            return await asyncio.to_thread(scripts.upgrade, dsn)
        finally:
            await db.advisory_unlock(conn, _REGISTRY_MIGRATION_LOCK)
