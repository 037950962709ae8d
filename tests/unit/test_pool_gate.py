"""The queue in front of a tenant pool (``controlplane.pools.gate``): turns, order, timeouts."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.pools.gate import Gate


async def test_turns_are_taken_until_none_is_free_then_waiters_are_served_in_arrival_order() -> None:
    gate = Gate(2)
    assert gate.take() and gate.take()
    assert not gate.take()
    served: list[int] = []

    async def waiter(i: int) -> None:
        await gate.wait()
        served.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert len(gate) == 3 and served == []
    gate.give()
    await asyncio.sleep(0)
    assert served == [0]
    gate.give()
    gate.give()
    await asyncio.gather(*tasks)
    assert served == [0, 1, 2] and len(gate) == 0
    assert not gate.take()  # the three turns given back went to the three waiters
    for _ in range(3):
        gate.give()
    assert gate.take() and gate.take() and gate.take() and not gate.take()


async def test_nobody_jumps_the_queue_while_a_turn_is_on_its_way_to_a_waiter() -> None:
    gate = Gate(1)
    assert gate.take()
    task = asyncio.create_task(gate.wait())
    await asyncio.sleep(0)
    gate.give()  # handed to the waiter, which has not resumed yet
    assert not gate.take()
    await task
    assert not gate.take()


async def test_a_wait_that_times_out_takes_no_turn_and_leaves_the_queue() -> None:
    gate = Gate(1)
    assert gate.take()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await gate.wait()
    assert len(gate) == 0
    gate.give()
    assert gate.take()  # the turn came back to the free ones, not to the gone waiter
    assert not gate.take()


async def test_a_turn_handed_to_a_waiter_cancelled_in_the_same_moment_goes_to_the_next() -> None:
    gate = Gate(1)
    assert gate.take()
    first = asyncio.create_task(gate.wait())
    second = asyncio.create_task(gate.wait())
    await asyncio.sleep(0)
    gate.give()  # first's turn ...
    first.cancel()  # ... but it is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)  # passed on
    assert not gate.take()
    gate.give()
    assert gate.take()


async def test_widen_adds_a_turn_for_a_waiter_or_for_later() -> None:
    gate = Gate(1)
    assert gate.take()
    task = asyncio.create_task(gate.wait())
    await asyncio.sleep(0)
    gate.widen()
    await asyncio.wait_for(task, 1)
    gate.widen()
    assert gate.take() and not gate.take()
