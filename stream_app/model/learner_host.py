"""The single learner behind messages: samples topic values in, model snapshots out.

:class:`LearnerHost` keeps one :class:`~stream_app.model.segmentation.SegmentLearner` and
takes what the worker's learner agent reads: the samples topic's values as bytes (a
feature vector, or a ``forget`` of an erased customer), the newest published snapshot
when another worker published one, and the version of the next snapshot. Its arguments
and answers are bytes and plain values, so it runs in a child process as well as in a
thread: the worker runs it in a child process (:mod:`stream_app.worker.learner_process`),
where River's pure-Python updates, the refinements and the quality figures do not hold
the worker's GIL. The functions at the end are what that process runs.

>>> import orjson
>>> from stream_app.model.options import LearnerOptions
>>> options = LearnerOptions(features="orders_90d,app_share_30d", k=2, warmup=4,
...                          halflife=0.02, seed=1, sample=100, refine_every=0,
...                          rescore_share=0.02, clusterer="kmeans", min_share=0.0)
>>> host = LearnerHost(options)
>>> spec = host.spec
>>> samples = [orjson.dumps({"spec": spec, "x": [orders, share], "member": str(i)})
...            for i, (orders, share) in enumerate([(1, 0.0), (2, 0.1), (9, 1.0), (8, 0.9)])]
>>> batch = b"[" + b",".join(samples[2:]) + b"]"  # a worker's batch: one array
>>> learned = host.learn(samples[:2] + [batch, orjson.dumps({"spec": spec}),
...                                     orjson.dumps({"forget": "3"})])
>>> learned.learned, learned.warmed, learned.skipped
(4, True, ["unreadable sample: KeyError('x')"])
>>> host.snapshot(1, refine_first=False)[:12]
b'{"version":1'
>>> host.snapshot(2, refine_first=True) is None  # nothing learned since the last refinement
True
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import NamedTuple

import orjson

from stream_app.model.options import LearnerOptions
from stream_app.model.segmentation import (
    FeatureTransform,
    SegmentLearner,
    SegmentModel,
    learner_for,
)

#: Reasons of skipped samples reported per batch (the rest are counted, not described).
SKIPPED_REASONS = 3


class Learned(NamedTuple):
    """What one batch of samples did."""

    #: Vectors learned (a ``forget``, a sample of other features or an unreadable one is not).
    learned: int
    #: Whether the learner's warm-up ended with this batch (time for the first snapshot).
    warmed: bool
    #: Why samples were skipped (the first :data:`SKIPPED_REASONS`).
    skipped: list[str]


class LearnerHost:
    """One learner, fed with sample messages.

    Parameters
    ----------
    options
        How a new learner is built (:func:`~stream_app.model.segmentation.learner_for`);
        a resumed one takes its features and number of segments from the snapshot.
    """

    def __init__(self, options: LearnerOptions) -> None:
        self.options = options
        #: Feature specification of the configured features: samples and snapshots of
        #: other features are not learned from.
        self.spec = FeatureTransform(options.features).spec
        self.learner: SegmentLearner | None = None

    def learn(self, values: list[bytes], resume_from: bytes | None = None) -> Learned:
        """Learn the samples in ``values`` (each a sample or a JSON array of samples, as
        the workers send a batch's samples), after resuming from snapshot ``resume_from`` (a
        :meth:`SegmentModel.to_json`) if given; a new learner if there is none yet."""
        if resume_from is not None:
            self.learner = learner_for(self.options, SegmentModel.from_json(resume_from))
        elif self.learner is None:
            self.learner = learner_for(self.options)
        learner = self.learner
        warming, learned, skipped = not learner.ready, 0, []
        for value in values:
            try:
                message = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                skipped.append(f"unreadable sample: {exc}")
                continue
            for sample in message if isinstance(message, list) else (message,):
                try:
                    if "forget" in sample:  # erased, or consent withdrawn
                        learner.forget(str(sample["forget"]))
                        continue
                    if sample["spec"] != learner.transform.spec:
                        continue
                    learner.learn_one(sample["x"], sample.get("member"))
                except (KeyError, TypeError, ValueError) as exc:
                    skipped.append(f"unreadable sample: {exc!r}")
                    continue
                learned += 1
        return Learned(learned, warming and learner.ready, skipped[:SKIPPED_REASONS])

    def snapshot(self, version: int, *, refine_first: bool) -> bytes | None:
        """Snapshot ``version`` as JSON, None when there is nothing to publish (no
        learner, the warm-up not over, or ``refine_first`` with nothing learned since the
        last refinement). ``refine_first``: no sample came since the last snapshot (a
        backlog was drained, or traffic paused), so refine once on everything learned
        since the last refinement: a history replayed in seconds ends with the model a
        live run has."""
        learner = self.learner
        if learner is None or not learner.ready:
            return None
        if refine_first:
            if not learner.learned_since_refinement:
                return None
            learner.refine()
        return learner.snapshot(version).to_json()


# -- the child process's side (stream_app/worker/learner_process.py) ----------------------

#: The learner of this process, when it is the worker's learner process.
_host: LearnerHost | None = None


def start_child(options: LearnerOptions, parent: int) -> None:
    """Set up the learner process: its host, the stop signals left to the worker, and an
    exit of its own when the worker is gone (even a killed worker).

    Ctrl-C in a terminal, ``timeout`` and a service manager signal the worker's whole
    process group: the learner ignores SIGINT and SIGTERM, finishes the batch the worker
    gave it, and exits when the worker closes it or within a second of the worker's exit,
    so that a stopping worker does not see its learner die under it."""
    global _host
    _host = LearnerHost(options)
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), name="exit-with-worker",
                     daemon=True).start()


def _exit_with(parent: int, poll_s: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(0)


def child_ready() -> None:
    """Nothing: a first call that makes the learner process start (and import)."""


def child_learn(values: list[bytes], resume_from: bytes | None) -> Learned:
    """:meth:`LearnerHost.learn` in the learner process."""
    assert _host is not None, "start_child sets up the learner process"
    return _host.learn(values, resume_from)


def child_snapshot(version: int, refine_first: bool) -> bytes | None:
    """:meth:`LearnerHost.snapshot` in the learner process."""
    assert _host is not None, "start_child sets up the learner process"
    return _host.snapshot(version, refine_first=refine_first)
