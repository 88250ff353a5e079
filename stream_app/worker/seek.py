"""Faust's seek to the committed offsets after a rebalance, without messages slipping past.

After a rebalance Faust resumes the stream partitions and only then seeks them to their
committed offsets (``Recovery._resume_streams``); ``Consumer.perform_seek`` asks the group
coordinator for each partition's offset in turn and records the read offsets at the end.
Two things go wrong in that window, both seen in tests/system/test_recovery.py (a survivor taking
over the partitions of a worker killed with SIGKILL):

* Messages fetched in between are processed while the seek is under way: some are then
  refetched and dropped as already read, and their acknowledgements can be lost, so
  ``Consumer._new_offset`` sees a gap at the head of the partition's acknowledged offsets
  and never commits it again (committed offset 1, acknowledged offsets from 5 on, for
  minutes; about two runs of three).
* Records the fetcher hands over while the flow is stopped are thrown away, and the seek
  is what brings them back: Faust relies on it ("getmany called while flow not active.
  Seek back to committed offsets."). aiokafka's ``seek_to_committed`` seeks only a
  partition with a committed offset above 0, so a partition nobody has committed yet
  stays past the thrown-away records, which are never read (the killed worker owned the
  partition for nine seconds without a commit; the survivor's position went straight to
  the end, 736 of 736, and none of them was processed; 2 to 6 runs of 24 under load).

Installed by :func:`stream_app.worker.patches.install_quiet_seek`,
:func:`perform_seek_stopped` makes the seek happen with the consumer's flow stopped
(nothing is delivered until every partition is at its committed offset and Faust's read
offsets say so; then the flow is resumed if it was running), and
:func:`seek_to_committed_rewinding` seeks each stream partition without a committed offset
whose position went past records never delivered back to the first of them: the
partition's beginning (where ``auto_offset_reset="earliest"`` starts it) when nothing was
delivered since the assignment. Changelog partitions are left to Faust's
recovery, which positions them itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

# The logger keeps its name from before the package split (log filters and docs use it).
log = logging.getLogger("stream_app.seek")

#: How long to wait for a partition's position (only one awaiting its reset waits).
POSITION_WAIT_S = 5.0


async def perform_seek_stopped(consumer: Any, perform_seek: Callable[[], Awaitable[None]]
                               ) -> None:
    """Faust's ``perform_seek`` of ``consumer`` (the original, bound), run with the
    consumer's flow stopped; the flow is resumed afterwards if it was running."""
    flowing = consumer.flow_active
    if flowing:
        consumer.stop_flow()
    try:
        await perform_seek()
    finally:
        if flowing and not consumer.should_stop:
            consumer.resume_flow()


async def seek_to_committed_rewinding(thread: Any,
                                      seek_to_committed: Callable[[], Awaitable[Any]],
                                      read_offset: Callable[[Any], Mapping[Any, int | None]],
                                      worker_consumer: Callable[[Any], Any]) -> Any:
    """The aiokafka driver's ``seek_to_committed`` of consumer ``thread`` (the original,
    bound), then :func:`rewind_dropped` for the stream partitions without a committed
    offset; reports where each partition's reading starts to the app's ``on_seek``
    (:class:`~stream_app.worker.segmentation_app.SegmentationApp`).

    ``read_offset`` (Faust's last offsets handed to the streams, of a consumer) and
    ``worker_consumer`` (the aiokafka consumer of ``thread``) are the accessors of
    :mod:`stream_app.worker.patches`, which installs this function; they are passed in so
    that this module touches no framework internals itself."""
    committed = await seek_to_committed()
    changelogs = thread.app.tables.changelog_topics
    delivered = read_offset(thread.consumer)  # the last offset handed to the streams
    uncommitted = {tp: delivered.get(tp) for tp, offset in committed.items()
                   if (offset is None or offset <= 0) and tp.topic not in changelogs}
    starts = {tp: offset for tp, offset in committed.items()
              if offset is not None and offset > 0 and tp.topic not in changelogs}
    if uncommitted:
        starts.update(await thread.call_thread(rewind_dropped, worker_consumer(thread),
                                               uncommitted))
    report = getattr(thread.app, "on_seek", None)  # None: an app other than the worker's
    if report is not None:
        report(starts)
    return committed


async def rewind_dropped(consumer: Any, delivered: dict[Any, int | None]) -> dict[Any, int]:
    """Seek each partition back to its first record not handed to the streams, where
    the consumer's position went past it (on the consumer's thread); return where each
    partition's reading goes on (those whose position is known).

    ``delivered``: partitions without a committed offset and the last offset delivered
    from each since the assignment (None: nothing; then the first record is the
    partition's beginning, where ``auto_offset_reset="earliest"`` starts it)."""
    from aiokafka.errors import IllegalStateError, KafkaError

    assigned = consumer.assignment()
    partitions = [tp for tp in delivered if tp in assigned]
    starts: dict[Any, int] = {}
    if not partitions:
        return starts
    try:
        beginnings = await consumer.beginning_offsets(partitions)
    except KafkaError as exc:  # as Faust's own seek would have left them
        log.warning("Could not check %d partitions for dropped records: %r",
                    len(partitions), exc)
        return starts
    for tp in partitions:
        last = delivered[tp]
        first = beginnings[tp] if last is None else last + 1
        try:  # waits only while a reset is pending: nothing fetched then
            position = await asyncio.wait_for(consumer.position(tp), POSITION_WAIT_S)
        except (IllegalStateError, TimeoutError):  # (revoked: the next assignment seeks)
            continue
        starts[tp] = min(position, first)
        if position > first:
            log.warning("%s/%d: records %d-%d were fetched while the flow was stopped and "
                        "dropped, and no committed offset brings them back: seeking back to "
                        "%d", tp.topic, tp.partition, first, position - 1, first)
            consumer.seek(tp, first)
    return starts
