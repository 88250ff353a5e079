"""The model every worker applies, the single learner, and the audience definitions.

:class:`ModelService` follows the model topic on every worker (``on_model``: apply the
newest snapshot, set the model gauges, ask for a re-scoring pass), runs the learner agent
on the one-partition samples topic (so on one worker; learning runs in a worker thread),
publishes snapshots, and applies the audience definitions file (at start and whenever it
changes, without a restart).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import faust

from stream_app.config import Settings
from stream_app.core.audiences import AudienceError, AudienceSet
from stream_app.core.pipeline import CustomerPipeline
from stream_app.model.learner_host import Learned
from stream_app.model.segmentation import FeatureTransform, SegmentModel
from stream_app.worker.learner_process import LearnerLost, LearnerProcess, LearnerStopped
from stream_app.worker.metrics import Metrics
from stream_app.worker.model_feed import ModelFeed
from stream_app.worker.options import learner_options

log = logging.getLogger("stream_app")

#: Samples the learner takes at once (or what arrived within the wait), learned in a thread.
LEARN_BATCH = 256
LEARN_BATCH_WAIT_S = 0.5
QUALITY_GAUGES = ("wcss_ratio", "homogeneity", "separation_min", "separation_mean",
                  "silhouette")


class ModelService:
    """Model feed, learner, snapshots and audience definitions of one worker.

    ``rescore_wanted`` is set when an applied model asks for a re-scoring pass (and for the
    first model this worker applies), ``audiences_wanted`` when reloaded definitions differ
    from the applied ones: the re-judgement passes wait on them. Loading ``AUDIENCES_FILE``
    happens here, in the constructor: an :class:`~stream_app.core.audiences.AudienceError`
    stops the worker before it starts.
    """

    def __init__(self, *, settings: Settings, pipeline: CustomerPipeline, metrics: Metrics,
                 model_topic: Any, rescore_wanted: asyncio.Event,
                 audiences_wanted: asyncio.Event) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.metrics = metrics
        self.model_topic = model_topic
        self.rescore_wanted = rescore_wanted
        self.audiences_wanted = audiences_wanted
        self.rescored_any = False  # whether this worker applied a model yet
        self.feed = ModelFeed(settings.bootstrap_servers, settings.segment_model_topic,
                              self.on_model)
        #: Called with every model applied, after it is (the segment catalogue).
        self.listeners: list[Callable[[SegmentModel], None]] = []
        #: The single learner, in a child process (``LEARNER_PROCESS``) or a thread, so
        #: that River's updates and the NumPy refinements never hold up the event loop
        #: (the ``process`` agent's latency).
        self.learner = LearnerProcess(learner_options(settings),
                                      separate=settings.learner_process)
        #: Features of the samples this worker sends (a snapshot of others is not resumed).
        self.spec = FeatureTransform(settings.segment_features).spec
        self.learning_started = False  # whether this worker learns (owns the samples)
        self.version = 0  # newest model version this worker published or resumed from
        self.unpublished = 0  # samples learned since the last publish
        #: One batch or snapshot at a time: snapshots wait for the batch being learned.
        self.learning = asyncio.Lock()
        self.audiences_stamp: tuple[int, int] | None = None  # (mtime, size) read last
        if settings.audiences_file:  # AudienceError: the worker does not start
            self.audiences_stamp = file_stamp(settings.audiences_file)
            self.apply_audiences(AudienceSet.load(settings.audiences_file))

    def register(self, app: Any, samples_topic: Any) -> None:
        """The feed's task, the learner agent on ``samples_topic``, the publishing timer
        and (with ``AUDIENCES_FILE``) the definitions' reload timer."""
        service, settings = self, self.settings

        @app.task
        async def follow_model() -> None:
            await service.feed.run()

        app.stopped_hooks.append(service.learner.close)

        @app.on_rebalance_complete.connect
        async def start_learner(app: faust.App, **kwargs: Any) -> None:
            """The learner process starts as soon as this worker owns the samples."""
            if any(tp.topic == settings.samples_topic
                   for tp in app.assignor.assigned_actives()):
                service.learner.start()

        @app.agent(samples_topic)
        async def learn(stream: faust.StreamT) -> None:
            """The single learner (the samples topic has one partition, so one worker)."""
            await service.learn(stream)

        @app.timer(interval=settings.model_publish_interval)
        async def publish_model_periodically() -> None:
            await service.publish_model()

        if settings.audiences_file:

            @app.timer(interval=settings.audiences_reload_s)
            async def reload_audiences() -> None:
                await service.reload_audiences()

    # -- the model every worker applies ---------------------------------------------------
    def on_model(self, model: SegmentModel) -> None:
        """Apply ``model`` (the newest snapshot on the model topic)."""
        metrics = self.metrics
        self.pipeline.use_model(model)
        metrics.model_version.set(model.version)
        metrics.model_created.set(model.created_at)
        metrics.model_updates.inc()
        for measure in QUALITY_GAUGES:
            value = model.quality.get(measure)
            if isinstance(value, (int, float)) and math.isfinite(value):
                metrics.quality.labels(measure).set(value)
        if model.rescore or not self.rescored_any:  # and the first model applied here
            self.rescored_any = True
            self.rescore_wanted.set()
            metrics.rescore_waiting.set(1)
        for listener in self.listeners:
            listener(model)

    # -- the audience definitions every worker applies ------------------------------------
    def apply_audiences(self, definitions: AudienceSet) -> None:
        self.pipeline.use_audiences(definitions)
        self.metrics.audiences_defined.set(len(definitions))
        log.info("audience definitions %s applied: %d audiences from %s",
                 definitions.version, len(definitions), definitions.source)

    async def reload_audiences(self) -> None:
        """Apply the definitions file when it changed (without a restart); a file that
        does not load leaves the applied definitions in place."""
        path = self.settings.audiences_file
        stamp = file_stamp(path)
        if stamp == self.audiences_stamp:
            return
        self.audiences_stamp = stamp
        try:
            definitions = AudienceSet.load(path)
        except (AudienceError, OSError) as exc:
            self.metrics.audience_reloads.labels("rejected").inc()
            log.error("audience definitions not reloaded (%s stay applied): %s",
                      self.pipeline.audiences.version, exc)
            return
        self.metrics.audience_reloads.labels("applied").inc()
        if definitions.version != self.pipeline.audiences.version:  # not only touched
            self.apply_audiences(definitions)
            self.audiences_wanted.set()

    # -- the single learner ---------------------------------------------------------------
    def resume_from(self) -> bytes | None:
        """The newest snapshot when another worker (or this worker before a restart, or a
        learner process that died) published one this learner has not learned from: the
        learner resumes from it. Snapshots of other features are not resumed from."""
        latest = self.feed.latest
        if (latest is not None and latest.version > self.version
                and latest.spec == self.spec):
            self.version = latest.version
            return latest.to_json()
        return None

    async def publish_model(self) -> None:
        """Publish a snapshot when anything was learned since the last one (when nothing
        was, a refinement on what was learned since the last one, see
        :meth:`~stream_app.model.learner_host.LearnerHost.snapshot`)."""
        async with self.learning:
            if not self.learning_started:
                return
            latest = self.feed.latest
            version = max(self.version, latest.version if latest else 0) + 1
            try:
                snapshot = await self.learner.snapshot(version,
                                                       refine_first=not self.unpublished)
            except LearnerStopped:
                return
            except LearnerLost as exc:
                self.learner_lost(exc)
                return
            if snapshot is None:
                return
            self.version = version
            self.unpublished = 0
        await self.model_topic.send(value=snapshot)

    def learner_lost(self, exc: LearnerLost) -> None:
        """The learner process died: the next batch resumes from the newest snapshot."""
        log.error("%s; the learner resumes from the newest published model", exc)
        self.metrics.learner_restarts.inc()
        self.version = 0
        self.unpublished = 0

    async def learn_batch(self, values: list[bytes]) -> Learned:
        """Learn ``values`` (in the learner process), once more in a new process if the
        learner process died meanwhile."""
        self.learning_started = True
        try:
            return await self.learner.learn(values, self.resume_from())
        except LearnerLost as exc:
            self.learner_lost(exc)
            return await self.learner.learn(values, self.resume_from())

    async def learn(self, stream: faust.StreamT) -> None:
        """The learner agent's body: batches of samples, learned off the event loop,
        acknowledged once learned (Faust's ``take`` would acknowledge a batch whose
        learning raised)."""
        await self.feed.caught_up.wait()
        async for events in stream.noack_take(LEARN_BATCH, within=LEARN_BATCH_WAIT_S):
            values = [event.value for event in events]
            async with self.learning:
                try:
                    learned = await self.learn_batch(values)
                except LearnerStopped:  # the app has stopped (after its agents' acks)
                    return
                self.unpublished += learned.learned
            for reason in learned.skipped:
                log.warning("learner skipped a sample: %s", reason)
            for event in events:
                await stream.ack(event)
            self.metrics.samples_learned.inc(learned.learned)
            if learned.warmed:  # the warm-up just ended: publish the first model now
                await self.publish_model()


def file_stamp(path: str) -> tuple[int, int] | None:
    """``(mtime in ns, size)`` of a file, None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
