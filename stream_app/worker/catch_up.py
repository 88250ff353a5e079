"""Whether the worker has read the records its partitions held when they were assigned.

After a crash, the records a worker processed after its last commit come again to
whoever owns their partitions next. A redelivered event that caused a customer's last
change re-sends it (stream_app/core/pipeline.py), in case the crash lost the message after the
state that records it was stored. That works only while the redelivered event's change is
still the customer's last: a re-judgement made before the replay reaches it (a re-scoring
pass the new owner queues for the customers it was just given, a sweep, an audience pass)
becomes the last change, and the lost one is never sent (tests/system/test_recovery.py, a worker
killed mid-stream and started again: a lost ``enter`` of an audience, 1 run of 12, and in
2 CI runs of the full suite).

So the passes the worker queues itself wait until it has read every assigned partition up
to where it ended at the assignment: a :class:`CatchUp` is told when a rebalance starts,
the end offsets once the partitions are assigned, and the positions reached. It gives up
after ``max_wait_s`` (a backlog that large, or a partition whose last records are never
delivered, such as transaction markers) rather than hold the passes back for good.

>>> catch_up = CatchUp(max_wait_s=30.0)
>>> catch_up.reached({}, now=0.0)  # nothing assigned yet
False
>>> catch_up.assigned({"a": 10, "b": 0}, now=0.0)
>>> catch_up.pending()
{'a': 10}
>>> catch_up.reached({"a": 4}, now=1.0)
False
>>> catch_up.reached({"a": 10}, now=2.0)
True
>>> catch_up.rebalancing()
>>> catch_up.reached({"a": 10}, now=3.0)  # the new assignment's ends are not known yet
False
>>> catch_up.assigned({"a": 20}, now=3.0)
>>> catch_up.reached({}, now=34.0)  # given up
True
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Mapping

# The logger keeps its name from before the package split (log filters and docs use it).
log = logging.getLogger("stream_app.catch_up")


class CatchUp:
    """The end offsets of the partitions at their assignment, until read past.

    ``max_wait_s``: seconds after an assignment after which the rest counts as read."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self._ends: dict[Hashable, int] | None = None  # None: a rebalance is under way
        self._since = 0.0
        self._waiting = 0  # partitions of the assignment with records to read
        self.done = asyncio.Event()

    def rebalancing(self) -> None:
        """A rebalance started: wait for the next assignment's end offsets."""
        self._ends = None
        self.done.clear()

    def assigned(self, ends: Mapping[Hashable, int], now: float) -> None:
        """Partitions assigned: each is to be read up to its end offset in ``ends``."""
        self._ends = {tp: end for tp, end in ends.items() if end > 0}
        self._since, self._waiting = now, len(self._ends)
        self.reached({}, now)

    def pending(self) -> dict[Hashable, int]:
        """Partitions not read up to their end offset yet, and that offset."""
        return dict(self._ends or {})

    def reached(self, positions: Mapping[Hashable, int], now: float) -> bool:
        """The next offsets to read of some partitions (``positions``): True once every
        partition is read up to its end offset, or ``max_wait_s`` passed."""
        ends = self._ends
        if ends is None:
            return False
        for tp, position in positions.items():
            end = ends.get(tp)
            if end is not None and position >= end:
                del ends[tp]
        if ends and now - self._since >= self.max_wait_s:
            log.warning("still reading the records %d partitions held at their assignment "
                        "after %.0f s (%s); queueing re-judgements anyway", len(ends),
                        now - self._since,
                        ", ".join(f"{tp} to {end}" for tp, end in list(ends.items())[:4]))
            ends.clear()
        if not ends and not self.done.is_set():
            self.done.set()
            if self._waiting:
                log.info("read the records %d partitions held at their assignment in %.1f s",
                         self._waiting, now - self._since)
        return self.done.is_set()

    async def wait(self) -> None:
        """Until every assigned partition is read up to its end at the assignment."""
        await self.done.wait()
