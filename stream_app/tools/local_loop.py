"""The worker's loop in one process, without Kafka or Faust.

:class:`LocalLoop` drives :class:`~stream_app.core.pipeline.CustomerPipeline` with a dict as
the customer table, feeds the samples to the learner
(:func:`~stream_app.model.segmentation.learner_for`), and every ``publish_every`` messages
publishes a model version to itself, re-scoring as the workers do: every customer for the
first version, then, for a version that asks for it, the customers its
:class:`~stream_app.model.assignments.AssignmentIndex` says would move. With ``sweeps`` it also
lets time pass as the workers do (:class:`~stream_app.worker.sweep.SweepSchedule` at each model
version, on the event-time watermark), and :meth:`LocalLoop.drain` ends a replay as a
worker ends a backlog: every due sweep, then a refinement and a re-scored version.
``stream-app evaluate --offline`` simulates with it, and ``stream-app bench`` measures our
own code with it (the ``direct`` mode, without sweeps).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from stream_app.config import Settings
from stream_app.core.pipeline import CustomerPipeline, Outcome
from stream_app.model.assignments import AssignmentIndex
from stream_app.model.segmentation import learner_for
from stream_app.worker.options import learner_options, pipeline_options
from stream_app.worker.sweep import SweepSchedule

#: The watermark is not capped by the wall clock here: a simulation may run in any era.
_NO_CAP = 2**62


class LocalLoop:
    """Pipeline, customer table, learner and model versions in this process.

    ``on_outcome(key, outcome)`` sees every outcome: of input messages and of re-scoring.
    """

    def __init__(self, settings: Settings, publish_every: int,
                 on_outcome: Callable[[bytes | None, Outcome], None] | None = None,
                 sweeps: bool = False) -> None:
        self.pipeline = CustomerPipeline(pipeline_options(settings))
        self.learner = learner_for(learner_options(settings))
        self.publish_every = publish_every
        self.on_outcome = on_outcome
        self.store: dict[bytes, bytes] = {}
        self.index = AssignmentIndex()
        self.partition_of: dict[bytes, int] = {}
        self.margin = settings.segment_rejudge_margin  # that of re-scoring (model_update)
        self.processed = self.version = self.rescored = self.swept = 0
        self.schedule = SweepSchedule() if sweeps else None
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
            if self.schedule is not None and out.event_ts:
                self.schedule.observe(partition, out.event_ts, now_ms=_NO_CAP)
            self._keep(key, out, partition)
            self.processed += 1
            if self.processed % self.publish_every == 0:
                self.sweep()
                if self.learner.ready:
                    self.publish()
        return outs

    def sweep(self) -> int:
        """Sweep the customers whose time has come at their partition's watermark (as the
        workers do every ``SWEEP_INTERVAL_S``); returns how many."""
        if self.schedule is None:
            return 0
        swept = 0
        for partition, watermark in list(self.schedule.watermarks.items()):
            for key in self.schedule.pop_due(partition):
                stored = self.store.get(key)
                if stored is not None:
                    self._keep(key, self.pipeline.sweep(key.decode(), stored, watermark),
                               partition)
                    swept += 1
        self.swept += swept
        return swept

    def drain(self) -> None:
        """End of a backlog: every due sweep, then (once the learner is ready) a
        refinement on the whole sample and a version that re-scores every customer it
        would move, so a history replayed in seconds ends as a live run would."""
        self.sweep()
        if not self.learner.ready:
            return
        self.learner.refine()
        self.publish(rescore_all=True)

    def publish(self, rescore_all: bool = False) -> None:
        """A new model version, applied at once; re-score as the workers do (every
        customer for the first version, or with ``rescore_all``)."""
        self.version += 1
        model = self.learner.snapshot(self.version)
        self.pipeline.use_model(model)
        if self.version == 1 or rescore_all:
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
        if out.sweep_at is not None and key is not None and self.schedule is not None:
            self.schedule.schedule_at(partition, key, out.sweep_at)
        if out.vector is not None and key is not None and out.segment is not None:
            assert self.pipeline.model is not None
            self.index.record(key, partition, self.pipeline.model.spec, out.vector,
                              out.segment)
        if out.sample is not None:  # of an event, a sweep or a re-scoring, as the workers
            sample = orjson.loads(out.sample)
            started = time.perf_counter()
            self.learner.learn_one(sample["x"], sample.get("member"))
            self.learning_s += time.perf_counter() - started
        if self.on_outcome is not None:
            self.on_outcome(key, out)
