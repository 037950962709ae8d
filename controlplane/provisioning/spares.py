"""Spare databases: tenant databases (with their login roles) made ahead of time, claimed by new tenants.

A spare is exactly what provisioning would clone and grant (template clone at the tenant schema head,
a login role with CONNECT on it only, PUBLIC revoked, the tenant group role), under a name of its own
(``cvspare_<tag>_<hex>``, never ``t_*``). ``TenantService.create`` claims one in the transaction that
registers the tenant (``DELETE ... RETURNING`` under ``FOR UPDATE SKIP LOCKED``: two signups never get
the same spare) and its provisioning renames database and role to the tenant's names (``claim_spare``)
instead of cloning: one catalog transaction instead of a database copy.

``refill`` (the scheduler's ``refill_spares`` leader job, and in the background right after a claim)
tops every active server up to ``CARDVAULT_SPARE_DATABASES``, drops spares whose revision is not the
template's (the schema head moved: spares are *recycled*, not migrated: they hold no data, so a fresh
clone of the upgraded template is as good, costs one clone in the background, and keeps the migration
runner and its ledger about tenants only) and drops every spare of a draining server or when the setting
is 0. One refill per server at a time (an advisory lock on the control database); claims never wait
for it.

Crash safety: a spare's row is written before its database and role exist and deleted only after they
are dropped (or, for a claim, in the transaction that records the spare in the provisioning's ledger
params), so a crash leaves a ``creating`` / ``dropping`` row or a running provisioning behind, never an
unknown database. The next refill (or the reconciler, ``spare_reconciler``) drops such leftovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from controlplane import db
from controlplane.crypto import new_password, tenant_role_verifier
from controlplane.db import AsyncConn
from controlplane.fleet import repository as fleet_repository
from controlplane.fleet.models import Server, ServerStatus
from controlplane.platform import Platform
from controlplane.provisioning import catalog
from controlplane.provisioning import spares_repository as repo
from controlplane.provisioning.models import RefillOutcome, Spare, SpareState
from controlplane.provisioning.template import Templates

log = logging.getLogger(__name__)

#: Spares one refill may create on a server beyond its target (signups claiming them as fast as they come).
_EXTRA_CREATES = 8
#: Seconds ``stop`` waits for a background refill to finish its spare before cancelling it.
_STOP_WAIT = 10.0
#: Seconds between a claim and its background refill: the rest of the signup that claimed (its session,
#: its first connection) does not share the server with a clone.
_REFILL_DELAY = 2.0


class SpareUnusable(RuntimeError):
    """A claimed spare cannot become the tenant's database (gone, or its privileges are not as made)."""


def spare_lock_key(server_id: uuid.UUID) -> int:
    """The advisory lock (control database) held by the one refill or reconciler working on a server's spares."""
    return db.lock_key(f"cardvault:spares:{server_id}")


