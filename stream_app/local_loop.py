"""The worker's loop in one process, without Kafka or Faust.

:class:`LocalLoop` drives :class:`~stream_app.pipeline.CustomerPipeline` with a dict as
the customer table, feeds the samples to the learner
(:func:`~stream_app.segmentation.learner_for`), and every ``publish_every`` messages
publishes a model version to itself, re-scoring as the workers do: every customer for the
first version, then, for a version that asks for it, the customers its
:class:`~stream_app.assignments.AssignmentIndex` says would move. ``stream-app evaluate
--offline`` simulates with it, and ``stream-app bench`` measures our own code with it (the
``direct`` mode). Time-based sweeps are not run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from stream_app.assignments import AssignmentIndex
from stream_app.config import Settings
from stream_app.pipeline import CustomerPipeline, Outcome
from stream_app.segmentation import learner_for


class LocalLoop:
    """Pipeline, customer table, learner and model versions in this process.

    ``on_outcome(key, outcome)`` sees every outcome: of input messages and of re-scoring.
    """

    def __init__(self, settings: Settings, publish_every: int,
                 on_outcome: Callable[[bytes | None, Outcome], None] | None = None) -> None:
        self.pipeline = CustomerPipeline(settings)
        self.learner = learner_for(settings)
        self.publish_every = publish_every
        self.on_outcome = on_outcome
        self.store: dict[bytes, bytes] = {}
        self.index = AssignmentIndex()
        self.partition_of: dict[bytes, int] = {}
        self.margin = settings.segment_margin
        self.processed = self.version = self.rescored = 0
        self.learning_s = 0.0  # time spent in the learner's learn_one

    def handle(self, kind: str, key: bytes | None, value: bytes | None, topic: str,
               partition: int, offset: int, timestamp: int | None = None) -> list[Outcome]:
        """Process one input message, of one event or a JSON array (as the worker's agent
        does); a model version every ``publish_every`` events."""
        outs = self.pipeline.process_message(kind, key, value,
                                             self.store.get(key) if key else None,
                                             topic, partition, offset, timestamp)
        if key is not None:
            self.partition_of[key] = partition
        for out in outs:
            self._keep(key, out, partition)
            if out.sample is not None:
                sample = orjson.loads(out.sample)
                started = time.perf_counter()
                self.learner.learn_one(sample["x"], sample.get("member"))
                self.learning_s += time.perf_counter() - started
            self.processed += 1
            if self.processed % self.publish_every == 0 and self.learner.ready:
                self.publish()
        return outs

    def publish(self) -> None:
        """A new model version, applied at once; re-score as the workers do."""
        self.version += 1
        model = self.learner.snapshot(self.version)
        self.pipeline.use_model(model)
        if self.version == 1:
            work = [(self.partition_of[key], key) for key in self.store]
        elif model.rescore:
            work = self.index.movers(model, self.margin, set(self.partition_of.values()))
        else:
            return
        for partition, key in work:
            self._keep(key, self.pipeline.rescore(key.decode(), self.store[key]), partition)
        self.rescored += len(work)

    def _keep(self, key: bytes | None, out: Outcome, partition: int) -> None:
        if out.state is not None and key is not None:
            self.store[key] = out.state
        if out.vector is not None and key is not None and out.segment is not None:
            assert self.pipeline.model is not None
            self.index.record(key, partition, self.pipeline.model.spec, out.vector,
                              out.segment)
        if self.on_outcome is not None:
            self.on_outcome(key, out)
