"""The queue in front of a tenant pool (``controlplane.pools.gate``): turns, order, timeouts."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.pools.gate import Gate, GateExpired

#: Seconds a waiter waits at most (long enough never to expire in the tests that do not wait it out).
PATIENCE = 30.0


async def test_turns_are_taken_until_none_is_free_then_waiters_are_served_in_arrival_order() -> None:
    gate = Gate(2, PATIENCE)
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
    gate = Gate(1, PATIENCE)
    assert gate.take()
    task = asyncio.create_task(gate.wait())
    await asyncio.sleep(0)
    gate.give()  # handed to the waiter, which has not resumed yet
    assert not gate.take()
    await task
    assert not gate.take()


async def test_a_cancelled_wait_takes_no_turn_and_leaves_the_queue() -> None:
    gate = Gate(1, PATIENCE)
    assert gate.take()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await gate.wait()
    assert len(gate) == 0
    gate.give()
    assert gate.take()  # the turn came back to the free ones, not to the gone waiter
    assert not gate.take()


async def test_waiters_expire_after_their_patience_in_arrival_order_and_take_no_turn() -> None:
    gate = Gate(1, 0.2)
    assert gate.take()
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(gate.wait())
    await asyncio.sleep(0.1)
    second = asyncio.create_task(gate.wait())
    started = loop.time()
    with pytest.raises(GateExpired):
        await first
    assert not second.done() and len(gate) == 1  # it arrived 0.1 s later: still waiting
    with pytest.raises(GateExpired):
        await second
    assert loop.time() - started >= 0.15
    gate.give()
    assert gate.take() and not gate.take()  # the one turn, back with the free ones


async def test_a_waiter_after_an_expiry_gets_its_full_patience() -> None:
    gate = Gate(1, 0.1)
    assert gate.take()
    with pytest.raises(GateExpired):
        await gate.wait()
    late = asyncio.create_task(gate.wait())
    await asyncio.sleep(0.05)
    gate.give()
    await asyncio.wait_for(late, 1)  # served, not expired by the timer armed for the first one


async def test_fail_ends_every_wait_with_the_error() -> None:
    gate = Gate(1, PATIENCE)
    assert gate.take()
    waits = [asyncio.create_task(gate.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    gate.fail(lambda: ConnectionError("down"))
    for wait in waits:
        with pytest.raises(ConnectionError, match="down"):
            await wait
    assert len(gate) == 0


async def test_a_turn_handed_to_a_waiter_cancelled_in_the_same_moment_goes_to_the_next() -> None:
    gate = Gate(1, PATIENCE)
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
    gate = Gate(1, PATIENCE)
    assert gate.take()
    task = asyncio.create_task(gate.wait())
    await asyncio.sleep(0)
    gate.widen()
    await asyncio.wait_for(task, 1)
    gate.widen()
    assert gate.take() and not gate.take()
