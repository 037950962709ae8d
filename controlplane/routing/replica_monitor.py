"""How far behind each read replica is, measured in every control-plane process and kept in memory.

Every ``check_interval`` the monitor reads the registered replicas (one registry query), then for each
server with replicas asks the primary for ``pg_current_wal_lsn()`` and *afterwards* each replica for
``pg_last_wal_replay_lsn()`` (one query on a connection it keeps per replica). Lag is measured in WAL,
not with ``now() - pg_last_xact_replay_timestamp()``, which grows without bound on an idle primary:

- **bytes**: the primary's position minus the replica's replay position (0 when caught up);
- **seconds**: the replica has replayed everything the primary had written at the time of the newest
  primary sample at or below its replay position, so it is at most ``now`` minus that sample's time
  behind. The primary is asked first, so a replica that keeps up is rated by the few milliseconds
  between the two queries, not by the check interval; one that fell behind is rated up to one interval
  pessimistically. With no such sample (it is behind everything kept, or the monitor just started),
  its lag is unknown: ``inf``, until it catches up with a sample.

A replica is *usable* while it answers, is in recovery, and its lag is at most ``max_lag``. The reads
router (``routing.replica_reads``) asks ``usable()`` per request; a failure seen by a request marks the
replica down at once (``suspect``) until the next check finds it well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from psycopg import conninfo
from psycopg.rows import dict_row

from controlplane import db
from controlplane.db import AsyncConn
from controlplane.errors import ServerUnavailable
from controlplane.fleet.replicas import Replica, Replicas, ReplicaTarget
from controlplane.platform import Platform
from controlplane.settings import ReplicaSettings

log = logging.getLogger(__name__)

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")

#: Primary WAL positions kept per server: enough to rate a replica many intervals behind.
HISTORY = 64


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` (PostgreSQL's ``pg_lsn`` text) as a number; ``ValueError`` when it is none."""
    match = _LSN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a WAL position: {text!r}")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    """The ``pg_lsn`` text of ``lsn`` (``parse_lsn``'s inverse)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass
class ReplicaState:
    """What the last check (or a request's failure) found about one replica."""

    target: ReplicaTarget
    #: It answered the last check and is in recovery.
    up: bool = False
    #: Its replay position at the last check.
    replay_lsn: int | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    #: Why it is not up (for the admin listing and the log), None when up.
    error: str | None = "not checked yet"
    #: Reads served from it since start-up.
    reads: int = 0

    @property
    def replica(self) -> Replica:
        return self.target.replica

    def usable(self, max_lag: float) -> bool:
        return self.up and self.lag_seconds is not None and self.lag_seconds <= max_lag


@dataclass
class PrimarySamples:
    """Primary WAL samples of one server: ``(monotonic time, lsn)``, oldest first."""

    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def lag_seconds(self, replay: int, now: float) -> float:
        """How far behind a replica that replayed up to ``replay`` is at most; ``inf`` when it is behind
        every sample kept (nothing known vouches for it)."""
        for at, lsn in reversed(self.samples):
            if lsn <= replay:
                return max(0.0, now - at)
        return math.inf


class ReplicaMonitor:
    """The replicas' lag and reachability, refreshed in the background (``start``/``stop``)."""

    def __init__(
        self, platform: Platform, settings: ReplicaSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._p = platform
        self._settings = settings
        self._clock = clock
        self._registry = Replicas(platform.fleet, platform.box, platform.settings.database)
        self._states: dict[uuid.UUID, ReplicaState] = {}
        self._by_server: dict[uuid.UUID, list[ReplicaState]] = {}
        self._servers: dict[uuid.UUID, PrimarySamples] = {}
        self._connections: dict[uuid.UUID, tuple[str, AsyncConn]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._checking = asyncio.Lock()  # the background loop and an admin's change may both check

    @property
    def max_lag(self) -> float:
        return self._settings.max_lag

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check once (so the first requests know the replicas), then keep checking in the background."""
        await self.check()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="replica-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _, conn in self._connections.values():
            await conn.close()
        self._connections.clear()

    def wake(self) -> None:
        """Check now rather than at the next interval (the replica list or a server changed)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.check_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.check()
            except Exception:  # the next round tries again; requests meanwhile use what is known
                log.exception("replica check failed")

    # -- what requests ask ----------------------------------------------------------------------

    def usable(self, server_id: uuid.UUID, min_lsn: int | None = None) -> ReplicaState | None:
        """The first of the server's replicas that may serve a read now: up, lag within ``max_lag`` and,
        with ``min_lsn`` (a client's read-your-writes token), replayed at least that far; else None."""
        for state in self._by_server.get(server_id, ()):
            if not state.usable(self._settings.max_lag):
                continue
            if min_lsn is not None and (state.replay_lsn is None or state.replay_lsn < min_lsn):
                continue
            return state
        return None

    def has_replicas(self, server_id: uuid.UUID) -> bool:
        return server_id in self._by_server

    def target(self, replica_id: uuid.UUID) -> ReplicaTarget | None:
        state = self._states.get(replica_id)
        return state.target if state is not None else None

    def suspect(self, replica_id: uuid.UUID, reason: str) -> None:
        """A request could not use the replica: no reads go to it until a check finds it well."""
        state = self._states.get(replica_id)
        if state is not None and state.up:
            log.warning("replica %s of %s: %s", state.replica.dsn_display, state.replica.server_name, reason)
            state.up, state.error = False, reason
        self.wake()

    def served(self, replica_id: uuid.UUID) -> None:
        state = self._states.get(replica_id)
        if state is not None:
            state.reads += 1

    def states(self) -> list[ReplicaState]:
        """Every replica's state, by server name and position."""
        return sorted(self._states.values(), key=lambda s: (s.replica.server_name, s.replica.position))

    # -- checking -------------------------------------------------------------------------------

    async def check(self) -> None:
        """One round: re-read the replica list, then measure every server's replicas (concurrently)."""
        async with self._checking:
            async with self._p.control.connection() as conn:
                targets = await self._registry.targets(conn)
            self._adopt(targets)
            await asyncio.gather(*(self._check_server(sid, states) for sid, states in self._by_server.items()))

    def _adopt(self, targets: list[ReplicaTarget]) -> None:
        """Take the registry's list: keep the state of replicas whose DSN is unchanged, drop the others."""
        states: dict[uuid.UUID, ReplicaState] = {}
        for target in targets:
            known = self._states.get(target.replica.id)
            if known is not None and known.target.dsn == target.dsn:
                known.target = target  # position or server name may have changed
                states[target.replica.id] = known
            else:
                states[target.replica.id] = ReplicaState(target)
        for replica_id, (dsn, conn) in list(self._connections.items()):
            state = states.get(replica_id)
            if state is None or state.target.dsn != dsn:
                del self._connections[replica_id]
                asyncio.get_running_loop().create_task(conn.close(), name="replica-monitor-close")
        by_server: dict[uuid.UUID, list[ReplicaState]] = {}
        for state in sorted(states.values(), key=lambda s: s.replica.position):
            by_server.setdefault(state.replica.server_id, []).append(state)
        self._servers = {sid: self._servers.get(sid) or PrimarySamples() for sid in by_server}
        self._states, self._by_server = states, by_server

    async def _check_server(self, server_id: uuid.UUID, states: list[ReplicaState]) -> None:
        server = self._servers[server_id]
        limit = self._p.settings.database.connect_timeout + self._settings.check_interval
        try:
            async with (
                asyncio.timeout(limit),
                self._p.control.connection() as control,
                self._p.fleet.admin(control, server_id) as admin,
            ):
                cur = await admin.execute("SELECT pg_current_wal_lsn()::text AS lsn")
                row = await cur.fetchone()
        except (ServerUnavailable, psycopg.Error, TimeoutError) as exc:
            # Without the primary's position no lag can be known: no reads go to its replicas.
            for state in states:
                state.up, state.lag_seconds, state.error = False, None, f"primary unreachable: {exc}"
            return
        assert row is not None
        server.samples.append((self._clock(), parse_lsn(row["lsn"])))
        await asyncio.gather(*(self._check_replica(state, server, limit) for state in states))

    async def _check_replica(self, state: ReplicaState, server: PrimarySamples, limit: float) -> None:
        try:
            async with asyncio.timeout(limit):
                conn = await self._connection(state.target)
                cur = await conn.execute(
                    "SELECT pg_is_in_recovery() AS in_recovery, pg_last_wal_replay_lsn()::text AS replay"
                )
                row = await cur.fetchone()
        except (psycopg.Error, TimeoutError) as exc:
            self._drop_connection(state.replica.id)
            state.up, state.lag_seconds, state.error = False, None, f"unreachable: {str(exc).strip() or 'timeout'}"
            return
        assert row is not None
        if not row["in_recovery"] or row["replay"] is None:
            state.up, state.lag_seconds, state.error = False, None, "not in recovery (promoted?)"
            return
        now = self._clock()
        replay = parse_lsn(row["replay"])
        primary = server.samples[-1][1]
        state.replay_lsn = replay
        state.lag_bytes = max(0, primary - replay)
        state.lag_seconds = server.lag_seconds(replay, now)
        state.up, state.error = True, None

    async def _connection(self, target: ReplicaTarget) -> AsyncConn:
        kept = self._connections.get(target.replica.id)
        if kept is not None and kept[0] == target.dsn and not kept[1].closed:
            return kept[1]
        info = db.management_conninfo(target.dsn, self._p.settings.database, role="replica-monitor")
        conn = await psycopg.AsyncConnection.connect(info, autocommit=True, row_factory=dict_row)
        self._connections[target.replica.id] = (target.dsn, conn)
        return conn

    def _drop_connection(self, replica_id: uuid.UUID) -> None:
        kept = self._connections.pop(replica_id, None)
        if kept is not None:
            asyncio.get_running_loop().create_task(kept[1].close(), name="replica-monitor-close")

    # -- metrics --------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Gauges per server and replica for ``/metrics`` (a Prometheus collector)."""
        labels = ("server", "replica")
        up = GaugeMetricFamily(
            "cardvault_replica_up", "1 if the read replica answers and is in recovery", labels=labels
        )
        usable = GaugeMetricFamily(
            "cardvault_replica_usable", "1 if the read replica serves reads (up, lag within the bound)", labels=labels
        )
        lag_s = GaugeMetricFamily(
            "cardvault_replica_lag_seconds", "Replay lag of the read replica behind its primary", labels=labels
        )
        lag_b = GaugeMetricFamily(
            "cardvault_replica_lag_bytes", "WAL bytes the read replica has not replayed yet", labels=labels
        )
        reads = CounterMetricFamily(
            "cardvault_replica_reads", "Tenant API reads served by the read replica", labels=labels
        )
        for state in self.states():
            values = [state.replica.server_name, replica_label(state.replica)]
            up.add_metric(values, 1.0 if state.up else 0.0)
            usable.add_metric(values, 1.0 if state.usable(self._settings.max_lag) else 0.0)
            if state.lag_seconds is not None:
                lag_s.add_metric(values, state.lag_seconds)
            if state.lag_bytes is not None:
                lag_b.add_metric(values, float(state.lag_bytes))
            reads.add_metric(values, float(state.reads))
        yield from (up, usable, lag_s, lag_b, reads)


def replica_label(replica: Replica) -> str:
    """``host:port`` of the replica (its metric label: stable, and no secret)."""
    params = conninfo.conninfo_to_dict(replica.dsn_display)
    return f"{params.get('host', '')}:{params.get('port', '')}"
