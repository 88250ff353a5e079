"""Sends to an output topic straight through the app's producer.

Faust's ``Topic.send`` builds a pending message, a future message and a sensor record per
message and goes through the topic's channel before the producer has it: a fifth of the
cost of each send, with the per-event sends of the batched hot path (a change, audience
changes, the batch's samples, dead letters) one of the worker's larger costs
(docs/performance.md). The worker's output topics carry bytes (raw serializers) and need
none of it: :class:`DirectTopic` hands each record to Faust's producer (``ProducerT.send``,
the producer the app's commits flush), partitioned by its key as Faust's own send does.
"""

from __future__ import annotations

import asyncio
from typing import Any


class DirectTopic:
    """``send(key=..., value=...)`` to the topic named ``name`` through ``app.producer``;
    awaiting it hands the record to the producer, awaiting its result waits until the
    broker has it (as with Faust's ``Topic.send``)."""

    def __init__(self, app: Any, name: str) -> None:
        self.app = app
        self.name = name

    async def send(self, *, key: bytes | None = None, value: bytes) -> asyncio.Future[Any]:
        return await self.app.producer.send(self.name, key, value, None, None, None)
