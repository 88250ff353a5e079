"""The ``process`` agent: every input message, in partition order, through the pipeline.

The agent is thin: it moves bytes between Kafka, the ``customers`` table and
:class:`~stream_app.core.pipeline.CustomerPipeline`, turns each outcome into its effects
(:func:`~stream_app.core.effects.effects_of`, the order) and applies them to the worker's
sink (stream_app/worker/sink.py). Control messages are handed to
:meth:`~stream_app.worker.rejudge.Rejudge.control`.
"""

from __future__ import annotations

import time
from typing import Any

import faust

from stream_app.core.effects import apply, effects_of
from stream_app.core.pipeline import CustomerPipeline
from stream_app.worker.assignment import Assignment
from stream_app.worker.metrics import Metrics
from stream_app.worker.model_feed import ModelFeed
from stream_app.worker.rejudge import Rejudge
from stream_app.worker.sink import WorkerSink
from stream_app.worker.sweep import SweepSchedule


class Processor:
    """The input agent of one worker. ``kinds``: the kind of each input topic (click,
    purchase, profile, erasure, control)."""

    def __init__(self, *, pipeline: CustomerPipeline, customers: Any, kinds: dict[str, str],
                 sink: WorkerSink, rejudge: Rejudge, schedule: SweepSchedule,
                 metrics: Metrics, assignment: Assignment, feed: ModelFeed) -> None:
        self.pipeline = pipeline
        self.customers = customers
        self.kinds = kinds
        self.sink = sink
        self.rejudge = rejudge
        self.schedule = schedule
        self.metrics = metrics
        self.assignment = assignment
        self.feed = feed

    def register(self, app: Any, inputs: Any) -> None:
        """The agent on the input topics ``inputs``."""
        processor = self

        @app.agent(inputs)
        async def process(stream: faust.StreamT) -> None:
            """Every input message, in partition order: update the customer, emit changes."""
            await processor.process(stream)

    async def process(self, stream: faust.StreamT) -> None:
        """Every input message, in partition order: update the customer, emit changes.

        Not before the worker knows the newest model: a redelivered event that caused a
        customer's last change re-sends it only with a model (and an event evaluated
        without one gets no segment until the first re-scoring)."""
        pipeline, customers, kinds, sink = self.pipeline, self.customers, self.kinds, self.sink
        control, first_touch = self.rejudge.control, self.rejudge.first_touch
        observe = self.metrics.processing.observe
        events = self.metrics.events
        watch = self.schedule.observe
        processed = self.assignment.processed
        await self.feed.caught_up.wait()
        async for event in stream.events():
            started = time.perf_counter()
            message = event.message
            processed[message.tp] = message.offset
            kind = kinds[message.topic]
            key = message.key
            partition = message.partition
            if kind == "control":
                for customer, out in control(message):
                    await apply(effects_of(out, customer, partition), sink)
                observe(time.perf_counter() - started)
                continue
            customer = pipeline.customer_key(key) if key else None  # pseudonymised
            stored = customers.get(customer) if customer else None
            if stored is not None and first_touch(customer):
                await apply(effects_of(pipeline.restate(customer.decode(errors="replace"),
                                                        stored), customer, partition), sink)
            timestamp = message.timestamp
            for out in pipeline.process_message(kind, key, message.value, stored,
                                                message.topic, partition, message.offset,
                                                _timestamp_ms(timestamp)):
                events.labels(message.topic, out.event_type or "invalid").inc()
                if out.event_ts is not None and kind in ("click", "purchase"):
                    watch(partition, out.event_ts)
                await apply(effects_of(out, customer, partition, timestamp), sink)
            observe(time.perf_counter() - started)


def _timestamp_ms(timestamp: float | None) -> int | None:
    return None if timestamp is None else int(timestamp * 1000)
