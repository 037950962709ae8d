"""The connections tenant pools hand out: conninfo with our timeouts, and a connection class that
reports failed connects at once and frees its server slot before it says it is closed."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Self

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import pq

from controlplane.pools.models import APPLICATION_NAME, STATEMENT_TIMEOUT
from controlplane.settings import DatabaseSettings

#: Seconds a closing connection waits for the server to end its session (see TenantConnection.close).
CLOSE_WAIT = 1.0
#: Parsed conninfos kept by ``TenantConnection`` (tenants whose pools come and go); past it, start over.
PARSED_MAX = 4096


#: ``application_name`` of a tenant DSN that goes through PgBouncer in transaction mode (``routing`` sets it;
#: the server sees it too): such a connection may be given another server session at every transaction.
PGBOUNCER_APPLICATION_NAME = f"{APPLICATION_NAME}-pgbouncer"


def via_pgbouncer(dsn: str) -> bool:
    """Whether ``dsn`` (a tenant DSN, or its conninfo) goes through PgBouncer in transaction mode."""
    return pg_conninfo.conninfo_to_dict(dsn).get("application_name") == PGBOUNCER_APPLICATION_NAME


def tenant_conninfo(dsn: str, db: DatabaseSettings) -> str:
    """``dsn`` with our connect timeout, application name and statement timeout (kept options stay).

    Through PgBouncer it keeps its application name and gets no startup options (PgBouncer 1.18 refuses
    them; it sets the statement timeout itself, on every server connection: ``fleet.pgbouncer_config``).
    """
    if via_pgbouncer(dsn):
        return pg_conninfo.make_conninfo(dsn, connect_timeout=max(1, math.ceil(db.connect_timeout)))
    options = str(pg_conninfo.conninfo_to_dict(dsn).get("options") or "").strip()
    timeout = f"-c statement_timeout={int(STATEMENT_TIMEOUT * 1000)}"
    return pg_conninfo.make_conninfo(
        dsn,
        connect_timeout=max(1, math.ceil(db.connect_timeout)),
        application_name=APPLICATION_NAME,
        options=f"{options} {timeout}".strip(),
    )


class TenantConnection(psycopg.AsyncConnection[dict[str, Any]]):
    """A tenant connection whose failed connection attempts are reported (``on_connect_error``).

    psycopg_pool retries a failed connect in the background; TenantPools wants to know at the first
    failure, so that requests waiting on a pool that has nothing to give fail now instead of at their
    timeout.
    """

    #: When the pool last got this connection back (``time.monotonic()``), or when it was opened.
    returned_at: float = 0.0
    #: conninfo -> its parameters: psycopg parses the conninfo string at every connect (about 80 us, a
    #: cold tenant's pool connects for nearly every request), and a tenant's conninfo rarely changes.
    _parsed: dict[str, dict[str, Any]] = {}

    @classmethod
    async def _get_connection_params(cls, conninfo: str, **kwargs: Any) -> dict[str, Any]:
        if kwargs:
            return await super()._get_connection_params(conninfo, **kwargs)
        params = cls._parsed.get(conninfo)
        if params is None:
            if len(cls._parsed) >= PARSED_MAX:
                cls._parsed.clear()
            params = cls._parsed[conninfo] = await super()._get_connection_params(conninfo)
        return dict(params)  # the caller's to change

    @classmethod
    async def connect(  # type: ignore[override]  # one extra keyword, not a connection parameter
        cls, conninfo: str = "", *, on_connect_error: Callable[[], None] | None = None, **kwargs: Any
    ) -> Self:
        try:
            conn = await super().connect(conninfo, **kwargs)
        except psycopg.OperationalError:
            if on_connect_error is not None:
                on_connect_error()
            raise
        conn.returned_at = time.monotonic()  # just proven alive: no check before its first use
        return conn

    async def close(self) -> None:
        """Close, then wait (at most ``CLOSE_WAIT``) for the server to end the session.

        The backend exits asynchronously after our Terminate message; it closes its socket only after
        leaving ``pg_stat_activity`` and freeing its connection slot. Waiting for that EOF on a duplicate
        of the socket means budget freed by a closed pool is really free on the server.
        """
        if self.closed or self.pgconn.status != pq.ConnStatus.OK:
            await super().close()
            return
        try:
            sock = socket.socket(fileno=os.dup(self.pgconn.socket))
        except OSError:
            await super().close()
            return
        with sock:
            await super().close()
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT):
                    while await loop.sock_recv(sock, 4096):
                        pass
