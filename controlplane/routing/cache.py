"""The in-process registry cache: tenant lookups and tenant credentials, invalidated by LISTEN/NOTIFY.

A hot tenant request costs no registry query: ``get_by_slug`` and ``credentials`` answer from memory.
Correctness comes from the control database telling every replica what changed: triggers (registry
revision 0002) ``NOTIFY cardvault_tenants, '<tenant id>'`` when a tenant row changes in a way that
matters here, and ``NOTIFY cardvault_servers, '<server id>'`` when a server's DSN changes. Each
``TenantCache`` holds one dedicated autocommit connection (not from the pool: a pooled connection would
be handed to others and LISTEN is per session) that LISTENs on both channels; a background task drops
what each notification names and runs the ``on_invalidate`` callbacks (the app closes that tenant's
connection pool there).

Rules that keep it from serving stale data:

- Entries are stored only while the listener is connected. While it is not (not started yet, or the
  connection was lost), every lookup goes to the registry: slower, never stale.
- Losing the listen connection clears the whole cache (notifications may have been missed meanwhile)
  and reconnects with bounded exponential backoff. A periodic ``SELECT 1`` and TCP keepalives notice a
  connection that died silently.
- A lookup that was in flight when its tenant was invalidated (or the cache reset) returns what it read
  but does not store it: the read may predate the change.
- Unknown slugs are remembered for at most ``negative_ttl`` seconds and forgotten on any tenant
  notification, so a tenant created through another replica is found at once.
- A change made by this process (``invalidate``) is forgotten here at once; its callbacks run once,
  when the change's own notification arrives (at once when not listening: none will come).

Entries are kept per tenant id with the slug as a second index, so a rename drops the old slug too.
Both maps are bounded (least recently used entries go first); an evicted entry is merely re-read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import psycopg
from psycopg import conninfo

from controlplane import db
from controlplane.context import TenantContext
from controlplane.db import AsyncConn
from controlplane.errors import ServerUnavailable, TenantNotFound
from controlplane.fleet import pgbouncer_repository
from controlplane.fleet.pgbouncer import PgBouncers
from controlplane.fleet.pgbouncer_models import PgBouncerAddress
from controlplane.listener import Listener
from controlplane.platform import Platform
from controlplane.pools.connection import PGBOUNCER_APPLICATION_NAME
from controlplane.registry import repository as registry
from controlplane.registry.models import Tenant
from controlplane.routing.entries import CacheEntries, Flight

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Channel the ``tenants`` triggers notify on; the payload is the tenant id.
TENANTS_CHANNEL = "cardvault_tenants"
#: Channel the ``db_servers`` triggers notify on; the payload is the server id.
SERVERS_CHANNEL = "cardvault_servers"
#: Application name of the listen connection (visible in ``pg_stat_activity``).
LISTEN_ROLE = "listen"

#: Called with a tenant id whenever what the cache knew about that tenant may be stale.
InvalidateCallback = Callable[[uuid.UUID], Awaitable[None]]


class TenantCache(CacheEntries):
    """Tenant lookups and credentials kept in memory, invalidated through LISTEN/NOTIFY.

    ``start()`` in the app lifespan (it connects and fails loudly if it cannot), ``stop()`` on the way
    out. Without ``start()`` the cache works but stores nothing (every lookup reads the registry).
    """

    def __init__(
        self,
        platform: Platform,
        *,
        max_entries: int = 50_000,
        negative_ttl: float = 1.0,
        ping_interval: float = 5.0,
        reconnect_min: float = 0.05,
        reconnect_max: float = 5.0,
        pgbouncers: PgBouncers | None = None,
    ) -> None:
        super().__init__(max_entries=max_entries, negative_ttl=negative_ttl)
        self._p = platform
        self._pgbouncers = pgbouncers

        database = platform.settings.database
        self._listener = Listener(
            db.management_conninfo(database.url, database, role=LISTEN_ROLE),
            (TENANTS_CHANNEL, SERVERS_CHANNEL),
            on_notify=self._handle,
            on_up=self._on_listening,
            on_down=self._on_deaf,
            name="tenant cache",
            ping_interval=ping_interval,
            ping_timeout=max(1.0, database.connect_timeout),
            reconnect_min=reconnect_min,
            reconnect_max=reconnect_max,
        )
        self._listening = False
        self._started = False
        self._callbacks: list[InvalidateCallback] = []
        self._callback_tasks: set[asyncio.Task[None]] = set()
        #: Tenants this process changed whose notification has not arrived yet (see ``invalidate``).
        self._pending: set[uuid.UUID] = set()

    # -- counters and state ---------------------------------------------------------------------

    @property
    def hits(self) -> int:
        return self.stats.hits

    @property
    def misses(self) -> int:
        return self.stats.misses

    @property
    def invalidations(self) -> int:
        return self.stats.invalidations

    @property
    def listening(self) -> bool:
        """True while notifications are being received (and so entries are being stored)."""
        return self._listening

    @property
    def listener_pid(self) -> int | None:
        """Backend pid of the listen connection (for ``pg_stat_activity``), None when not listening."""
        return self._listener.pid if self._listening else None

    def snapshot(self) -> dict[str, Any]:
        """Counters and sizes, for metrics and health endpoints."""
        return {
            **dataclasses.asdict(self.stats),
            "listening": self._listening,
            "tenants": len(self._contexts),
            "credentials": len(self._credentials),
        }

    def __len__(self) -> int:
        """Tenants cached."""
        return len(self._contexts)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and LISTEN, then keep listening in the background; ``ServerUnavailable`` if it cannot."""
        if self._started:
            return
        try:
            await self._listener.start()
        except psycopg.Error as exc:
            raise ServerUnavailable(f"tenant cache cannot listen on the control database: {exc}") from exc
        self._started = True

    async def stop(self) -> None:
        """Stop listening, forget everything, and wait for running invalidation callbacks."""
        await self._listener.stop()
        self._started = False
        self._listening = False
        self._clear()
        if self._callback_tasks:
            _, pending = await asyncio.wait(self._callback_tasks, timeout=10)
            for leftover in pending:
                leftover.cancel()

    def on_invalidate(self, callback: InvalidateCallback) -> None:
        """Call ``callback(tenant_id)`` whenever that tenant's registry row (or its server) changes.

        Also called for every tenant cached when the whole cache is reset. Callbacks run in a
        background task, one invalidation after another; exceptions are logged and swallowed.
        """
        self._callbacks.append(callback)

    # -- lookups --------------------------------------------------------------------------------

    async def get_by_slug(self, slug: str) -> TenantContext | None:
        """The tenant with ``slug`` (any status), or None; from memory when cached."""
        tenant_id = self._slugs.get(slug)
        context = self._contexts.get(tenant_id) if tenant_id is not None else None
        if context is not None:
            self._contexts.move_to_end(context.id)
            self.stats.hits += 1
            return context
        expires = self._unknown.get(slug)
        if expires is not None:
            if expires > time.monotonic():
                self.stats.negative_hits += 1
                return None
            del self._unknown[slug]
        self.stats.misses += 1
        with self._flight() as flight:
            tenant = await self._read(lambda conn: registry.get_by_slug(conn, slug))
        if tenant is None:
            if self._negative_ttl > 0 and self._may_store(flight) and flight.changes == self._changes:
                self._remember_unknown(slug)
            return None
        context = TenantContext.of(tenant)
        if self._may_store(flight) and context.id not in flight.dropped:
            self._store(context)
        return context

    async def current(self, tenant_id: uuid.UUID) -> TenantContext | None:
        """The tenant as the registry has it now (never from memory), or None; stored like a lookup.

        For a second opinion when a cached entry may predate a change whose notification is still on
        its way (the tenant's database just refused us).
        """
        self.stats.misses += 1
        with self._flight() as flight:
            tenant = await self._read(lambda conn: registry.get_by_id(conn, tenant_id))
        if tenant is None:
            return None
        context = TenantContext.of(tenant)
        if self._may_store(flight) and context.id not in flight.dropped:
            self._store(context)
        return context

    async def credentials(self, tenant_id: uuid.UUID) -> str:
        """A DSN for the tenant's own role on its own database (``TenantNotFound`` if there is none).

        Host, port and TLS settings come from the server's registered DSN (host and port from its
        PgBouncer's address when it has one); user, password and database are the tenant's. Whether the
        tenant may be served is the caller's business (``resolve``).
        """
        cached = self._credentials.get(tenant_id)
        if cached is not None:
            self._credentials.move_to_end(tenant_id)
            self.stats.credential_hits += 1
            return cached[1]
        self.stats.credential_misses += 1

        async def load(conn: AsyncConn) -> tuple[Tenant, str, str, PgBouncerAddress | None] | None:
            tenant = await registry.get_by_id(conn, tenant_id)
            encrypted = await registry.role_password_encrypted(conn, tenant_id)
            if tenant is None or encrypted is None:
                return None
            bouncer = await pgbouncer_repository.address(conn, tenant.server_id)
            return tenant, encrypted, await self._p.fleet.dsn(conn, tenant.server_id), bouncer

        with self._flight() as flight:
            loaded = await self._read(load)
        if loaded is None:
            raise TenantNotFound(f"no tenant with id {tenant_id}", tenant_id=str(tenant_id))
        tenant, encrypted, server_dsn, bouncer = loaded
        params = {**conninfo.conninfo_to_dict(server_dsn), "application_name": f"{db.APPLICATION_NAME}-tenant"}
        if bouncer is not None:
            # PgBouncer has no TLS of its own; it speaks TLS to the server as the server's settings say.
            for key in ("hostaddr", "sslrootcert", "sslcert", "sslkey"):
                params.pop(key, None)
            params |= {"host": bouncer.host, "port": bouncer.port, "sslmode": "prefer"}
            params["application_name"] = PGBOUNCER_APPLICATION_NAME
            if self._pgbouncers is not None:  # a tenant just provisioned: its PgBouncer must know it first
                await self._pgbouncers.ensure(tenant.server_id, tenant.database_name)
        params |= {
            "user": tenant.role_name,
            "password": self._p.box.decrypt(encrypted),
            "dbname": tenant.database_name,
            "connect_timeout": max(1, int(self._p.settings.database.connect_timeout)),
        }
        dsn = conninfo.make_conninfo("", **params)
        if self._may_store(flight) and not flight.dropped.intersection((tenant.id, tenant.server_id)):
            self._credentials[tenant.id] = (tenant.server_id, dsn)
            while len(self._credentials) > self._max_entries:
                self._credentials.popitem(last=False)
        return dsn

    def invalidate(self, tenant_id: uuid.UUID) -> None:
        """Forget ``tenant_id`` here at once: this process just changed it.

        The callbacks run once per change: when its notification arrives (every replica hears it,
        this one too), or now if the cache is not listening. A pool opened in between reads the
        registry as it is after the change, so closing it when the notification comes costs one
        reconnect at most; closing it twice cost a second one.
        """
        if self._listening:
            self._forget_tenant(tenant_id)
            self._pending.add(tenant_id)  # its callbacks run with the notification, or with a reset
        else:
            self._drop_tenant(tenant_id)

    # -- reading --------------------------------------------------------------------------------

    def _may_store(self, flight: Flight) -> bool:
        return self._listening and flight.epoch == self._epoch

    async def _read(self, query: Callable[[AsyncConn], Awaitable[T]]) -> T:
        try:
            async with self._p.control.connection() as conn:
                return await query(conn)
        except psycopg.OperationalError as exc:
            raise ServerUnavailable(f"the tenants registry cannot be reached: {str(exc).strip()}") from exc

    # -- invalidation ---------------------------------------------------------------------------

    def _drop_tenant(self, tenant_id: uuid.UUID) -> None:
        self._forget_tenant(tenant_id)
        self._pending.discard(tenant_id)
        self._run_callbacks((tenant_id,))

    def _drop_server(self, server_id: uuid.UUID) -> None:
        self.stats.invalidations += 1
        self._p.fleet.forget(server_id)  # its DSN changed: the next use reads (and checks) the new one
        for flight in self._flights:
            flight.dropped.add(server_id)
        affected = {tid for tid, (sid, _) in self._credentials.items() if sid == server_id}
        affected |= {c.id for c in self._contexts.values() if c.server_id == server_id}
        for tenant_id in affected:
            self._credentials.pop(tenant_id, None)
        self._run_callbacks(affected)

    def _reset(self, reason: str) -> None:
        self.stats.resets += 1
        self._p.fleet.forget()  # server notifications may have been missed too
        known = self._clear() | self._pending  # a change made here may have lost its notification too
        self._pending = set()
        log.debug("tenant cache reset (%s): %d tenant(s) forgotten", reason, len(known))
        self._run_callbacks(known)

    def _run_callbacks(self, tenant_ids: Iterable[uuid.UUID]) -> None:
        ids = list(tenant_ids)
        if not ids or not self._callbacks:
            return
        callbacks = list(self._callbacks)

        async def run() -> None:
            for tenant_id in ids:
                for callback in callbacks:
                    try:
                        await callback(tenant_id)
                    except Exception:
                        log.exception("tenant cache: invalidation callback failed for tenant %s", tenant_id)

        task = asyncio.get_running_loop().create_task(run(), name="tenant-cache-invalidate")
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_tasks.discard)

    def _on_listening(self) -> None:
        if self._started:
            self.stats.reconnects += 1
        # Reads that started before LISTEN was in place may have missed a change: don't store them.
        self._epoch += 1
        self._listening = True

    def _on_deaf(self) -> None:
        # Notifications sent from now until LISTEN is back are lost: trust nothing cached.
        self._listening = False
        self._reset("listen connection lost")

    def _handle(self, channel: str, payload: str) -> None:
        try:
            object_id = uuid.UUID(payload)
        except ValueError:
            # Not an id (say, a hand-sent NOTIFY cardvault_tenants, '*'): drop everything to be safe.
            log.warning("tenant cache: notification %r on %s names no id; clearing the cache", payload, channel)
            self._reset(f"notification {payload!r}")
            return
        if channel == TENANTS_CHANNEL:
            self._drop_tenant(object_id)
        elif channel == SERVERS_CHANNEL:
            self._drop_server(object_id)
