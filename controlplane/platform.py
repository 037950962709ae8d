"""The long-lived parts every entry point (service, CLI, benchmarks, tests) works with."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from controlplane import db
from controlplane.crypto import SecretBox
from controlplane.db import AsyncConn
from controlplane.errors import ConfigError
from controlplane.failpoints import Failpoints
from controlplane.fleet.service import Fleet
from controlplane.migrations.alembic_runner import SchemaScripts, registry_scripts, tenant_scripts
from controlplane.settings import Settings


def lock_key(name: str) -> int:
    """A stable 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


_REGISTRY_MIGRATION_LOCK = lock_key("cardvault:registry-migration")


async def migrate_registry(settings: Settings) -> str:
    """Upgrade the control database to head; concurrent callers (replicas starting) take turns."""
    scripts = registry_scripts(settings.provisioning)
    dsn = db.management_conninfo(settings.database.url, settings.database, role="migrate")
    async with db.connect(settings.database.url, settings.database, role="migrate-lock") as conn:
        await db.advisory_lock(conn, _REGISTRY_MIGRATION_LOCK)
        try:
            return await asyncio.to_thread(scripts.upgrade, dsn)
        finally:
            await db.advisory_unlock(conn, _REGISTRY_MIGRATION_LOCK)


@dataclass(frozen=True)
class Platform:
    """Settings, the control-database pool, the fleet and the tenant schema, opened together."""

    settings: Settings
    control: AsyncConnectionPool[AsyncConn]
    fleet: Fleet
    box: SecretBox
    tenant_scripts: SchemaScripts
    failpoints: Failpoints

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, *, migrate: bool = True) -> AsyncIterator[Platform]:
        """Open everything (migrating the registry first unless ``migrate`` is False)."""
        if not settings.database.url:
            raise ConfigError("CARDVAULT_DATABASE_URL is not set (make run starts a local PostgreSQL)")
        box = SecretBox(settings.security.secret_key)
        failpoints = Failpoints(settings.failpoints)
        scripts = tenant_scripts(settings.provisioning)
        if migrate:
            await migrate_registry(settings)
        control = db.control_pool(settings.database.url, settings.database)
        await control.open(wait=True, timeout=settings.database.connect_timeout + 5)
        fleet = Fleet(box, settings.database)
        try:
            async with control.connection() as conn:
                await fleet.ensure_default(conn, settings.database.url)
            yield cls(settings, control, fleet, box, scripts, failpoints)
        finally:
            await fleet.close()
            await control.close()
