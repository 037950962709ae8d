"""PgBouncer in front of a server: naming one, and keeping its configuration in step with the registry.

A server may have one PgBouncer (``server_pgbouncers``). Tenant connections to that server then go
through it (``routing.cache``); the control plane's own work (provisioning, migrations, backups) keeps
connecting to the server directly. ``sync`` re-renders the files of every PgBouncer from the registry
(``pgbouncer_config``), writes them when they changed and RELOADs PgBouncer through its admin console:
idempotent, so it runs after every change without caring what the change was. ``changed`` asks for one
soon (debounced: a burst of provisionings is one sync), ``ensure`` makes sure a tenant is in its
PgBouncer's configuration before its first connection (a just-provisioned tenant must not wait for the
debounce), and the app syncs at start-up.

Every control-plane process that serves tenants writes the same files from the same registry (atomic
replaces), so they need only share the directory with PgBouncer, not coordinate.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg_pool import AsyncConnectionPool

from controlplane.crypto import SecretBox
from controlplane.db import AsyncConn
from controlplane.errors import ServerNotFound, ValidationFailed
from controlplane.fleet import pgbouncer_config as files
from controlplane.fleet import pgbouncer_repository as repository
from controlplane.fleet import repository as servers
from controlplane.fleet.models import Server
from controlplane.fleet.pgbouncer_models import ADMIN_USER, PgBouncerAddress, PgBouncerSync, StoredPgBouncer
from controlplane.settings import DatabaseSettings, PoolSettings

log = logging.getLogger(__name__)

#: Seconds ``changed`` waits for more changes before it syncs.
DEBOUNCE = 0.2


async def reload(address: PgBouncerAddress, admin_password: str, db: DatabaseSettings) -> None:
    """``RELOAD`` through PgBouncer's admin console (the ``pgbouncer`` database): it re-reads both files.

    The console speaks only the simple query protocol, hence a client-side-binding cursor.
    """
    async with await psycopg.AsyncConnection.connect(
        host=address.host,
        port=address.port,
        dbname="pgbouncer",
        user=ADMIN_USER,
        password=admin_password,
        autocommit=True,
        connect_timeout=max(1, int(db.connect_timeout)),
        cursor_factory=psycopg.AsyncClientCursor,
    ) as conn:
        await conn.execute("RELOAD")


class PgBouncers:
    """The PgBouncers of the fleet: registered with ``configure``, kept in step with ``sync``.

    ``statement_timeout``: seconds, what the tenant pools give every tenant connection
    (``pools.models.STATEMENT_TIMEOUT``); PgBouncer sets it on each server connection it opens.
    """

    def __init__(
        self,
        control: AsyncConnectionPool[AsyncConn],
        box: SecretBox,
        pools: PoolSettings,
        db: DatabaseSettings,
        *,
        statement_timeout: float,
        debounce: float = DEBOUNCE,
    ) -> None:
        self._control = control
        self._box = box
        self._pools = pools
        self._db = db
        self._statement_timeout = statement_timeout
        self._debounce = debounce
        #: Per server, the tenant databases its PgBouncer's configuration had after this process's last sync.
        self._served: dict[uuid.UUID, frozenset[str]] = {}
        self._lock = asyncio.Lock()
        self._dirty = False
        self._task: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Wait for a sync in progress (a half-written change would be redone by the next start anyway)."""
        task, self._task = self._task, None
        if task is not None:
            self._dirty = False
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- registration ---------------------------------------------------------------------------

    async def configure(self, conn: AsyncConn, server: Server, address: str, config_dir: str) -> PgBouncerSync:
        """Put PgBouncer at ``address`` (``HOST:PORT``) in front of ``server``, its files in ``config_dir``
        (an existing directory, empty or already the control plane's), and sync it at once. Tenant
        connections move to it when every process hears of the change (the row's trigger notifies
        ``cardvault_servers``)."""
        where = PgBouncerAddress.parse(address)
        directory = Path(config_dir)
        if not directory.is_absolute() or not await asyncio.to_thread(files.usable_directory, directory):
            raise ValidationFailed(
                f"PgBouncer directory {config_dir!r} must be an absolute path to an existing directory that is"
                " empty or holds a pgbouncer.ini written by the control plane",
                config_dir=config_dir,
            )
        password = files.new_admin_password()
        await repository.upsert(conn, server.id, where, str(directory), self._box.encrypt(password))
        stored = await repository.get(conn, server.id)
        assert stored is not None  # just written, in this connection
        return await self._sync_one(conn, stored)

    async def remove(self, conn: AsyncConn, server: Server) -> bool:
        """Tenant connections to ``server`` go to it directly again; False if it had no PgBouncer.

        Its files are left as they are: stopping PgBouncer is the operator's business."""
        removed = await repository.delete(conn, server.id)
        self._served.pop(server.id, None)
        return removed

    async def describe(self, conn: AsyncConn, server: Server) -> StoredPgBouncer | None:
        return await repository.get(conn, server.id)

    # -- keeping in step ------------------------------------------------------------------------

    async def sync(self, server_id: uuid.UUID | None = None) -> list[PgBouncerSync]:
        """Re-render, write and reload the PgBouncer of ``server_id`` (of every server when None)."""
        async with self._control.connection() as conn:
            if server_id is None:
                found = await repository.list_all(conn)
            else:
                one = await repository.get(conn, server_id)
                found = [one] if one is not None else []
            return [await self._sync_one(conn, stored) for stored in found]

    def changed(self, tenant_id: uuid.UUID | None = None) -> None:
        """A tenant (or a server) changed: sync every PgBouncer soon, once per burst of changes."""
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._debounced(), name="pgbouncer-sync")

    async def on_invalidate(self, tenant_id: uuid.UUID) -> None:
        """``TenantCache.on_invalidate`` callback: any process's change to a tenant reaches every process."""
        self.changed(tenant_id)

    async def ensure(self, server_id: uuid.UUID, database_name: str) -> None:
        """Sync ``server_id``'s PgBouncer now unless this process last saw ``database_name`` in it."""
        if database_name in self._served.get(server_id, frozenset()):
            return
        try:
            await self.sync(server_id)
        except Exception:  # the connection attempt that follows reports what is wrong to the client
            log.exception("PgBouncer sync for a new tenant connection failed")

    async def _debounced(self) -> None:
        while self._dirty:
            await asyncio.sleep(self._debounce)
            self._dirty = False
            try:
                await self.sync()
            except Exception:  # the next change or start-up retries; the tenants keep their connections
                log.exception("PgBouncer sync failed")

    async def _sync_one(self, conn: AsyncConn, stored: StoredPgBouncer) -> PgBouncerSync:
        async with self._lock:
            tenants = await repository.tenants(conn, stored.server_id)
            connection = await servers.stored_connection(conn, stored.server_id)
            if connection is None:
                raise ServerNotFound(f"no server with id {stored.server_id}")
            directory = Path(stored.config_dir)
            admin_password = self._box.decrypt(stored.admin_password_encrypted)
            ini = files.render_ini(
                address=stored.address,
                config_dir=directory,
                server_dsn=self._box.decrypt(connection.dsn_encrypted),
                tls=connection.tls,
                databases=(t.database_name for t in tenants),
                pools=self._pools,
                statement_timeout=self._statement_timeout,
            )

            def userlist() -> str:  # a decryption and a verifier per tenant: off the event loop
                roles = ((t.role_name, self._box.decrypt(t.role_password_encrypted)) for t in tenants)
                return files.render_userlist(admin_password, roles)

            result = PgBouncerSync(
                server=stored.server_name,
                address=str(stored.address),
                config_dir=stored.config_dir,
                tenants=len(tenants),
                written=False,
                reloaded=False,
            )
            try:
                written = await asyncio.to_thread(_write, directory, ini, userlist, connection.tls.root_cert)
            except OSError as exc:
                result.error = f"cannot write the PgBouncer files in {stored.config_dir}: {exc}"
                log.warning("%s (server %s)", result.error, stored.server_name)
                return result
            result.written = written
            known = self._served.get(stored.server_id)
            if written or known is None:  # a process that never synced cannot know PgBouncer has the files
                try:
                    await reload(stored.address, admin_password, self._db)
                except psycopg.Error as exc:
                    result.error = f"PgBouncer at {stored.address} did not reload: {str(exc).strip()}"
                    log.warning("%s (server %s)", result.error, stored.server_name)
                    return result
                result.reloaded = True
            self._served[stored.server_id] = frozenset(t.database_name for t in tenants)
            return result


def _write(directory: Path, ini: str, userlist: Callable[[], str], root_cert: str | None) -> bool:
    """Write the files that changed, the auth file and certificate before the configuration naming them."""
    written = files.write_private(directory / files.USERLIST_FILE, userlist())
    if root_cert is not None:
        written |= files.write_private(directory / files.ROOT_CERT_FILE, root_cert)
    return files.write_private(directory / files.INI_FILE, ini) or written
