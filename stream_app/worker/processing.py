"""The ``process`` agent: the input messages, in partition order and in batches, through
the pipeline.

The agent is thin: it takes what the stream has (Faust's ``noack_take``: nothing is
acknowledged for it), moves bytes between Kafka, the
:class:`~stream_app.worker.customer_store.CustomerStore` and
:class:`~stream_app.core.pipeline.CustomerPipeline`, and turns each outcome into its effects
(:func:`~stream_app.core.effects.effects_of`, the order). An outcome that leaves (an
erasure, consent withdrawn) is applied in order to the worker's sink, each send awaited; every
other one goes to the batch's :class:`~stream_app.worker.sink.BatchSink`, which sends
the batch's changes after the states they depend on. Control messages are handed to
:meth:`~stream_app.worker.rejudge.Rejudge.control`.

A message is acknowledged (and so committed by Faust) only after a flush of the store
that covers its state (:meth:`Processor.flush`, by the ``flush_states`` task, never by the
agent, which goes on with the events): at the store's interval (spread over a third of
it), when its cache is full, at once in a rebalance, and when nothing is left to write.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import faust

from stream_app.core.effects import apply, apply_sync, effects_of, leaves
from stream_app.core.pipeline import CustomerPipeline, Outcome
from stream_app.worker.assignment import Assignment
from stream_app.worker.customer_store import CustomerStore
from stream_app.worker.metrics import Metrics
from stream_app.worker.model_feed import ModelFeed
from stream_app.worker.rejudge import Rejudge
from stream_app.worker.sink import BatchSink, WorkerSink
from stream_app.worker.sweep import SweepSchedule

#: Seconds between the flusher's looks at the store (a rebalance waits at most this long
#: for the acknowledgements of what the agent processed).
FLUSH_POLL_S = 0.05


class Processor:
    """The input agent of one worker. ``kinds``: the kind of each input topic (click,
    purchase, profile, erasure, control)."""

    def __init__(self, *, pipeline: CustomerPipeline, customers: CustomerStore,
                 kinds: dict[str, str], sink: WorkerSink, rejudge: Rejudge,
                 schedule: SweepSchedule, metrics: Metrics, assignment: Assignment,
                 feed: ModelFeed, batch_size: int, batch_wait_s: float) -> None:
        self.pipeline = pipeline
        self.customers = customers
        self.kinds = kinds
        self.sink = sink
        self.batch = BatchSink(sink)
        self.rejudge = rejudge
        self.schedule = schedule
        self.metrics = metrics
        self.assignment = assignment
        self.feed = feed
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        #: Processed, not acknowledged yet: their states may still be in the cache.
        self.held: list[Any] = []
        #: Events of the batch by (topic, type), for ``stream_app_events_consumed_total``.
        self.consumed: Counter[tuple[str, str]] = Counter()
        self.stream: Any = None
        self.flushing = asyncio.Lock()
        self.stopping = False

    def register(self, app: Any, inputs: Any) -> None:
        """The agent on the input topics ``inputs``, and the flusher task."""
        processor = self

        @app.agent(inputs)
        async def process(stream: faust.StreamT) -> None:
            """Every input message, in partition order: update the customer, emit changes."""
            await processor.process(stream)

        app.final_flush = self.final_flush

        @app.task
        async def flush_states() -> None:
            """Flush the store when due, or at once in a rebalance (see the module)."""
            while True:
                await asyncio.sleep(FLUSH_POLL_S)
                if processor.flush_wanted(app.rebalancing):
                    await processor.flush(processor.flush_spread(app.rebalancing),
                                          hurry=lambda: app.rebalancing or processor.stopping)

    async def process(self, stream: faust.StreamT) -> None:
        """Every input message, in partition order: update the customer, emit changes.

        Not before the worker knows the newest model: a redelivered event that caused a
        customer's last change re-sends it only with a model (and an event evaluated
        without one gets no segment until the first re-scoring)."""
        await self.feed.caught_up.wait()
        self.stream = stream
        async for events in stream.noack_take(self.batch_size, within=self.batch_wait_s):
            await self.process_batch(events)
            self.held.extend(events)
            self.note_dirty()

    def note_dirty(self) -> None:
        """The gauges of the states cached, not written yet."""
        self.metrics.state_dirty.set(len(self.customers.dirty))
        self.metrics.state_dirty_bytes.set(self.customers.dirty_bytes)

    def flush_wanted(self, rebalancing: bool) -> bool:
        """Whether the flusher is to flush now: the store is due, a rebalance waits for
        the acknowledgements, or messages wait for one with nothing to write."""
        if not self.held:
            return False
        return rebalancing or not self.customers.dirty or self.customers.flush_due()

    def flush_spread(self, rebalancing: bool) -> float:
        """Seconds to spread the next flush over: a third of the flush interval, none when
        a rebalance waits or the cache is full."""
        store = self.customers
        if rebalancing or len(store.dirty) >= store.max_dirty:
            return 0.0
        return store.flush_interval_s / 3

    async def flush(self, spread_s: float = 0.0,
                    hurry: Callable[[], bool] | None = None) -> None:
        """Write every cached state to the changelog (spread over ``spread_s`` unless
        ``hurry()``), then acknowledge the messages that were processed before (their
        offsets may be committed from now on)."""
        async with self.flushing:  # one at a time: acknowledgements go in order
            held, self.held = self.held, []
            await self.customers.flush(spread_s, hurry)
            self.note_dirty()
            ack = self.stream.ack
            for event in held:
                await ack(event)

    async def final_flush(self) -> None:
        """The flush of a clean stop (nothing is acknowledged without a stream)."""
        self.stopping = True  # a spread flush under way hurries
        if self.stream is not None and (self.held or self.customers.dirty):
            await self.flush()

    async def process_batch(self, events: Sequence[Any]) -> None:
        """The effects of ``events`` (messages of any input partition, each partition's in
        order): the batched ones drained at the end, a leaving one in order."""
        observe = self.metrics.processing.observe
        processed = self.assignment.processed
        for event in events:
            started = time.perf_counter()
            message = event.message
            processed[message.tp] = message.offset
            await self.apply(self.outcomes(message), message.partition)
            observe(time.perf_counter() - started)
        await self.batch.drain()
        # Counted once their effects are done (a reader of the counter sees them all).
        consumed = self.metrics.events
        for (topic, event_type), n in self.consumed.items():
            consumed.labels(topic, event_type).inc(n)
        self.consumed.clear()

    def outcomes(self, message: Any
                 ) -> Iterable[tuple[Outcome, bytes | None, float | None]]:
        """``(outcome, table key, timestamp of the customer's own message)`` of one input
        message, each evaluated on the state the previous one left in the store."""
        kind = self.kinds[message.topic]
        if kind == "control":
            for customer, out in self.rejudge.control(message):
                yield out, customer, None
            return
        pipeline, customers = self.pipeline, self.customers
        key = message.key
        customer = pipeline.customer_key(key) if key else None  # pseudonymised
        stored = customers.get(customer) if customer else None
        if stored is not None and self.rejudge.first_touch(customer):  # type: ignore[arg-type]
            yield pipeline.restate(customer.decode(errors="replace"),  # type: ignore[union-attr]
                                   stored), customer, None
            stored = customers.get(customer)  # type: ignore[arg-type]
        timestamp = message.timestamp
        consumed, watch = self.consumed, self.schedule.observe
        for out in pipeline.process_message(kind, key, message.value, stored, message.topic,
                                            message.partition, message.offset,
                                            _timestamp_ms(timestamp)):
            consumed[message.topic, out.event_type or "invalid"] += 1
            if out.event_ts is not None and kind in ("click", "purchase"):
                watch(message.partition, out.event_ts)
            yield out, customer, timestamp

    async def apply(self, outcomes: Iterable[tuple[Outcome, bytes | None, float | None]],
                    partition: int) -> None:
        """Apply each outcome as it comes (the next one reads the state it stored).

        A customer's changes leave one at a time, each after the state that records it as
        the customer's last: a replay re-sends only the last change (see
        :class:`~stream_app.core.pipeline.CustomerPipeline`), so a change still waiting in
        the batch is sent before the customer's next change is decided."""
        batch = self.batch
        for out, customer, timestamp in outcomes:
            effects = effects_of(out, customer, partition, timestamp)
            if leaves(out):
                await batch.drain()  # the customer's earlier sends go first
                await apply(effects, self.sink)
                continue
            if (customer in batch.flush_first
                    and (out.change is not None or out.audience_changes)):
                await batch.drain()
            apply_sync(effects, batch)


def _timestamp_ms(timestamp: float | None) -> int | None:
    return None if timestamp is None else int(timestamp * 1000)
