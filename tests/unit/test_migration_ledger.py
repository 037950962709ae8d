"""The migration run's ledger writer: outcomes are queued at once and written in batches, in order."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.migrations.fleet_runner import Outcome, Target
from controlplane.migrations.service import _LedgerWriter


def outcome(n: int) -> Outcome:
    return Outcome(Target(tenant_id=f"id-{n}", slug=f"tenant-{n}", dsn=""), True, "0004", None, 0.01)


async def test_outcomes_queue_while_a_batch_is_written() -> None:
    batches: list[list[str]] = []
    gate = asyncio.Event()

    async def write(batch: list[Outcome]) -> None:
        batches.append([o.target.slug for o in batch])
        await gate.wait()

    writer = _LedgerWriter(write)
    await writer.record(outcome(0))  # returns at once: the worker is not held up by the write
    await asyncio.sleep(0)
    for n in (1, 2, 3):
        await writer.record(outcome(n))
    gate.set()
    await writer.close()

    assert batches == [["tenant-0"], ["tenant-1", "tenant-2", "tenant-3"]]


async def test_a_failed_write_stops_the_run() -> None:
    async def write(batch: list[Outcome]) -> None:
        raise ConnectionError("registry unavailable")

    writer = _LedgerWriter(write)
    await writer.record(outcome(0))
    await asyncio.sleep(0.01)

    with pytest.raises(ConnectionError, match="registry unavailable"):
        await writer.record(outcome(1))
    with pytest.raises(ConnectionError, match="registry unavailable"):
        await writer.close()
