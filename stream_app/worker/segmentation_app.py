"""The worker's Faust app: ``faust.App`` with the attributes the worker's parts share, and
the monitor it keeps.

:func:`stream_app.worker.app.create_app` builds a :class:`SegmentationApp` and sets these
attributes; other parts of the worker (the seek after a rebalance, the bounded stop) use
them. Declared here, typed, rather than set ad hoc on a ``faust.App``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import faust
from faust.sensors import Monitor

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


class InboundMonitor(Monitor):
    """Faust's monitor (its ``Monitor`` setting) without the statistics of each event a
    stream takes in.

    For every event, Faust's own monitor counts it per stream and per task (two weak-key
    look-ups) and returns a record for the event's way out: 2.5 % of the worker's event
    loop, for figures only Faust's stats page shows, which the worker does not serve (its
    own metrics are in :mod:`stream_app.worker.metrics`). What Faust itself reads is kept:
    when each partition's stream last took an event in (its warning about a stream that
    stopped processing), and the counts of messages, commits and offsets.

    >>> monitor = InboundMonitor()
    >>> monitor.on_stream_event_in("tp", 0, stream=None, event=None) is None
    True
    >>> list(monitor.stream_inbound_time), monitor.events_total
    (['tp'], 0)
    """

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        """Note when ``tp``'s stream took an event in; no record for its way out (Faust's
        ``on_stream_event_out`` does nothing without one)."""
        self.stream_inbound_time[tp] = time.monotonic()
