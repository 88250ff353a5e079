"""The worker's Faust app: ``faust.App`` with the attributes the worker's parts share.

:func:`stream_app.worker.app.create_app` builds a :class:`SegmentationApp` and sets these
attributes; other parts of the worker (the seek after a rebalance, the bounded stop) use
them. Declared here, typed, rather than set ad hoc on a ``faust.App``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import faust

if TYPE_CHECKING:
    from stream_app.worker.model_feed import ModelFeed


class SegmentationApp(faust.App):
    """A ``faust.App`` with the worker's declared attributes and stop hooks."""

    #: Called with where each input partition's reading starts (``{TP: offset}``) after
    #: every seek to the committed offsets (stream_app/worker/seek.py); None: not reported.
    on_seek: Callable[[dict[Any, int]], None] | None = None
    #: The task that follows the segment model topic and applies each new model.
    model_feed: ModelFeed | None = None
    #: Awaited when the app starts to stop, after :attr:`stopping_hooks` and before Faust's
    #: final commit: the processor writes its cached states and acknowledges what they
    #: cover (stream_app/worker/processing.py), so a clean stop replays nothing.
    final_flush: Callable[[], Awaitable[None]] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Called, in order, when the app starts to stop, before Faust's own stop (the
        #: bounded stop of stream_app/worker/connectivity.py arms its timer here).
        self.stopping_hooks: list[Callable[[], None]] = []
        #: Called, in order, after Faust's own stop, when every message given to an agent
        #: was acknowledged (the learner process is closed here, after the learner agent
        #: learned and acknowledged what it had taken).
        self.stopped_hooks: list[Callable[[], None]] = []

    async def on_stop(self) -> None:
        """Run :attr:`stopping_hooks` and :attr:`final_flush`, then Faust's stop (the
        agents' messages acknowledged, final commit, producer flush), then
        :attr:`stopped_hooks`."""
        for hook in self.stopping_hooks:
            hook()
        if self.final_flush is not None:
            await self.final_flush()
        await super().on_stop()
        for hook in self.stopped_hooks:
            hook()
