"""Keeping a sender at a steady rate (generator, replay, re-scoring and sweeps), and
background work behind the input (re-scoring and sweeps hold back while it lags)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

#: Seconds between the looks of a held-back sender at its ``hold`` condition.
HOLD_POLL_S = 0.05


class Pace:
    """Sleep just enough that messages go out at no more than ``rate`` a second.

    ``hold``: while it returns true (the worker's input lags, say), wait before the next
    message, up to ``max_hold_s`` each time (background work slows down under load but
    never stops). Time spent held does not count against the rate.

    >>> pace = Pace(None)  # no limit: never sleeps
    >>> asyncio.run(pace.sent(1000)) is None
    True
    >>> busy = iter([True, True, False])
    >>> held = Pace(None, hold=lambda: next(busy))
    >>> asyncio.run(held.sent(1)); held.held
    2
    """

    def __init__(self, rate: float | None, hold: Callable[[], bool] | None = None,
                 max_hold_s: float = 1.0) -> None:
        self.rate = rate
        self.hold = hold
        self.max_hold_s = max_hold_s
        self.count = 0
        #: Polls that found ``hold`` true (how often the sender waited for the input).
        self.held = 0
        self.started = time.monotonic()

    async def sent(self, n: int = 1) -> None:
        """Account for ``n`` more messages; wait if they went out ahead of the rate, then
        while ``hold`` says so."""
        self.count += n
        if self.rate:
            ahead = self.count / self.rate - (time.monotonic() - self.started)
            if ahead > 0.001:
                await asyncio.sleep(ahead)
        if self.hold is not None:
            began = time.monotonic()
            while self.hold() and time.monotonic() - began < self.max_hold_s:
                self.held += 1
                await asyncio.sleep(HOLD_POLL_S)
            self.started += time.monotonic() - began  # held time is not ahead of the rate
