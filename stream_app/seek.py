"""Faust's seek to the committed offsets after a rebalance, without messages slipping past.

After a rebalance Faust resumes the stream partitions and only then seeks them to their
committed offsets (``Recovery._resume_streams``); ``Consumer.perform_seek`` asks the group
coordinator for each partition's offset in turn and records the read offsets at the end.
Messages fetched in between are processed while the seek is under way: some are then
refetched and dropped as already read, and their acknowledgements can be lost, so
``Consumer._new_offset`` sees a gap at the head of the partition's acknowledged offsets
and never commits it again. tests/test_recovery.py saw exactly that (a survivor taking over
a partition: committed offset 1, acknowledged offsets from 5 on, for minutes) in about two
runs of three.

:func:`install` makes the seek happen with the consumer's flow stopped: nothing is
delivered until every partition is at its committed offset and Faust's read offsets say
so; then the flow is resumed (if it was running).
"""

from __future__ import annotations

from typing import Any

_INSTALLED = "_stream_app_quiet_seek"


def install() -> None:
    """Wrap Faust's ``Consumer.perform_seek`` (idempotent)."""
    from faust.transport.consumer import Consumer

    original = Consumer.perform_seek
    if getattr(original, _INSTALLED, False):
        return

    async def perform_seek(self: Any) -> None:
        flowing = self.flow_active
        if flowing:
            self.stop_flow()
        try:
            await original(self)
        finally:
            if flowing and not self.should_stop:
                self.resume_flow()

    setattr(perform_seek, _INSTALLED, True)
    perform_seek.__doc__ = original.__doc__
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]
