"""Keeping a sender at a steady rate (generator, replay, re-scoring and sweeps)."""

from __future__ import annotations

import asyncio
import time


class Pace:
    """Sleep just enough that messages go out at no more than ``rate`` a second.

    >>> pace = Pace(None)  # no limit: never sleeps
    >>> asyncio.run(pace.sent(1000)) is None
    True
    """

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.count = 0
        self.started = time.monotonic()

    async def sent(self, n: int = 1) -> None:
        """Account for ``n`` more messages; wait if they went out ahead of the rate."""
        self.count += n
        if self.rate:
            ahead = self.count / self.rate - (time.monotonic() - self.started)
            if ahead > 0.001:
                await asyncio.sleep(ahead)
