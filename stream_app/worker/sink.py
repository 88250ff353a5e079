"""The worker's :class:`~stream_app.core.effects.Sink`: where an outcome's effects land.

:func:`~stream_app.core.effects.effects_of` decides what happens and in which order (a
leaving change before the state, every other change after it); :class:`WorkerSink` carries
each effect out, in that order: the state through the
:class:`~stream_app.worker.customer_store.CustomerStore` (flushed to the changelog at once),
the topic sends, the metrics, the assignment index, the sweep schedule, the segment and
audience sizes and the map's recent changes.

:class:`BatchSink` is the batched path (every outcome that does not leave): the
bookkeeping happens at once, the states stay in the store's cache, the sends are
collected, and :meth:`BatchSink.drain` flushes the states of the customers with changes,
then sends everything the batch produced, in order (the samples for the learner together,
as JSON arrays).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from stream_app.core.effects import (
    Counted,
    DeadLetter,
    DeleteState,
    Effect,
    IndexVector,
    MoveAudiences,
    MoveSegment,
    PutState,
    ScheduleSweep,
    SendAudienceChanges,
    SendChange,
    SendSample,
    apply,
)
from stream_app.core.pipeline import UNASSIGNED, CustomerPipeline
from stream_app.model.assignments import AssignmentIndex
from stream_app.web.segment_map import RecentChanges
from stream_app.worker.customer_store import CustomerStore
from stream_app.worker.metrics import Metrics
from stream_app.worker.sizes import SegmentSizes
from stream_app.worker.sweep import SweepSchedule

#: Samples sent in one message of the samples topic at most (~40 KB).
SAMPLES_PER_MESSAGE = 256


class WorkerSink:
    """Table, topics and in-memory bookkeeping of one worker.

    An erased customer, or one that withdrew consent, is dropped from what the worker
    keeps in memory (docs/privacy.md) after the tombstone, or after its excluded state is
    stored: the assignment index (the examples), the map's recent changes and the sweep
    schedule here, then ``forget(key, partition)`` for the rest (the pending control
    batches and the catch-up's sets, :meth:`~stream_app.worker.rejudge.Rejudge.forget_customer`).
    """

    def __init__(self, *, customers: CustomerStore, changes_topic: Any, audience_topic: Any,
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
        """Store the state and hand it to the producer at once (the ordered path: a
        leaving change was sent before it, its other changes go after it)."""
        self.customers.put(effect.key, effect.state, effect.partition)  # type: ignore[arg-type]
        await self.customers.flush_keys((effect.key,))  # type: ignore[arg-type]
        if effect.forget:
            self.forget_traces(effect.key, effect.partition)  # type: ignore[arg-type]

    async def delete_state(self, effect: DeleteState) -> None:
        self.customers.put(effect.key, None, effect.partition)  # type: ignore[arg-type]
        await self.customers.flush_keys((effect.key,))  # type: ignore[arg-type]  # tombstone
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

    async def send_samples(self, samples: list[bytes]) -> None:
        """Send ``samples`` as JSON arrays of up to :data:`SAMPLES_PER_MESSAGE` (one message
        per batch instead of one per sample: the learner's worker reads, and every worker
        sends, a fraction of the messages)."""
        for start in range(0, len(samples), SAMPLES_PER_MESSAGE):
            chunk = samples[start:start + SAMPLES_PER_MESSAGE]
            await self.samples_topic.send(value=b"[" + b",".join(chunk) + b"]")
            self.metrics.samples_sent.inc(len(chunk))

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


class BatchSink:
    """A :class:`~stream_app.core.effects.SyncSink` over a :class:`WorkerSink` for the
    outcomes of a batch that send nothing before their state (see
    :func:`~stream_app.core.effects.leaves`): states go to the store's cache, the
    bookkeeping happens at once, the sends wait for :meth:`drain`."""

    def __init__(self, sink: WorkerSink) -> None:
        self.sink = sink
        self.customers = sink.customers
        #: The batch's sends, in the order their outcomes made them.
        self.sends: list[Effect] = []
        #: The batch's samples for the learner (sent together, after the other sends).
        self.samples: list[bytes] = []
        #: Customers whose state must reach the producer before the sends.
        self.flush_first: set[bytes] = set()
        self.count = sink.count
        self.index_vector = sink.index_vector
        self.schedule_sweep = sink.schedule_sweep
        self.move_segment = sink.move_segment
        self.move_audiences = sink.move_audiences

    def put_state(self, effect: PutState) -> None:
        self.customers.put(effect.key, effect.state, effect.partition)  # type: ignore[arg-type]
        if effect.forget:
            self.sink.forget_traces(effect.key, effect.partition)  # type: ignore[arg-type]

    def delete_state(self, effect: DeleteState) -> None:
        self.customers.put(effect.key, None, effect.partition)  # type: ignore[arg-type]
        self.sink.forget_traces(effect.key, effect.partition)  # type: ignore[arg-type]

    def send_change(self, effect: SendChange) -> None:
        self._send_after_state(effect, effect.key)

    def send_audience_changes(self, effect: SendAudienceChanges) -> None:
        self._send_after_state(effect, effect.key)

    def send_sample(self, effect: SendSample) -> None:
        self.samples.append(effect.sample)

    def dead_letter(self, effect: DeadLetter) -> None:
        self.sends.append(effect)

    def _send_after_state(self, effect: SendChange | SendAudienceChanges,
                          key: bytes | None) -> None:
        if effect.leaving:
            raise ValueError("a leaving change is sent before its state: apply its "
                             "outcome in order (WorkerSink), not in a batch")
        self.sends.append(effect)
        if key is not None:
            self.flush_first.add(key)

    async def drain(self) -> None:
        """Flush the states the collected changes depend on, then make the sends, then
        send the samples."""
        if self.flush_first:
            flush_first, self.flush_first = self.flush_first, set()
            await self.customers.flush_keys(flush_first)
        if self.sends:
            sends, self.sends = self.sends, []
            await apply(sends, self.sink)
        if self.samples:
            samples, self.samples = self.samples, []
            await self.sink.send_samples(samples)
