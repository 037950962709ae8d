"""Registering servers, reaching them, and choosing where a new tenant goes."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import NamedTuple

from msgspec import UNSET, UnsetType
from psycopg import conninfo

from controlplane import db
from controlplane.crypto import SecretBox
from controlplane.db import AsyncConn
from controlplane.errors import (
    NoServerAvailable,
    ServerExists,
    ServerMismatch,
    ServerNotFound,
    ServerUnavailable,
    ValidationFailed,
)
from controlplane.fleet import catalog, dsns, repository, tls
from controlplane.fleet.admin_pools import AdminPools
from controlplane.fleet.models import (
    DEFAULT_SERVER_NAME,
    SERVER_NAME_PATTERN,
    Server,
    ServerIdentity,
    ServerStatus,
    validate_server_name,
)
from controlplane.fleet.tls import RootCertFiles, ServerTls
from controlplane.settings import DatabaseSettings


class _CachedDsn(NamedTuple):
    dsn: str
    #: ``clock()`` value after which the DSN is read from the registry again.
    expires: float


class Fleet:
    """The servers hosting tenant databases and a small management pool for each.

    Management connections are autocommit (``CREATE DATABASE`` needs it) and are reused across
    operations: a new connection costs milliseconds, as much as the rest of a provisioning step.

    Decrypted DSNs are kept for ``server_dsn_ttl`` seconds at most, one entry per server. ``forget``
    drops them at once: this process calls it when it changes a server, and the registry cache calls
    it when another replica's change is notified (``cardvault_servers``). A management pool opened
    with an older DSN is replaced (and the old one closed) the next time the server is used.

    Every DSN it hands out carries the server's TLS settings (``sslmode``, ``sslrootcert``: see
    ``fleet.tls``); root certificates are written under ``tls_dir`` (a private temporary directory when
    None).
    """

    def __init__(
        self,
        box: SecretBox,
        settings: DatabaseSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        tls_dir: Path | None = None,
    ) -> None:
        self._box = box
        self._settings = settings
        self._clock = clock
        self._certs = RootCertFiles(tls_dir)
        self._dsns: dict[uuid.UUID, _CachedDsn] = {}
        #: Bumped by ``forget``: a registry read that started before it is not cached.
        self._generation = 0
        self._admin = AdminPools(settings, self.dsn)

    async def close(self) -> None:
        self._dsns.clear()
        await self._admin.close()
        self._certs.close()

    # -- registration ---------------------------------------------------------------------------

    async def register(
        self, conn: AsyncConn, name: str, dsn: str, *, tls_settings: ServerTls | None = None, check: bool = True
    ) -> Server:
        """Add a server. Its DSN must name host, port, user and database.

        With ``check`` (always, but for tests that register a server nobody can reach) the DSN must
        connect, with the TLS settings (``sslmode`` may also be in the DSN), as a user with rights to
        create databases and roles, to a primary that is not registered yet (by system identifier and
        port); PUBLIC then loses CONNECT on every database of the server, in the same transaction as
        the registry row is written.
        """
        validate_server_name(name)
        dsns.explicit(dsn)
        dsn, tls_ = tls.split(dsn, tls_settings or ServerTls())
        if not check:
            await self._insert(conn, name, dsn, None, tls_)
            return await self.get(conn, name)
        async with self._checked(self._with_tls(dsn, tls_)) as (admin, facts):
            await self._refuse_taken(conn, name, facts.identity)
            open_databases = await catalog.open_databases(admin)
            blocked = [d for d in open_databases if not d.manageable]
            if blocked:
                raise ValidationFailed(catalog.unmanageable_detail(blocked))
            async with conn.transaction():
                await self._insert(conn, name, dsn, facts.identity, tls_)
                still_open = await catalog.lock_down(admin, (d.name for d in open_databases))
                if still_open:
                    raise ValidationFailed(
                        catalog.unmanageable_detail(d for d in open_databases if d.name in still_open)
                    )
        return await self.get(conn, name)

    async def ensure_default(self, conn: AsyncConn, control_dsn: str) -> None:
        """Register the control database's own server when the fleet is empty.

        Host, port and user are the ones the control connection actually reached, so the registered
        DSN is explicit even when ``CARDVAULT_DATABASE_URL`` leans on libpq defaults. Its TLS settings
        are the URL's: ``sslmode``, and the root certificate its ``sslrootcert`` file holds.
        """
        if await repository.list_servers(conn):
            return
        info = conn.info
        dsn = conninfo.make_conninfo(
            control_dsn, host=info.host, port=str(info.port), user=info.user, dbname="postgres"
        )
        dsn, root_cert = tls.from_local_file(dsn)
        with contextlib.suppress(ServerExists):  # another replica starting at the same time
            await self.register(conn, DEFAULT_SERVER_NAME, dsn, tls_settings=ServerTls(root_cert=root_cert))

    async def update_dsn(self, conn: AsyncConn, name: str, dsn: str) -> Server:
        """Replace a server's DSN (a rotated password, a new address): it must reach the same server.

        The server keeps its TLS settings (an ``sslmode`` in the new DSN replaces its mode). The registry
        row's trigger notifies every replica; this one forgets the old DSN at once.
        """
        server = await self.get(conn, name)
        dsns.explicit(dsn)
        stored = await self._stored(conn, server.id)
        return await self._replace(conn, server, *tls.new_dsn(dsn, stored.tls))

    async def update_tls(
        self,
        conn: AsyncConn,
        name: str,
        *,
        sslmode: str | UnsetType | None = UNSET,
        root_cert: str | UnsetType | None = UNSET,
    ) -> Server:
        """Change a server's TLS settings (UNSET: unchanged, None: cleared); checked like a new DSN's.

        Every replica reconnects with them (the row's trigger notifies; pools opened before are replaced).
        """
        server = await self.get(conn, name)
        stored = await self._stored(conn, server.id)
        dsn = self._box.decrypt(stored.dsn_encrypted)
        return await self._replace(conn, server, *tls.new_tls(dsn, stored.tls, sslmode=sslmode, root_cert=root_cert))

    async def _stored(self, conn: AsyncConn, server_id: uuid.UUID) -> repository.StoredConnection:
        stored = await repository.stored_connection(conn, server_id)
        if stored is None:
            raise ServerNotFound(f"no server with id {server_id}")
        return stored

    async def _replace(self, conn: AsyncConn, server: Server, dsn: str, tls_: ServerTls) -> Server:
        """Store ``dsn`` and ``tls_`` for ``server`` once they are proven to reach it."""
        async with self._checked(self._with_tls(dsn, tls_)) as (_, facts):
            registered = server.identity
            if registered is not None and registered != facts.identity:
                raise ServerMismatch(
                    f"the new DSN reaches another PostgreSQL server ({facts.identity.describe()}); "
                    f"{server.name!r} is {registered.describe()}",
                    name=server.name,
                )
            if registered is None:
                other = await repository.get_by_identity(conn, facts.identity)
                if other is not None and other.id != server.id:
                    raise ServerExists(f"the new DSN reaches the server registered as {other.name!r}", name=server.name)
            await repository.update_dsn(
                conn,
                server,
                dsn_encrypted=self._box.encrypt(dsn),
                dsn_display=db.redact(dsn),
                identity=facts.identity,
                tls=tls_,
            )
        self.forget(server.id)
        self._admin.trust(server.id)
        return await self.get(conn, server.name)

    async def _insert(
        self, conn: AsyncConn, name: str, dsn: str, identity: ServerIdentity | None, tls_: ServerTls
    ) -> None:
        await repository.insert_server(
            conn,
            server_id=uuid.uuid4(),
            name=name,
            dsn_encrypted=self._box.encrypt(dsn),
            dsn_display=db.redact(dsn),
            identity=identity,
            tls=tls_,
        )

    def _with_tls(self, dsn: str, tls_: ServerTls) -> str:
        """``dsn`` as libpq gets it: with the TLS settings (the root certificate as a file)."""
        root_cert_file = self._certs.path(tls_.root_cert) if tls_.root_cert is not None else None
        return tls.with_tls(dsn, tls_.sslmode, root_cert_file)

    async def _refuse_taken(self, conn: AsyncConn, name: str, identity: ServerIdentity) -> None:
        if await repository.get_by_name(conn, name) is not None:
            raise ServerExists(f"a server named {name!r} is already registered", name=name)
        same = await repository.get_by_identity(conn, identity)
        if same is not None:
            raise ServerExists(
                f"this PostgreSQL server ({identity.describe()}) is already registered as {same.name!r}", name=name
            )

    @asynccontextmanager
    async def _checked(self, dsn: str) -> AsyncIterator[tuple[AsyncConn, catalog.ServerFacts]]:
        """A connection with ``dsn`` whose user may manage tenants on a primary; the server's facts."""
        async with contextlib.AsyncExitStack() as stack:
            try:
                conn = await stack.enter_async_context(db.connect(dsn, self._settings, role="check"))
            except ServerUnavailable as exc:
                # The DSN given is what is wrong (host, port, credentials, database, TLS): a client error.
                raise ValidationFailed(f"cannot connect with this DSN and TLS settings: {exc.detail}") from None
            facts = await catalog.facts(conn)
            if not facts.can_manage_tenants:
                raise ValidationFailed("the DSN's user needs SUPERUSER or CREATEDB and CREATEROLE")
            if facts.in_recovery:
                raise ValidationFailed("the DSN reaches a standby (in recovery): register the primary")
            yield conn, facts

    async def get(self, conn: AsyncConn, name: str) -> Server:
        # A name no server can have (say, with a NUL byte) is not looked up.
        server = await repository.get_by_name(conn, name) if SERVER_NAME_PATTERN.fullmatch(name) else None
        if server is None:
            raise ServerNotFound(f"no server named {name!r}", name=name)
        return server

    async def set_status(self, conn: AsyncConn, name: str, status: ServerStatus) -> Server:
        server = await self.get(conn, name)
        await repository.set_status(conn, server.id, status)
        self.forget(server.id)
        return await self.get(conn, name)

    async def place(self, conn: AsyncConn, *, avoid: Collection[uuid.UUID] = (), why: str = "") -> Server:
        """Where a new tenant goes: the active server with the fewest tenants, if it answers; never one of
        ``avoid`` (full servers: ``controlplane.provisioning.placement``, which says ``why`` they are).

        An unreachable server raises ``ServerUnavailable`` here, before anything of the tenant exists.
        """
        server = await repository.least_loaded_active(conn, avoid=avoid)
        if server is None:
            if avoid:
                raise NoServerAvailable(
                    f"every active database server is full ({why}); add one with `cardvault servers add`"
                )
            raise NoServerAvailable("no active database server; add one with `cardvault servers add`")
        async with self.admin(conn, server.id) as admin:
            await catalog.ping(admin)
        return server

    # -- connections ----------------------------------------------------------------------------

    async def dsn(self, conn: AsyncConn, server_id: uuid.UUID) -> str:
        """The server's management DSN (decrypted; kept for ``server_dsn_ttl`` seconds at most), with its
        TLS settings: ``sslmode`` and ``sslrootcert`` (an absolute path), so anything built from it, a
        ``pg_dump`` subprocess included, connects as the registry says."""
        cached = self._dsns.get(server_id)
        if cached is not None and cached.expires > self._clock():
            return cached.dsn
        generation = self._generation
        stored = await repository.stored_connection(conn, server_id)
        if stored is None:
            self._dsns.pop(server_id, None)
            raise ServerNotFound(f"no server with id {server_id}")
        dsn = self._with_tls(self._box.decrypt(stored.dsn_encrypted), stored.tls)
        ttl = self._settings.server_dsn_ttl
        if ttl > 0 and generation == self._generation:
            now = self._clock()
            for expired in [k for k, v in self._dsns.items() if v.expires <= now]:
                del self._dsns[expired]
            self._dsns[server_id] = _CachedDsn(dsn, now + ttl)
        else:
            self._dsns.pop(server_id, None)
        return dsn

    def forget(self, server_id: uuid.UUID | None = None) -> None:
        """Drop the cached DSN of ``server_id`` (of every server when None): the next use reads it again."""
        self._generation += 1
        if server_id is None:
            self._dsns.clear()
        else:
            self._dsns.pop(server_id, None)

    def admin(self, control: AsyncConn, server_id: uuid.UUID) -> AbstractAsyncContextManager[AsyncConn]:
        """A pooled autocommit management connection to the server's maintenance database (see
        ``fleet.admin_pools``: probed first, so an unreachable server fails fast)."""
        return self._admin.connection(control, server_id)

    @asynccontextmanager
    async def connect_database(self, control: AsyncConn, server_id: uuid.UUID, dbname: str) -> AsyncIterator[AsyncConn]:
        """A short-lived management connection to one database on the server."""
        dsn = await self.dsn(control, server_id)
        async with db.connect(dsn, self._settings, dbname=dbname, role="admin") as conn:
            yield conn
