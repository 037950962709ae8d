"""A LISTEN connection that outlives connection losses: how registry change notices reach a replica.

One dedicated autocommit connection (LISTEN is per session, so it cannot come from a pool) LISTENs on
the given channels and hands every notification to ``on_notify``. The owner learns when notifications
start flowing (``on_up``: LISTEN is in place) and when they may have stopped (``on_down``: the
connection was lost, so notifications sent meanwhile are gone for good). A ``SELECT 1`` every
``ping_interval`` seconds and TCP keepalives notice a connection that died without closing. Lost
connections are re-made with exponential backoff between ``reconnect_min`` and ``reconnect_max``
seconds; one line is logged when the connection is lost and one when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import psycopg
from psycopg import conninfo, sql
from psycopg.rows import TupleRow

log = logging.getLogger(__name__)

_Conn = psycopg.AsyncConnection[TupleRow]


class Listener:
    """Keeps one LISTEN session open on ``channels`` and reports what it hears and when it is deaf.

    Callbacks run in the listener's task and must not block: ``on_up()`` right after LISTEN succeeded
    (before any notification of that session is handed over), ``on_down()`` as soon as the connection
    is known to be lost, ``on_notify(channel, payload)`` for each notification, in commit order.
    """

    def __init__(
        self,
        dsn: str,
        channels: Sequence[str],
        *,
        on_notify: Callable[[str, str], None],
        on_up: Callable[[], None],
        on_down: Callable[[], None],
        name: str = "listener",
        ping_interval: float = 5.0,
        ping_timeout: float = 5.0,
        reconnect_min: float = 0.05,
        reconnect_max: float = 5.0,
    ) -> None:
        # Keepalives find a peer that vanished without closing the connection (the ping does too).
        self._dsn = conninfo.make_conninfo(
            dsn, keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3
        )
        self._channels = tuple(channels)
        self._on_notify = on_notify
        self._on_up = on_up
        self._on_down = on_down
        self._name = name
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._reconnect_min = reconnect_min
        self._reconnect_max = max(reconnect_min, reconnect_max)
        self._conn: _Conn | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        """Backend pid of the LISTEN session (see ``pg_stat_activity``); None while there is none."""
        conn = self._conn
        return conn.info.backend_pid if conn is not None and not conn.closed else None

    async def start(self) -> None:
        """Connect and LISTEN (``psycopg.Error`` if that fails), then listen in the background."""
        if self._task is not None:
            return
        self._stopping = False
        conn = await self._connect()
        self._up(conn)
        self._task = asyncio.create_task(self._run(conn), name=f"{self._name}-listen")

    async def stop(self) -> None:
        """Stop listening and close the connection (without calling ``on_down``: the owner is stopping)."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _connect(self) -> _Conn:
        conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        try:
            for channel in self._channels:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except BaseException:
            await conn.close()
            raise
        return conn

    def _up(self, conn: _Conn) -> None:
        self._conn = conn
        self._on_up()

    async def _run(self, conn: _Conn) -> None:
        try:
            while True:
                try:
                    await self._consume(conn)
                except (psycopg.Error, OSError, TimeoutError) as exc:
                    reason = " ".join(str(exc).split()) or type(exc).__name__  # one log line
                    log.warning("%s: listen connection lost (%s); reconnecting", self._name, reason)
                except Exception:
                    # A bug in a callback must not leave an owner that believes it is still listening.
                    log.exception("%s: listener failed; reconnecting", self._name)
                self._on_down()
                await conn.close()
                conn = await self._reconnect()
                self._up(conn)
        finally:
            current, self._conn = self._conn, None
            if current is not None:
                await current.close()
            if not self._stopping:  # the task died some other way: the owner must stop trusting it
                self._on_down()

    async def _consume(self, conn: _Conn) -> None:
        while True:
            async for notify in conn.notifies(timeout=self._ping_interval):
                self._on_notify(notify.channel, notify.payload)
            # A quiet channel and a dead connection look the same from here: ask.
            await asyncio.wait_for(conn.execute("SELECT 1"), self._ping_timeout)

    async def _reconnect(self) -> _Conn:
        started = time.monotonic()
        delay = self._reconnect_min
        attempts = 0
        while True:
            await asyncio.sleep(delay)
            attempts += 1
            try:
                conn = await self._connect()
            except (psycopg.Error, OSError) as exc:
                log.debug("%s: reconnect attempt %d failed: %s", self._name, attempts, " ".join(str(exc).split()))
                delay = min(delay * 2, self._reconnect_max)
                continue
            log.info(
                "%s: listening again after %d attempt(s), %.1f s without notifications",
                self._name,
                attempts,
                time.monotonic() - started,
            )
            return conn
