"""Telling every instance that a tenant's users, sessions or API keys changed, so principals can be cached.

A tenant request's principal (user, role, permissions, session or key state) is read from the tenant's
database and cached by the ``Authenticator``. Whoever changes what a principal is made of (logout, a
replayed refresh token, a disabled user, a new role, a revoked key; the HTTP routes and the CLI) calls
``Authenticator.principals_changed``, which drops the tenant's principals here and sends
``NOTIFY cardvault_principals, '<tenant id>'`` on the control database. ``PrincipalEvents`` LISTENs on
that channel (one dedicated connection, like the registry cache's) and drops the named tenant's
principals on every instance at once.

While it hears the notifications, principals are reused for ``CARDVAULT_PRINCIPAL_CACHE_MAX`` (it only
bounds a change whose notification was lost, or one made behind the control plane's back); while it
does not (not started, connection lost), for ``CARDVAULT_PRINCIPAL_CACHE_TTL`` as before, and losing
the connection drops every cached principal (notifications sent meanwhile are gone).
"""

from __future__ import annotations

import logging
import uuid
from typing import Protocol

import psycopg

from controlplane import db
from controlplane.db import AsyncConn
from controlplane.errors import ServerUnavailable
from controlplane.listener import Listener
from controlplane.settings import DatabaseSettings

log = logging.getLogger(__name__)

#: Channel of principal changes; the payload is the tenant id.
PRINCIPALS_CHANNEL = "cardvault_principals"


class PrincipalCache(Protocol):
    """What the events drive (the ``Authenticator``)."""

    def forget_principals(self, tenant_id: uuid.UUID) -> None: ...

    def forget_all_principals(self, *, notified: bool) -> None: ...


async def publish(conn: AsyncConn, tenant_id: uuid.UUID) -> None:
    """Tell every instance that the tenant's principals changed (sent when ``conn``'s transaction commits)."""
    await conn.execute("SELECT pg_notify(%s, %s)", (PRINCIPALS_CHANNEL, str(tenant_id)))


class PrincipalEvents:
    """LISTENs for principal changes and drops what they name from ``cache`` (see the module docstring)."""

    def __init__(self, database: DatabaseSettings, cache: PrincipalCache) -> None:
        self._cache = cache
        self._listener = Listener(
            db.management_conninfo(database.url, database, role="listen-principals"),
            (PRINCIPALS_CHANNEL,),
            on_notify=self._handle,
            on_up=lambda: cache.forget_all_principals(notified=True),
            on_down=lambda: cache.forget_all_principals(notified=False),
            name="principal events",
            ping_timeout=max(1.0, database.connect_timeout),
        )

    async def start(self) -> None:
        """Connect and LISTEN; ``ServerUnavailable`` if it cannot."""
        try:
            await self._listener.start()
        except psycopg.Error as exc:
            raise ServerUnavailable(f"cannot listen for principal changes on the control database: {exc}") from exc

    async def stop(self) -> None:
        await self._listener.stop()
        self._cache.forget_all_principals(notified=False)

    def _handle(self, channel: str, payload: str) -> None:
        try:
            tenant_id = uuid.UUID(payload)
        except ValueError:
            log.warning("principal events: notification %r names no tenant; dropping every principal", payload)
            self._cache.forget_all_principals(notified=True)
            return
        self._cache.forget_principals(tenant_id)
