"""Master-key rotation: every stored secret re-encrypted under the current key, online.

``rotate`` walks each secret column (``repository.secret_columns``) in primary-key order, ``batch_size``
rows at a time: it reads a batch without a transaction, re-encrypts in memory what only a previous key
opens, and writes the batch back in one short transaction in which each row is compared-and-swapped, so a
row a concurrent writer changed meanwhile keeps what that writer wrote (it was written with the current
key: every process has the new key before the rotation starts). Nothing is locked for longer than one
batch's updates, values already under the current key are not written, and a rotation that dies
anywhere leaves every value readable with the current or the previous key: running it again finishes it.

``status`` counts the values per column that only a previous key opens: when it says 0 everywhere, the
previous key can be removed from every process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from controlplane.crypto import KeyState, SecretBox
from controlplane.errors import ConfigError
from controlplane.keys import repository
from controlplane.keys.models import ColumnCounts, KeyReport, SecretColumn
from controlplane.keys.repository import Swap
from controlplane.platform import Platform

log = logging.getLogger(__name__)

#: Rows re-encrypted per transaction.
DEFAULT_BATCH_SIZE = 100
#: Rows read per query by ``status`` (read-only, no transaction).
STATUS_BATCH_SIZE = 1000
#: Failpoint hit after each committed batch (tests interrupt a rotation there).
BATCH_FAILPOINT = "after:reencrypt_batch"

Progress = Callable[[ColumnCounts], None]


async def rotate(
    platform: Platform, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None
) -> KeyReport:
    """Re-encrypt under the current key every value only a previous key opens; counts per column."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    async with platform.control.connection() as conn:
        columns = await repository.secret_columns(conn)
    report = KeyReport(columns=[], previous_keys=platform.box.previous_keys)
    for column in columns:
        counts = await _rotate_column(platform, column, batch_size)
        report.columns.append(counts)
        log.info(
            "re-encrypted %s: %d of %d value(s), %d changed meanwhile, %d unreadable",
            counts.column,
            counts.reencrypted,
            counts.values,
            counts.changed,
            counts.unreadable,
        )
        if progress is not None:
            progress(counts)
    return report


async def _rotate_column(platform: Platform, column: SecretColumn, batch_size: int) -> ColumnCounts:
    box, failpoints = platform.box, platform.failpoints
    counts = ColumnCounts(column=column.name)
    after = None
    while True:
        async with platform.control.connection() as conn:
            batch = await repository.read_batch(conn, column, after, batch_size)
        if not batch:
            return counts
        after = batch[-1].key
        swaps = _reencrypted(box, batch, counts)
        if swaps:
            async with platform.control.connection() as conn, conn.transaction():
                swapped = await repository.swap(conn, column, swaps)
            counts.reencrypted += swapped
            counts.changed += len(swaps) - swapped
            failpoints.hit(BATCH_FAILPOINT)


def _reencrypted(box: SecretBox, batch: list[repository.StoredValue], counts: ColumnCounts) -> list[Swap]:
    swaps = []
    for stored in batch:
        counts.values += 1
        try:
            new = box.reencrypt(stored.value)
        except ConfigError:
            counts.unreadable += 1
            continue
        if new is None:
            counts.current += 1
        else:
            swaps.append(Swap(stored.key, stored.value, new))
    return swaps


async def status(platform: Platform) -> KeyReport:
    """Where every stored secret stands: current key, a previous key only, or no key at all."""
    async with platform.control.connection() as conn:
        columns = await repository.secret_columns(conn)
    report = KeyReport(columns=[], previous_keys=platform.box.previous_keys)
    for column in columns:
        counts = ColumnCounts(column=column.name)
        after = None
        while True:
            async with platform.control.connection() as conn:
                batch = await repository.read_batch(conn, column, after, STATUS_BATCH_SIZE)
            if not batch:
                break
            after = batch[-1].key
            for stored in batch:
                counts.values += 1
                state = platform.box.state(stored.value)
                if state is KeyState.CURRENT:
                    counts.current += 1
                elif state is KeyState.PREVIOUS:
                    counts.previous += 1
                else:
                    counts.unreadable += 1
        report.columns.append(counts)
    return report
