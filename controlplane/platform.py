"""The long-lived parts every entry point (service, CLI, benchmarks, tests) works with."""

from __future__ import annotations

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
from controlplane.objectstore import ObjectStore
from controlplane.objectstore.factory import store_for
from controlplane.schemas.alembic_runner import SchemaScripts, tenant_scripts
from controlplane.schemas.control import migrate_registry
from controlplane.settings import Settings


@dataclass(frozen=True)
class Platform:
    """Settings, the control-database pool, the fleet and the tenant schema, opened together."""

    settings: Settings
    control: AsyncConnectionPool[AsyncConn]
    fleet: Fleet
    box: SecretBox
    tenant_scripts: SchemaScripts
    failpoints: Failpoints
    #: Where backups and export archives are stored (sealed): a directory or an S3 bucket.
    objects: ObjectStore

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, *, migrate: bool = True) -> AsyncIterator[Platform]:
        """Open everything (migrating the registry first unless ``migrate`` is False)."""
        if not settings.database.url:
            raise ConfigError("CARDVAULT_DATABASE_URL is not set (make run starts a local PostgreSQL)")
        box = SecretBox(settings.security.secret_key, settings.security.previous_secret_keys)
        failpoints = Failpoints(settings.failpoints)
        scripts = tenant_scripts(settings.provisioning)
        if migrate:
            await migrate_registry(settings)
        control = db.control_pool(settings.database.url, settings.database)
        await control.open(wait=True, timeout=settings.database.connect_timeout + 5)
        fleet = Fleet(box, settings.database, tls_dir=settings.data_dir / "tls")
        try:
            async with control.connection() as conn:
                await fleet.ensure_default(conn, settings.database.url)
            yield cls(settings, control, fleet, box, scripts, failpoints, store_for(settings))
        finally:
            await fleet.close()
            await control.close()
