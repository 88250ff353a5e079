"""What a subscription costs: the figures of docs/subscribing.md.

``latency``: follow the live segment changes (e.g. of ``make demo``) with
:func:`stream_app.subscribe` and report the time from each change's ``emitted_at`` (the
worker's clock) to its arrival here (this machine's clock: run it where the worker runs).

``throughput``: write ``--changes`` realistic segment changes to a new topic, then read them
back from the beginning four ways: a plain aiokafka consumer with ``orjson.loads`` (the
floor), and ``subscribe`` without a group, with a group committing every event (the
default), and with a group committing once a second.

    python examples/subscribe_figures.py latency --count 1000
    python examples/subscribe_figures.py throughput --changes 20000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime, timezone

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_app import subscribe
from stream_app.config import Settings
from stream_app.core.changes import SegmentChange

#: Tansu holds a JoinGroup for half the session timeout: a short one joins faster.
GROUP_OPTIONS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def latency(bootstrap: str, topic: str, count: int) -> None:
    delays = []
    async with subscribe(bootstrap, topic=topic) as changes:
        async for change in changes:
            delays.append(datetime.now(timezone.utc) - change.emitted_at)
            if len(delays) == count:
                break
    ms = sorted(d.total_seconds() * 1000 for d in delays)
    print(f"{count} changes, emitted_at → received: p50 {quantile(ms, 0.5):.0f} ms, "
          f"p95 {quantile(ms, 0.95):.0f} ms, p99 {quantile(ms, 0.99):.0f} ms, "
          f"max {ms[-1]:.0f} ms")


def change_message(i: int) -> bytes:
    """A change shaped like the worker's (seven features, three reasons)."""
    features = {"orders_90d": 3, "avg_order_value_90d": 412.5, "discount_share_90d": 0.33,
                "views_7d": 14, "searches_7d": 2, "night_share_30d": 0.1,
                "app_share_30d": 0.8}
    reason = {"feature": "orders_90d", "value": 3, "z": 1.8, "segment_z": 1.5}
    return SegmentChange(f"c-{i % 2000}", i % 16, (i + 1) % 16, "big basket · frequent buyer",
                         7, int(time.time() * 1000), "event", f"e{i}", features,
                         "searcher · web", 0.84, {"reasons": [reason] * 3}).to_json()


async def throughput(bootstrap: str, count: int) -> None:
    topic = f"subscribe-figures-{int(time.time())}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        sent = [await producer.send(topic, change_message(i), key=f"c-{i % 2000}".encode())
                for i in range(count)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        read, started = 0, time.perf_counter()
        while read < count:
            for records in (await consumer.getmany(timeout_ms=1000, max_records=500)).values():
                for record in records:
                    orjson.loads(record.value)
                    read += 1
        rate = count / (time.perf_counter() - started)
        print(f"{'plain aiokafka + orjson.loads':40} {rate:9,.0f} messages/s")
    finally:
        await consumer.stop()
    runs = (("subscribe, no group", {}),
            ("subscribe, group, commit every event", {"group_id": f"{topic}-each"}),
            ("subscribe, group, commit_interval_s=1",
             {"group_id": f"{topic}-1s", "commit_interval_s": 1.0}))
    for label, options in runs:
        read = 0
        async with subscribe(bootstrap, topic=topic, from_beginning=True,
                             consumer_options=GROUP_OPTIONS, **options) as changes:
            async for _ in changes:
                if read == 0:  # from the first event: a group's join is not counted
                    started = time.perf_counter()
                read += 1
                if read == count:
                    break
        print(f"{label:40} {(count - 1) / (time.perf_counter() - started):9,.0f} events/s")


def main() -> None:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["latency", "throughput"])
    parser.add_argument("--bootstrap", default=settings.kafka_bootstrap_servers)
    parser.add_argument("--topic", default=settings.segment_changes_topic,
                        help="latency: the topic followed (default: %(default)s)")
    parser.add_argument("--count", type=int, default=1000, help="latency: changes measured")
    parser.add_argument("--changes", type=int, default=20_000,
                        help="throughput: changes written and read")
    args = parser.parse_args()
    if args.what == "latency":
        asyncio.run(latency(args.bootstrap, args.topic, args.count))
    else:
        asyncio.run(throughput(args.bootstrap, args.changes))


if __name__ == "__main__":
    main()
