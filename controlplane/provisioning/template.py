"""The template database on each server, kept at tenant_schema head and cloned for every new tenant."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg

from controlplane import db
from controlplane.db import AsyncConn
from controlplane.fleet import repository as fleet_repository
from controlplane.fleet.models import Server
from controlplane.platform import Platform
from controlplane.provisioning import catalog


class Templates:
    """Builds, upgrades and clones the per-server template database.

    A clone holds a shared advisory lock on the server and an upgrade an exclusive one, so a template
    is never cloned while a migration is connected to it (PostgreSQL would refuse the clone).
    """

    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._name = platform.settings.provisioning.template_database
        self._key = db.lock_key(f"cardvault:template:{self._name}")

    @property
    def name(self) -> str:
        return self._name

    async def ensure(self, control: AsyncConn, server: Server) -> str:
        """The template's revision on ``server``, building or upgrading it when it is behind head."""
        if server.template_revision == self._platform.tenant_scripts.head():
            return server.template_revision
        return await self.upgrade(control, server.id)

    async def upgrade(self, control: AsyncConn, server_id: uuid.UUID) -> str:
        """Create the template if missing and migrate it to head; returns the revision reached."""
        fleet = self._platform.fleet
        async with fleet.admin(control, server_id) as conn:
            await db.advisory_lock(conn, self._key)
            try:
                await catalog.ensure_group_role(conn)
                await catalog.create_database(conn, self._name)
                dsn = db.management_conninfo(
                    await fleet.dsn(control, server_id), self._platform.settings.database, dbname=self._name
                )
                revision = await asyncio.to_thread(self._platform.tenant_scripts.upgrade, dsn)
                async with fleet.connect_database(control, server_id, self._name) as tconn:
                    await catalog.grant_schema_privileges(tconn, self._platform.tenant_scripts.version_table)
                await catalog.mark_template(conn, self._name)
            finally:
                await db.advisory_unlock(conn, self._key)
        await fleet_repository.set_template_revision(control, server_id, revision)
        return revision

    async def clone(self, control: AsyncConn, server: Server, database: str) -> bool:
        """``CREATE DATABASE database TEMPLATE <template>``; False when it already existed."""
        strategy = self._platform.settings.provisioning.clone_strategy
        for attempt in range(2):
            try:
                async with self._shared(control, server.id) as conn:
                    return await catalog.create_database(conn, database, template=self._name, strategy=strategy)
            except psycopg.errors.InvalidCatalogName:
                # The template vanished behind our back (dropped by hand): rebuild it once.
                if attempt:
                    raise
                await self.upgrade(control, server.id)
        raise AssertionError("unreachable")

    async def drop(self, control: AsyncConn, server_id: uuid.UUID) -> None:
        """Remove the template from a server (tests and server decommissioning)."""
        async with self._platform.fleet.admin(control, server_id) as conn:
            await db.advisory_lock(conn, self._key)
            try:
                await catalog.drop_template(conn, self._name)
            finally:
                await db.advisory_unlock(conn, self._key)
        await fleet_repository.set_template_revision(control, server_id, None)

    @asynccontextmanager
    async def _shared(self, control: AsyncConn, server_id: uuid.UUID) -> AsyncIterator[AsyncConn]:
        async with self._platform.fleet.admin(control, server_id) as conn:
            await db.advisory_lock(conn, self._key, shared=True)
            try:
                yield conn
            finally:
                await db.advisory_unlock(conn, self._key, shared=True)
