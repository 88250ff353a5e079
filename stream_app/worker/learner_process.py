"""Where the worker's learner runs: a child process of its own (``LEARNER_PROCESS``) or a
thread.

The learner (:class:`~stream_app.model.learner_host.LearnerHost`) is pure Python and NumPy:
River's ``learn_one`` per sample, the k-means refinements and the quality figures of each
snapshot. In a thread of the worker it holds the GIL while the event loop waits to run
(``docs/performance.md``, *Where the time goes now*); in a child process it runs beside
the worker, and the worker only hands it the batch's sample bytes and gets a snapshot's
bytes back. The process starts when the worker is assigned the samples partition (only
that worker learns), exits when the worker stops or is gone, and is started again
if it dies; the learner then resumes from the newest published snapshot
(:class:`LearnerLost`), as a restarted worker's learner does.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from stream_app.model import learner_host
from stream_app.model.learner_host import Learned, LearnerHost
from stream_app.model.options import LearnerOptions

T = TypeVar("T")


class LearnerLost(RuntimeError):
    """The learner process died (killed, out of memory): what it learned since the last
    snapshot is gone; the next batch starts a new process."""


class LearnerStopped(RuntimeError):
    """The worker is stopping: the learner takes no more batches."""


class LearnerProcess:
    """The learner in a child process (``separate=False``: in a thread of the worker).

    Every call waits for the one before it (one process, one task at a time); the caller
    (:class:`~stream_app.worker.model_service.ModelService`) holds its lock around them.
    """

    def __init__(self, options: LearnerOptions, *, separate: bool) -> None:
        self.options = options
        self.separate = separate
        self.closed = False
        self._executor: Executor | None = None
        self._host: LearnerHost | None = None if separate else LearnerHost(options)

    async def learn(self, values: list[bytes], resume_from: bytes | None) -> Learned:
        """:meth:`LearnerHost.learn` off the event loop."""
        if self.closed:
            raise LearnerStopped("the worker is stopping")
        if self._host is not None:
            return await asyncio.to_thread(self._host.learn, values, resume_from)
        return await self._call(learner_host.child_learn, values, resume_from)

    async def snapshot(self, version: int, *, refine_first: bool) -> bytes | None:
        """:meth:`LearnerHost.snapshot` off the event loop."""
        if self.closed:
            raise LearnerStopped("the worker is stopping")
        if self._host is not None:
            return await asyncio.to_thread(self._host.snapshot, version,
                                           refine_first=refine_first)
        return await self._call(learner_host.child_snapshot, version, refine_first)

    def start(self) -> None:
        """Start the learner process now (its imports take a second or two), not with the
        first batch: called when this worker is assigned the samples partition, so that
        the first model of a new learner comes as soon as in a thread."""
        if self.separate and not self.closed:
            self._started().submit(learner_host.child_ready)

    def _started(self) -> Executor:
        if self._executor is None:
            # spawn, not fork: the worker has threads (Faust's consumer, the web server).
            self._executor = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=learner_host.start_child, initargs=(self.options, os.getpid()))
        return self._executor

    async def _call(self, function: Callable[..., T], *args: object) -> T:
        executor = self._started()
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, function, *args)
        except BrokenProcessPool as exc:
            executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            raise LearnerLost(f"the learner process died: {exc}") from exc
        except RuntimeError as exc:  # shut down meanwhile: cannot schedule new futures
            if self.closed:
                raise LearnerStopped("the worker is stopping") from exc
            raise

    def close(self) -> None:
        """Take no more batches; the process exits after the batch it is learning."""
        self.closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
