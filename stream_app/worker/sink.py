"""The worker's :class:`~stream_app.core.effects.Sink`: where an outcome's effects land.

:func:`~stream_app.core.effects.effects_of` decides what happens and in which order (a
leaving change before the state, every other change after it); :class:`WorkerSink` carries
each effect out: the state through :func:`~stream_app.worker.patches.write_through` (not
``customers[key] = ...``: a commit could pass Faust's buffered write), the topic sends,
the metrics, the assignment index, the sweep schedule, the segment and audience sizes and
the map's recent changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from stream_app.core.effects import (
    Counted,
    DeadLetter,
    DeleteState,
    IndexVector,
    MoveAudiences,
    MoveSegment,
    PutState,
    ScheduleSweep,
    SendAudienceChanges,
    SendChange,
    SendSample,
)
from stream_app.core.pipeline import UNASSIGNED, CustomerPipeline
from stream_app.model.assignments import AssignmentIndex
from stream_app.web.segment_map import RecentChanges
from stream_app.worker import patches
from stream_app.worker.metrics import Metrics
from stream_app.worker.sizes import SegmentSizes
from stream_app.worker.sweep import SweepSchedule


class WorkerSink:
    """Table, topics and in-memory bookkeeping of one worker.

    An erased customer, or one that withdrew consent, is dropped from what the worker
    keeps in memory (docs/privacy.md) after the tombstone, or after its excluded state is
    stored: the assignment index (the examples), the map's recent changes and the sweep
    schedule here, then ``forget(key, partition)`` for the rest (the pending control
    batches and the catch-up's sets, :meth:`~stream_app.worker.rejudge.Rejudge.forget_customer`).
    """

    def __init__(self, *, customers: Any, changes_topic: Any, audience_topic: Any,
                 dlq_topic: Any, samples_topic: Any, metrics: Metrics,
                 pipeline: CustomerPipeline, index: AssignmentIndex, schedule: SweepSchedule,
                 sizes: SegmentSizes[int], audience_sizes: SegmentSizes[str],
                 recent_changes: RecentChanges,
                 forget: Callable[[bytes, int], None]) -> None:
        self.customers = customers
        self.changes_topic = changes_topic
        self.audience_topic = audience_topic
        self.dlq_topic = dlq_topic
        self.samples_topic = samples_topic
        self.metrics = metrics
        self.pipeline = pipeline
        self.index = index
        self.schedule = schedule
        self.sizes = sizes
        self.audience_sizes = audience_sizes
        self.recent_changes = recent_changes
        self.forget = forget

    async def dead_letter(self, effect: DeadLetter) -> None:
        self.metrics.invalid.labels(effect.reason).inc()
        await self.dlq_topic.send(key=effect.key, value=effect.value)
        self.metrics.dlq.inc()

    def count(self, effect: Counted) -> None:
        metrics = self.metrics
        if effect.duplicate:
            metrics.duplicates.inc()
        if effect.late:
            metrics.late.inc()
        if effect.excluded:
            metrics.excluded.inc()
        if effect.erasure is not None:
            metrics.erasures.labels(effect.erasure).inc()

    async def send_change(self, effect: SendChange) -> None:
        """Send the change (a leaving one: wait until the broker has it), count it, and
        note it for the map (a customer leaving is not named there)."""
        metrics, key = self.metrics, effect.key
        if effect.leaving:
            await (await self.changes_topic.send(key=key, value=effect.change))
        else:
            await self.changes_topic.send(key=key, value=effect.change)
        metrics.changes.labels(effect.trigger).inc()
        self.recent_changes.record(time.time(), None if effect.leaving else key,
                                   effect.moved, effect.trigger)
        if effect.flap:
            metrics.flaps.inc()
        old, new = effect.moved if effect.moved is not None else (None, UNASSIGNED)
        if old is not None and old >= 0 and new is not None and new >= 0:
            metrics.moves.inc()
        if effect.timestamp:
            metrics.latency.observe(max(0.0, time.time() - effect.timestamp))

    async def send_audience_changes(self, effect: SendAudienceChanges) -> None:
        """Send the audience changes (leaving ones: all handed over, then waited for)."""
        topic, counted = self.audience_topic, self.metrics.audience_changes
        if effect.leaving:
            sent = [await topic.send(key=effect.key, value=change)
                    for _, _, change in effect.changes]
            for (name, action, _), done in zip(effect.changes, sent):
                await done
                counted.labels(name, action).inc()
            return
        for name, action, change in effect.changes:
            await topic.send(key=effect.key, value=change)
            counted.labels(name, action).inc()

    async def put_state(self, effect: PutState) -> None:
        await patches.write_through(self.customers, effect.key, effect.state,
                                    effect.partition)
        if effect.forget:
            self.forget_traces(effect.key, effect.partition)  # type: ignore[arg-type]

    async def delete_state(self, effect: DeleteState) -> None:
        await patches.write_through(self.customers, effect.key, None,
                                    effect.partition)  # a tombstone
        self.forget_traces(effect.key, effect.partition)  # type: ignore[arg-type]

    def forget_traces(self, key: bytes, partition: int) -> None:
        """Drop the customer from the worker's memory (see the class)."""
        self.index.forget(key)
        self.recent_changes.forget(key)
        self.schedule.forget(partition, key)
        self.forget(key, partition)

    async def send_sample(self, effect: SendSample) -> None:
        await self.samples_topic.send(value=effect.sample)
        self.metrics.samples_sent.inc()

    def index_vector(self, effect: IndexVector) -> None:
        model = self.pipeline.model
        if model is not None:
            self.index.record(effect.key, effect.partition, model.spec, effect.vector,
                              effect.segment)

    def schedule_sweep(self, effect: ScheduleSweep) -> None:
        self.schedule.schedule_at(effect.partition, effect.key, effect.at)

    def move_segment(self, effect: MoveSegment) -> None:
        self.sizes.move(effect.partition, effect.old, effect.new)

    def move_audiences(self, effect: MoveAudiences) -> None:
        move, partition = self.audience_sizes.move, effect.partition
        for name, action in effect.moves:
            if action == "enter":
                move(partition, None, name)
            else:
                move(partition, name, None)