class SparePool:
    """Claims, takes over, refills and drops the spares of every server."""

    def __init__(self, platform: Platform, templates: Templates) -> None:
        self._p = platform
        self._templates = templates
        self._tag: str | None = None
        self._background = False
        self._pending: set[uuid.UUID] = set()
        self._task: asyncio.Task[None] | None = None
        self._refilling = False

    @property
    def target(self) -> int:
        """Ready spares to keep on each active server (``CARDVAULT_SPARE_DATABASES``)."""
        return self._p.settings.provisioning.spare_databases

    async def tag(self, conn: AsyncConn) -> str:
        """The tag in this control plane's spare names (``spares_repository.spare_tag``)."""
        if self._tag is None:
            self._tag = await repo.pool_tag(conn)
        return self._tag

    # -- claiming -------------------------------------------------------------------------------

    async def claim(self, conn: AsyncConn, server_id: uuid.UUID) -> Spare | None:
        """A ready spare of ``server_id`` at the schema head, taken out of the pool in the caller's
        transaction (which records it in the provisioning's ledger params); None when spares are off or
        there is none (the tenant is then cloned)."""
        if self.target <= 0:
            return None
        return await repo.claim(conn, server_id, self._p.tenant_scripts.head())

    async def take_over(self, control: AsyncConn, server_id: uuid.UUID, spare: str, database: str, role: str) -> None:
        """Rename the claimed ``spare`` (database and role) to the tenant's names and check its access.

        Idempotent: the reconciler re-runs it for a provisioning interrupted before or after the rename.
        """
        async with self._p.fleet.admin(control, server_id) as admin:
            try:
                await catalog.rename_spare(admin, spare, spare, database, role)
            except LookupError as exc:
                raise SpareUnusable(f"spare {spare}: {exc}") from exc
            problems = await catalog.tenant_access_problems(admin, role, database)
        if problems:
            raise SpareUnusable(f"spare {spare} is not as provisioned: {'; '.join(problems)}")

    async def drop_objects(self, control: AsyncConn, server_id: uuid.UUID, name: str) -> None:
        """Drop the database and role named ``name`` (a spare's), if they exist."""
        async with self._p.fleet.admin(control, server_id) as admin:
            await catalog.drop_database(admin, name)
            await catalog.drop_role(admin, name)

    # -- refilling in the background after claims -------------------------------------------------

    def refill_after_claims(self) -> None:
        """From now on, ``claimed`` tops the server up in the background (the service; never the CLI)."""
        self._background = True

    def claimed(self, server_id: uuid.UUID) -> None:
        """A spare of ``server_id`` was claimed: replace it soon, off the signup's path."""
        if not self._background:
            return
        self._pending.add(server_id)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain_pending(), name="refill-spares")

    async def _drain_pending(self) -> None:
        await asyncio.sleep(_REFILL_DELAY)
        while self._pending and self._background:
            server_id = self._pending.pop()
            self._refilling = True
            try:
                async with self._p.control.connection() as conn:
                    server = await fleet_repository.get_by_id(conn, server_id)
                if server is not None:
                    outcome = await self.refill_server(server)
                    log.info("refill after a claim: %s", outcome.describe())
            except Exception as exc:  # the periodic job tries again
                log.warning("refilling spares after a claim failed: %s", exc)
            finally:
                self._refilling = False

    async def stop(self) -> None:
        """Stop refilling in the background; let a refill at work finish its spare first."""
        self._background = False
        self._pending.clear()
        task, self._task = self._task, None
        if task is None or task.done():
            return
        if not self._refilling:  # still waiting to start: nothing to finish
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), _STOP_WAIT)
        except TimeoutError:
            task.cancel()  # its `creating` row is cleared by the next refill or the reconciler
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- refilling ------------------------------------------------------------------------------

    async def refill(self) -> list[RefillOutcome]:
        """Bring every server to its target: the setting on active servers, none on draining ones."""
        async with self._p.control.connection() as conn:
            servers = await fleet_repository.list_servers(conn)
        return [await self.refill_server(server) for server in servers]

    async def refill_server(self, server: Server) -> RefillOutcome:
        target = self.target if server.status is ServerStatus.ACTIVE else 0
        outcome = RefillOutcome(server=server.name, target=target)
        async with self.locked(server.id) as conn:
            if conn is None:
                outcome.note = "skipped: another refill is at work on it"
                return outcome
            try:
                await self._refill_locked(conn, server, target, outcome)
            except Exception as exc:
                log.warning("refilling the spares of %s failed: %s", server.name, exc)
                outcome.note = f"failed: {exc}"
        return outcome

    @asynccontextmanager
    async def locked(self, server_id: uuid.UUID) -> AsyncIterator[AsyncConn | None]:
        """A control connection holding the server's spare lock, or None when someone else holds it."""
        async with self._p.control.connection() as conn:
            key = spare_lock_key(server_id)
            if not await db.try_advisory_lock(conn, key):
                yield None
                return
            try:
                yield conn
            finally:
                with contextlib.suppress(Exception):  # a broken connection has lost the lock already
                    await db.advisory_unlock(conn, key)

    async def _refill_locked(self, conn: AsyncConn, server: Server, target: int, outcome: RefillOutcome) -> None:
        spares = await repo.for_server(conn, server.id)
        # Under the lock, a spare still creating or dropping was left by a refill that died.
        for spare in (s for s in spares if s.state is not SpareState.READY):
            await self.discard(conn, server.id, spare)
            outcome.cleared += 1
        ready = [s for s in spares if s.state is SpareState.READY]
        revision = await self._templates.ensure(conn, server) if target > 0 else None
        current = [s for s in ready if s.schema_revision == revision]
        unwanted = [s for s in ready if s.schema_revision != revision] + current[target:]
        if unwanted:
            for spare in await repo.mark_dropping(conn, (s.database_name for s in unwanted)):
                await self.discard(conn, server.id, spare)
                outcome.dropped += 1
        if revision is not None:
            for _ in range(target + _EXTRA_CREATES):
                if await self._ready_count(conn, server.id, revision) >= target:
                    break
                await self._create(conn, server, revision)
                outcome.created += 1
        outcome.ready = await self._ready_count(conn, server.id, revision) if revision is not None else 0

    async def _ready_count(self, conn: AsyncConn, server_id: uuid.UUID, revision: str) -> int:
        spares = await repo.for_server(conn, server_id)
        return sum(s.state is SpareState.READY and s.schema_revision == revision for s in spares)

    async def _create(self, conn: AsyncConn, server: Server, revision: str) -> None:
        """One spare: its row first (``creating``), then the clone and the role, then ``ready``."""
        name = f"cvspare_{await self.tag(conn)}_{uuid.uuid4().hex}"
        password = new_password()
        spare = Spare(
            database_name=name,
            server_id=server.id,
            role_name=name,
            role_password_encrypted=self._p.box.encrypt(password),
            schema_revision=revision,
            state=SpareState.CREATING,
            created_at=datetime.now(UTC),
        )
        await repo.insert_creating(conn, spare)
        failpoints = self._p.failpoints
        try:
            failpoints.hit("before:spare_clone")
            await self._templates.clone(conn, server, name)
            failpoints.hit("after:spare_clone")
            async with self._p.fleet.admin(conn, server.id) as admin:
                await catalog.create_tenant_role(admin, name, name, tenant_role_verifier(password))
            failpoints.hit("after:spare_role")
            await repo.mark_ready(conn, name)
        except Exception:
            # Undo this spare; if even that fails, its `creating` row is cleared by a later refill.
            with contextlib.suppress(Exception):
                await self.discard(conn, server.id, spare)
            raise

    async def discard(self, conn: AsyncConn, server_id: uuid.UUID, spare: Spare) -> None:
        """Drop a spare's database and role, then forget it (in that order: nothing is ever unknown)."""
        await self.drop_objects(conn, server_id, spare.database_name)
        if spare.role_name != spare.database_name:
            async with self._p.fleet.admin(conn, server_id) as admin:
                await catalog.drop_role(admin, spare.role_name)
        await repo.delete(conn, spare.database_name)

    async def drop_all(self) -> int:
        """Drop every spare of every server, whatever the setting (tests, decommissioning); how many were."""
        async with self._p.control.connection() as conn:
            servers = await fleet_repository.list_servers(conn)
        dropped = 0
        for server in servers:
            outcome = RefillOutcome(server=server.name, target=0)
            async with self.locked(server.id) as conn:
                if conn is not None:
                    await self._refill_locked(conn, server, 0, outcome)
            dropped += outcome.dropped + outcome.cleared
        return dropped
