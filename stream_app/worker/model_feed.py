"""Every worker follows the segment-model topic and applies the newest snapshot.

The topic holds JSON snapshots (see ``schemas/segment-model.schema.json``), one message
per version, written by the single learner. Each worker reads it from the beginning with
its own group-less consumer, so all workers apply the same versions in the same order,
and a restarted worker has the latest model as soon as it has caught up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_app.model.segmentation import SegmentModel

# The logger keeps its name from before the package split (log filters and docs use it).
log = logging.getLogger("stream_app.model_feed")


class ModelFeed:
    """Keeps :attr:`latest`, calling ``on_model`` for every newer version."""

    def __init__(self, bootstrap_servers: list[str], topic: str,
                 on_model: Callable[[SegmentModel], None]) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.on_model = on_model
        self.latest: SegmentModel | None = None
        self.caught_up = asyncio.Event()
        self.rejected = 0

    def apply(self, payload: bytes | None) -> bool:
        """Apply one snapshot message; return whether it became the latest model."""
        if payload is None:
            return False
        try:
            model = SegmentModel.from_json(payload)
        except (ValueError, KeyError, TypeError) as exc:
            self.rejected += 1
            log.error("ignored an unreadable segment model snapshot: %s", exc)
            return False
        if self.latest is not None and model.version <= self.latest.version:
            return False
        self.latest = model
        self.on_model(model)
        return True

    async def run(self) -> None:
        """Follow the topic until cancelled."""
        def caught_up() -> None:
            log.info("segment model feed caught up at version %s",
                     self.latest.version if self.latest else 0)

        await follow_topic(self.bootstrap_servers, self.topic, self.apply, self.caught_up,
                           caught_up)


async def follow_topic(bootstrap_servers: list[str], topic: str,
                       apply: Callable[[bytes | None], object], caught_up: asyncio.Event,
                       on_caught_up: Callable[[], None] | None = None) -> None:
    """Read partition 0 of ``topic`` from the beginning until cancelled, with no consumer
    group, calling ``apply`` with every message's value; ``caught_up`` is set (and
    ``on_caught_up`` called) once the messages there at the start are read."""
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None,
        enable_auto_commit=False, auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        if end == 0:
            caught_up.set()
        while True:
            batch = await consumer.getmany(tp, timeout_ms=500)
            for msg in batch.get(tp, ()):
                apply(msg.value)
            if not caught_up.is_set() and await consumer.position(tp) >= end:
                caught_up.set()
                if on_caught_up is not None:
                    on_caught_up()
    finally:
        await consumer.stop()
