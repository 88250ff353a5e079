"""The partitions assigned to this worker and how far its inputs are read.

Shared by the services of the worker (gauges, views, re-judgements): which input
partitions are this worker's (:meth:`Assignment.local_partitions`), the assigned input
topic-partitions, the offset of the last message processed per input partition, and where
each one's reading started at the last seek (reported by stream_app/worker/seek.py).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

log = logging.getLogger(__name__)


class Assignment:
    """What the consumer was given, as the worker's services ask it.

    ``processed``: offset of the last message processed per input partition (consumer
    lag). ``seeked``: where each input partition's reading started at the last seek to the
    committed offsets, its position until a message is processed. Not asked of the consumer
    thread: its calls share two method workers with the fetches, and a position that waits
    for its reset (asked with a timeout, which cancels only the caller) would hold one;
    ``/ready`` and the catch-up ask often.
    """

    def __init__(self, app: Any, clickstream_topic: str, input_topics: Collection[str]) -> None:
        self.app = app
        self.clickstream_topic = clickstream_topic
        self.input_topics = input_topics
        self.processed: dict[Any, int] = {}
        self.seeked: dict[Any, int] = {}

    def local_partitions(self) -> set[int]:
        """The input partitions assigned to this worker (actives)."""
        return {tp.partition for tp in self.app.assignor.assigned_actives()
                if tp.topic == self.clickstream_topic}

    def inputs(self) -> list[Any]:
        """The assigned topic-partitions of the input (and control) topics."""
        return [tp for tp in self.app.assignor.assigned_actives()
                if tp.topic in self.input_topics]

    def revoked(self, tp: Any) -> None:
        """Forget the positions of a revoked input partition."""
        self.processed.pop(tp, None)
        self.seeked.pop(tp, None)

    def lags(self) -> dict[Any, int]:
        """Messages not processed yet per assigned input (and control) partition, from the
        consumer's last known high watermark (partitions without one yet are left out)."""
        consumer, processed, seeked = self.app.consumer, self.processed, self.seeked
        lags = {}
        for tp in self.inputs():
            try:
                high = consumer.highwater(tp)
            except Exception as exc:  # not fetched yet, or being revoked
                log.debug("no lag for %s: %r", tp, exc)
                continue
            done = processed.get(tp)
            # Nothing processed since the assignment: where the seek put it.
            position = done + 1 if done is not None else seeked.get(tp)
            if high is not None and position is not None:
                lags[tp] = max(0, high - position)
        return lags
