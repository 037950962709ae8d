"""Move slots: how many moves may copy into one target server at once.

Each move's subscription on the target needs logical replication workers there (one apply worker, and
table-sync workers during the initial copy), out of the server's ``max_logical_replication_workers``. Too
many subscriptions at once starve each other ("out of logical replication worker slots") until the sync
timeout. So a move takes one of the target's **slots** before it subscribes and keeps it until its
subscription is gone (the move finished or undone): ``max(1, max_logical_replication_workers // 2)`` slots
per server, read from the target. A slot is a session advisory lock on the control database, held by the
move's own control connection (the one holding the tenant's lock): a crashed move releases it with its
session. Every move takes one, however started (API, CLI, a drain's or a rebalance's queued task).

A move finding every slot taken waits (logging that it does), at most ``CARDVAULT_MOVE_SYNC_TIMEOUT``;
then it is undone and refused with 409 ``move_busy`` and Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import psycopg

from controlplane import db
from controlplane.db import AsyncConn
from controlplane.moves.models import MoveBusy
from controlplane.platform import Platform

log = logging.getLogger(__name__)

#: Seconds between two looks for a free slot.
POLL_INTERVAL = 0.25


def slot_key(server_id: uuid.UUID, slot: int) -> int:
    """The advisory-lock key of slot ``slot`` of the target server ``server_id``."""
    return db.lock_key(f"cardvault:move-target:{server_id}:{slot}")


async def slots_of(admin: AsyncConn) -> int:
    """How many moves may copy into the server ``admin`` is connected to at once."""
    cur = await admin.execute("SELECT current_setting('max_logical_replication_workers')::int AS workers")
    row = await cur.fetchone()
    return max(1, int(row["workers"]) // 2) if row else 1


class TargetSlot:
    """One move's slot on its target server: ``take`` (waits), ``release`` (idempotent)."""

    def __init__(self, platform: Platform, conn: AsyncConn, server_id: uuid.UUID, *, label: str) -> None:
        self._p = platform
        self._conn = conn
        self._server_id = server_id
        self._label = label
        self.key: int | None = None

    async def take(self, wait: float) -> None:
        """Hold a free slot of the target; wait for one at most ``wait`` seconds (``MoveBusy`` then)."""
        if self.key is not None:
            return
        async with self._p.fleet.admin(self._conn, self._server_id) as admin:
            slots = await slots_of(admin)
        deadline = time.monotonic() + wait
        waiting = False
        while True:
            for slot in range(slots):
                key = slot_key(self._server_id, slot)
                if await db.try_advisory_lock(self._conn, key):
                    self.key = key
                    if waiting:
                        log.info("%s: got move slot %d of its target", self._label, slot)
                    return
            if time.monotonic() >= deadline:
                raise MoveBusy(
                    f"the target server already runs {slots} move(s), the most it takes at once "
                    f"(max_logical_replication_workers // 2); waited {wait:g} s for one to finish",
                    slots=slots,
                )
            if not waiting:
                waiting = True
                log.info("%s: waits for a move slot: its target runs %d move(s) already", self._label, slots)
            await asyncio.sleep(POLL_INTERVAL)

    async def release(self) -> None:
        key, self.key = self.key, None
        if key is not None and not self._conn.closed:
            with contextlib.suppress(psycopg.Error):  # a broken session took its locks with it
                await db.advisory_unlock(self._conn, key)
