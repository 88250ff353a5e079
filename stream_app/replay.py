"""``stream-app replay``: send a file of historical events (JSONL) into Kafka.

Each line is sent unchanged (the exact bytes, so the worker validates it as it would live
traffic) with the line's ``customer_id`` as key. The topic is ``--topic``, or chosen per
line by its kind (``order_id``: purchases, ``event_type``: clickstream, otherwise
profiles). A backfill therefore gives the same features as the same events arriving live.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from stream_app.pacing import Pace


def kind_of(doc: object) -> str:
    """``purchase``, ``click`` or ``profile`` for an event document.

    >>> kind_of({"order_id": "o1"}), kind_of({"event_type": "search"}), kind_of({"age": 3})
    ('purchase', 'click', 'profile')
    """
    if isinstance(doc, dict):
        if "order_id" in doc:
            return "purchase"
        if "event_type" in doc:
            return "click"
    return "profile"


def read_lines(path: Path) -> Iterator[tuple[bytes | None, bytes, str]]:
    """``(key, value, kind)`` for every non-blank line of a JSONL file."""
    with path.open("rb") as f:
        for line in f:
            value = line.rstrip(b"\r\n")
            if not value.strip():
                continue
            try:
                doc = orjson.loads(value)
            except orjson.JSONDecodeError:
                doc = None
            customer = doc.get("customer_id") if isinstance(doc, dict) else None
            key = customer.encode() if isinstance(customer, str) else None
            yield key, value, kind_of(doc)


async def replay(path: Path, bootstrap_servers: list[str], topics: dict[str, str],
                 topic: str | None = None, rate: float | None = None,
                 progress: bool = True) -> int:
    """Send every line of ``path``; return the number of messages acknowledged."""
    total = sum(1 for line in path.open("rb") if line.strip())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    bar = Progress(TextColumn("replay {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), disable=not progress)
    pace = Pace(rate)
    try:
        with bar:
            task = bar.add_task(path.name, total=total)
            pending = []
            for key, value, kind in read_lines(path):
                pending.append(await producer.send(topic or topics[kind], value, key=key))
                await pace.sent()
                if len(pending) >= 1000:
                    await asyncio.gather(*pending)
                    bar.update(task, advance=len(pending))
                    pending.clear()
            await asyncio.gather(*pending)
            bar.update(task, advance=len(pending))
    finally:
        await producer.stop()
    return pace.count
