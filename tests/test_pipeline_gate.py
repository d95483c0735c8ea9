"""The pipeline's ``max_in_flight`` gate: a bound, FIFO order, and no slot lost to a
cancelled waiter (whether it was cancelled before or after a slot was handed to it)."""

from __future__ import annotations

import asyncio

from cardq.gate import Gate


async def test_bounds_holders_and_admits_in_arrival_order() -> None:
    gate = Gate(2)
    holding = 0
    most = 0
    order: list[int] = []

    async def use(i: int) -> None:
        nonlocal holding, most
        async with gate:
            order.append(i)
            holding += 1
            most = max(most, holding)
            await asyncio.sleep(0.01)
            holding -= 1

    await asyncio.gather(*(use(i) for i in range(10)))
    assert most == 2
    assert order == list(range(10))


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    gate = Gate(1)
    release = asyncio.Event()

    async def hold() -> None:
        async with gate:
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(gate.__aenter__())
    await asyncio.sleep(0)
    waiter.cancel()  # cancelled while still waiting
    await asyncio.gather(waiter, return_exceptions=True)
    release.set()
    await holder
    async with asyncio.timeout(1):
        async with gate:  # the one slot is free again
            pass


async def test_a_slot_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    gate = Gate(1)
    await gate.__aenter__()
    first = asyncio.create_task(gate.__aenter__())
    second = asyncio.create_task(gate.__aenter__())
    await asyncio.sleep(0)
    await gate.__aexit__(None, None, None)  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it runs
    await asyncio.gather(first, return_exceptions=True)
    async with asyncio.timeout(1):
        await second  # so the slot went on to `second`
    await gate.__aexit__(None, None, None)
    async with asyncio.timeout(1):
        async with gate:
            pass
