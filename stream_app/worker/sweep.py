"""Time-based re-evaluation: which customers to sweep when event time passes a day.

Windows are UTC-day buckets, so a customer's windowed features change with the passage
of time only at UTC midnights (``views_24h`` hourly, ``days_since_last_order``
continuously, both re-read at the same moments). A customer is scheduled for the first
midnight after its clock; when a partition's event-time watermark passes that midnight,
the customer is swept once (and scheduled again while it still has windowed activity).
Once its windows are empty, a buyer is scheduled at the recency checkpoints of its last
order (``FeatureWindow.next_change``: 120 days to two years after it). So the cost is one
evaluation per active customer per event-time day, plus ten per buyer over two years of
lapse, not a scan of all customers per tick.

The watermark of a partition is the newest event time seen on it, capped at the wall
clock (one event stamped in the future must not sweep everybody early).

>>> s = SweepSchedule()
>>> s.schedule(0, b"c1", clock=5 * DAY_MS + 10)
>>> s.observe(0, 5 * DAY_MS + 99, now_ms=10 * DAY_MS)
>>> s.pop_due(0)
[]
>>> s.observe(0, 6 * DAY_MS + 1, now_ms=10 * DAY_MS)
>>> s.pop_due(0), s.pending()
([b'c1'], 0)
"""

from __future__ import annotations

import time

from stream_app.core.features import DAY_MS


class SweepSchedule:
    """Per partition: the event-time watermark and the customers due at each midnight."""

    def __init__(self) -> None:
        self.watermarks: dict[int, int] = {}
        self._due: dict[int, dict[int, set[bytes]]] = {}

    def observe(self, partition: int, ts: int, now_ms: int | None = None) -> None:
        """Advance ``partition``'s watermark with an event stamped ``ts``."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        ts = min(ts, now)
        if ts > self.watermarks.get(partition, 0):
            self.watermarks[partition] = ts

    def schedule(self, partition: int, key: bytes, clock: int) -> None:
        """Sweep ``key`` at the first UTC midnight after ``clock``."""
        self.schedule_at(partition, key, (clock // DAY_MS + 1) * DAY_MS)

    def schedule_at(self, partition: int, key: bytes, due: int) -> None:
        """Sweep ``key`` once the watermark reaches the UTC day of event time ``due``
        (``Outcome.sweep_at``: the next midnight, or a recency checkpoint)."""
        self._due.setdefault(partition, {}).setdefault(due // DAY_MS, set()).add(key)

    def pop_due(self, partition: int) -> list[bytes]:
        """Customers of ``partition`` whose midnight the watermark has passed."""
        days = self._due.get(partition)
        if not days:
            return []
        today = self.watermarks.get(partition, 0) // DAY_MS
        due: set[bytes] = set()
        for day in [d for d in days if d <= today]:
            due |= days.pop(day)
        return sorted(due)

    def forget(self, partition: int, key: bytes) -> None:
        """Unschedule ``key`` (erased, or consent withdrawn): the schedule keeps no
        customer that is gone.

        >>> s = SweepSchedule(); s.schedule(0, b"c1", clock=0); s.forget(0, b"c1")
        >>> s.pending()
        0
        """
        days = self._due.get(partition)
        if not days:
            return
        for day in [d for d, keys in days.items() if key in keys]:
            days[day].discard(key)
            if not days[day]:
                del days[day]

    def drop_partition(self, partition: int) -> None:
        """Forget a partition this worker no longer owns."""
        self._due.pop(partition, None)
        self.watermarks.pop(partition, None)

    def pending(self) -> int:
        return sum(len(keys) for days in self._due.values() for keys in days.values())
