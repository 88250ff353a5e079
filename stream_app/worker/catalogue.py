"""The segment catalogue: every worker follows it, the learner's worker announces on it.

The ``segment-catalogue`` topic (``SEGMENT_CATALOGUE_TOPIC``, one partition, kept
forever) holds one message per segment whose meaning a model version changed
(:func:`~stream_app.core.catalogue.catalogue_changes`: created, revived, retired, merged,
relabelled, moved; ``schemas/segment-catalogue.schema.json``).

* Every worker reads the topic from the beginning into a
  :class:`~stream_app.core.catalogue.SegmentHistory`: each segment's first version and
  last relabel (``GET /segments``) and the latest messages (the map).
* The worker that holds the samples topic's partition (it runs the single learner)
  announces: for every model version the model feed brings that is newer than the
  newest one announced on the topic, it compares the version with the one before it and
  sends the messages. Messages have deterministic ids (model version, segment, kind), so
  one sent twice, by a worker that crashed after sending or by two workers during a
  rebalance, is dropped by subscribers as a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from faust.types import TP

from stream_app.config import Settings
from stream_app.core.catalogue import SegmentHistory, catalogue_changes
from stream_app.model.segmentation import SegmentModel
from stream_app.worker.model_feed import follow_topic

log = logging.getLogger("stream_app")

#: Model versions kept to compare the next ones with (the newest ones).
KEPT_VERSIONS = 16
#: Seconds between two looks at whether a version waits to be announced.
ANNOUNCE_INTERVAL_S = 1.0


class SegmentCatalogue:
    """The catalogue as this worker knows it, and its announcements (see the module).

    ``sizes`` (set once the views exist) answers the cluster-wide customers per segment
    that announcements carry.
    """

    def __init__(self, *, app: Any, settings: Settings, topic: Any) -> None:
        self.app = app
        self.settings = settings
        self.topic = topic
        self.history = SegmentHistory()
        self.caught_up = asyncio.Event()
        self.models: dict[int, SegmentModel] = {}
        self.announced = 0  # the newest version this worker announced
        self.sizes: Callable[[], Awaitable[dict[int, int]]] | None = None
        self.unreadable = 0

    def on_model(self, model: SegmentModel) -> None:
        """A newer model version arrived on the model feed: keep it for comparison."""
        self.models[model.version] = model
        for old in sorted(self.models)[:-KEPT_VERSIONS]:
            del self.models[old]

    def apply(self, payload: bytes | None) -> None:
        """Fold one message of the topic into :attr:`history`."""
        if payload is None:
            return
        try:
            self.history.add(orjson.loads(payload))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            self.unreadable += 1
            log.error("ignored an unreadable segment catalogue message: %s", exc)

    def announces(self) -> bool:
        """Whether this worker announces: it holds the samples topic (the learner)."""
        assigned = self.app.consumer.assignment()
        return TP(self.settings.samples_topic, 0) in assigned

    async def announce_due(self) -> int:
        """Announce every kept model version newer than the newest announced one; the
        number of messages sent."""
        if not self.caught_up.is_set() or not self.models or not self.announces():
            return 0
        sent = 0
        announced = max(self.announced, self.history.announced_version)
        versions = sorted(self.models)
        for before, version in zip([None, *versions], versions):
            if version <= announced:
                continue
            previous = self.models.get(before) if before is not None else None
            if previous is None and announced:
                # The version before it is gone (a compacted model topic): comparing with
                # nothing would announce every segment as new.
                log.warning("segment catalogue: model version %d not announced (the version "
                            "before it is unknown here)", version)
            else:
                sizes = await self.sizes() if self.sizes is not None else None
                for event in catalogue_changes(previous, self.models[version], sizes,
                                               int(time.time() * 1000)):
                    await self.topic.send(key=event.key, value=event.to_json())
                    sent += 1
            self.announced = announced = version
        return sent

    def register(self, app: Any) -> None:
        """The task that follows the topic and the timer that announces."""
        catalogue, settings = self, self.settings

        @app.task
        async def follow_catalogue() -> None:
            await follow_topic(settings.bootstrap_servers, settings.segment_catalogue_topic,
                               catalogue.apply, catalogue.caught_up)

        @app.timer(interval=ANNOUNCE_INTERVAL_S)
        async def announce_catalogue() -> None:
            await catalogue.announce_due()
