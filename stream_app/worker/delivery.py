"""Faust's hand-over of a fetched message to its streams, without tasks when it need not wait.

Faust's fetch loop delivers each message with ``wait_first(delivery, suspend_flow.wait())``
(see :func:`stream_app.worker.patches.install_inline_delivery`): the delivery puts the
message into the streams' buffers and waits only when one is full, the producer's buffer
is full, or the flow is stopped for a rebalance; ``suspend_flow`` lets a rebalance
interrupt such a wait. :func:`deliver_first` keeps that and drops the four tasks per message
mode's ``wait_first`` makes: it runs the delivery's first step in the caller's task, and
only a delivery that waits goes on in a task, raced against the other awaitables as before.

>>> import asyncio
>>> async def race(*coros, timeout=None):  # stands for mode's wait_first
...     tasks = [asyncio.ensure_future(c) for c in coros]
...     done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
...     for task in pending:
...         task.cancel()
...     return [task.result() for task in done]
>>> async def deliver(wait: bool) -> str:
...     if wait:
...         await asyncio.sleep(0.01)
...     return "delivered"
>>> async def suspended() -> str:
...     await asyncio.sleep(1)
...     return "suspended"
>>> asyncio.run(deliver_first(race, (deliver(False), suspended()), None)).results
['delivered']
>>> asyncio.run(deliver_first(race, (deliver(True), suspended()), None))
['delivered']
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from mode.services import WaitResults


async def deliver_first(wait_first: Callable[..., Awaitable[Any]], coros: tuple[Any, ...],
                        timeout: Any) -> Any:
    """``wait_first(*coros, timeout=timeout)``, but for two coroutines without a timeout (a
    delivery and what may interrupt it) the first one's first step runs here: if it
    completes, the second is closed unstarted (``wait_first`` would cancel it) and that is
    all; if it waits, it goes on (:class:`Resumed`) in ``wait_first`` against the second,
    as it would have from the start. Anything else goes to ``wait_first`` as it is."""
    if timeout is not None or len(coros) != 2 or not all(map(inspect.iscoroutine, coros)):
        return await wait_first(*coros, timeout=timeout)
    delivery, interrupt = coros
    try:
        waiting_on = delivery.send(None)
    except StopIteration as done:
        interrupt.close()
        return WaitResults([delivery], [done.value], False)  # what mode's would say
    except BaseException:
        interrupt.close()
        raise
    return await wait_first(Resumed(delivery, waiting_on), interrupt, timeout=None)


class Resumed:
    """The rest of a coroutine that stopped at its first step waiting on ``waiting_on`` (a
    future, or None to let the loop run once), as an awaitable: it hands what the coroutine
    waits on to the task awaiting it, and steps the coroutine on when the task resumes (as
    ``await`` does for a coroutine it started itself), a cancellation included."""

    def __init__(self, coroutine: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        self.coroutine = coroutine
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, waiting_on = self.coroutine, self.waiting_on
        while True:
            try:
                sent = yield waiting_on
            except BaseException as exc:  # thrown into the awaiting task: a cancellation
                try:
                    waiting_on = coroutine.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    waiting_on = coroutine.send(sent)
                except StopIteration as done:
                    return done.value
