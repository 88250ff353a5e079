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
    apply_sync,
    effects_of,
)
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
        self.sink = LocalSink(self)

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
        """The effects of ``out``, in the worker's order (stream_app/core/effects.py)."""
        apply_sync(effects_of(out, key, partition), self.sink)
        if self.on_outcome is not None:
            self.on_outcome(key, out)


class LocalSink:
    """The local loop's :class:`~stream_app.core.effects.SyncSink`: the dict of states,
    the assignment index, the sweep schedule and the learner (fed each sample at once);
    changes, dead letters, counters and sizes are left to ``on_outcome``."""

    def __init__(self, loop: LocalLoop) -> None:
        self.loop = loop

    def put_state(self, effect: PutState) -> None:
        if effect.key is not None:
            self.loop.store[effect.key] = effect.state
            if effect.forget:
                self._forget(effect.key, effect.partition)

    def delete_state(self, effect: DeleteState) -> None:
        if effect.key is not None:
            self.loop.store.pop(effect.key, None)
            self._forget(effect.key, effect.partition)

    def _forget(self, key: bytes, partition: int) -> None:
        """As the worker does for an erased or excluded customer: out of the index and
        the schedule."""
        self.loop.index.forget(key)
        if self.loop.schedule is not None:
            self.loop.schedule.forget(partition, key)

    def index_vector(self, effect: IndexVector) -> None:
        if effect.key is not None:
            model = self.loop.pipeline.model
            assert model is not None
            self.loop.index.record(effect.key, effect.partition, model.spec, effect.vector,
                                   effect.segment)

    def schedule_sweep(self, effect: ScheduleSweep) -> None:
        if effect.key is not None and self.loop.schedule is not None:
            self.loop.schedule.schedule_at(effect.partition, effect.key, effect.at)

    def send_sample(self, effect: SendSample) -> None:
        """Learned at once (of an event, a sweep or a re-scoring, as the workers)."""
        loop = self.loop
        sample = orjson.loads(effect.sample)
        started = time.perf_counter()
        if "forget" in sample:  # erased, or consent withdrawn: as the worker's learner
            loop.learner.forget(str(sample["forget"]))
        else:
            loop.learner.learn_one(sample["x"], sample.get("member"))
        loop.learning_s += time.perf_counter() - started

    def dead_letter(self, effect: DeadLetter) -> None:
        pass

    def count(self, effect: Counted) -> None:
        pass

    def send_change(self, effect: SendChange) -> None:
        pass

    def send_audience_changes(self, effect: SendAudienceChanges) -> None:
        pass

    def move_segment(self, effect: MoveSegment) -> None:
        pass

    def move_audiences(self, effect: MoveAudiences) -> None:
        pass
