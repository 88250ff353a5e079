"""Faust's per-message hand-over without tasks (:mod:`stream_app.worker.delivery`), with
mode's own ``Service.wait_first`` behind it, as in the worker's consumer."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest
from mode import Service
from mode.services import WaitResults

from stream_app.worker.delivery import deliver_first


class Started:
    """A coroutine function that notes whether its body ran, and how it ended."""

    def __init__(self, wait_for: asyncio.Event | None = None, fail: str | None = None):
        self.wait_for, self.fail = wait_for, fail
        self.ran = self.finished = self.cancelled = False

    async def __call__(self) -> str:
        self.ran = True
        try:
            if self.wait_for is not None:
                await self.wait_for.wait()
            if self.fail:
                raise ValueError(self.fail)
            self.finished = True
            return "delivered"
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def in_service(body: Any) -> Any:
    service = Service()
    await service.start()
    try:
        return await body(functools.partial(Service.wait_first, service))
    finally:
        await service.stop()


def run(body: Any) -> Any:
    return asyncio.run(in_service(body))


def test_a_delivery_that_need_not_wait_makes_no_task_and_never_starts_the_interrupt():
    delivery, interrupt = Started(), Started()

    async def body(wait_first: Any) -> tuple[Any, int]:
        before = len(asyncio.all_tasks())
        result = await deliver_first(wait_first, (delivery(), interrupt()), None)
        return result, len(asyncio.all_tasks()) - before

    result, new_tasks = run(body)
    assert result == WaitResults([result.done[0]], ["delivered"], False)
    assert new_tasks == 0 and delivery.finished and not interrupt.ran


def test_a_delivery_that_waits_goes_on_where_it_stopped_and_completes():
    async def body(wait_first: Any) -> tuple[Any, Started, Started]:
        room = asyncio.Event()
        delivery, interrupt = Started(wait_for=room), Started(wait_for=asyncio.Event())
        handed = asyncio.ensure_future(
            deliver_first(wait_first, (delivery(), interrupt()), None))
        await asyncio.sleep(0.01)
        assert delivery.ran and not delivery.finished and not handed.done()
        room.set()
        return await asyncio.wait_for(handed, 5), delivery, interrupt

    result, delivery, interrupt = run(body)
    assert result.results == ["delivered"] and not result.stopped
    assert delivery.finished and interrupt.cancelled


def test_the_interrupt_stops_a_waiting_delivery():
    async def body(wait_first: Any) -> tuple[Any, Started]:
        suspend = asyncio.Event()
        delivery = Started(wait_for=asyncio.Event())  # a stream buffer that stays full
        handed = asyncio.ensure_future(
            deliver_first(wait_first, (delivery(), suspend.wait()), None))
        await asyncio.sleep(0.01)
        suspend.set()  # a rebalance suspends the flow
        return await asyncio.wait_for(handed, 5), delivery

    result, delivery = run(body)
    assert result.results == [True]  # the suspend-flow wait won
    assert delivery.cancelled and not delivery.finished


@pytest.mark.parametrize("waits", [False, True])
def test_a_failing_delivery_raises_whether_or_not_it_waited(waits: bool):
    async def body(wait_first: Any) -> None:
        room = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, room.set)
        delivery = Started(wait_for=room if waits else None, fail="bad message")
        interrupt = Started(wait_for=asyncio.Event())
        await deliver_first(wait_first, (delivery(), interrupt()), None)

    with pytest.raises(ValueError, match="bad message"):
        run(body)


def test_other_calls_go_to_wait_first_as_they_are():
    async def body(wait_first: Any) -> Any:
        ready = asyncio.Event()
        ready.set()
        return ready, await deliver_first(wait_first, (ready,), None)  # not coroutines

    ready, result = run(body)
    assert result.done == [ready] and result.results == [True]  # mode's answer
