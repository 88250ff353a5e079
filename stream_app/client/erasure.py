"""Right to be forgotten: erasure requests on the ``customer-erasure`` topic.

A request is a message keyed by the customer id, like the customer's events, so it reaches
the worker that owns the customer's state (``schemas/customer-erasure.schema.json``). The
worker deletes the customer from every table (a tombstone in each changelog), drops its
vector from the learner's sample and publishes a last segment change with
``segment: null`` and ``trigger: "erasure"``.

>>> orjson.loads(erasure_request("c-1", "r-1", 1767225600000))
{'customer_id': 'c-1', 'request_id': 'r-1', 'ts': 1767225600000}
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaProducer

from stream_app.client.kafka import start_client


def erasure_request(customer_id: str, request_id: str, ts: int) -> bytes:
    """The value of an erasure request message."""
    return orjson.dumps({"customer_id": customer_id, "request_id": request_id, "ts": ts})


@dataclass(frozen=True)
class ErasureSent:
    customer_id: str
    request_id: str
    partition: int
    offset: int


async def request_erasure(bootstrap_servers: list[str], topic: str,
                          customer_ids: list[str]) -> list[ErasureSent]:
    """Send one erasure request per customer and wait until the broker has each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all",
                                request_timeout_ms=15_000)
    await start_client(producer, bootstrap_servers)  # BrokerUnreachable: one clear line
    try:
        sent = []
        for customer_id in customer_ids:
            request_id = f"forget-{uuid.uuid4()}"
            value = erasure_request(customer_id, request_id, int(time.time() * 1000))
            meta = await producer.send_and_wait(topic, value, key=customer_id.encode())
            sent.append(ErasureSent(customer_id, request_id, meta.partition, meta.offset))
        return sent
    finally:
        await producer.stop()
