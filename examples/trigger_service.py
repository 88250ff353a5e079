"""Example trigger service: a customer entered a high-intent segment → enqueue a push.

It follows ``segment-changes`` with :func:`stream_app.subscribe` as a member of a consumer
group, and for every customer who *enters* the group of high-intent segments (a first
assignment into one of them, or a move from a segment outside them; a move between two
high-intent segments is no new intent) it sends one push notification request to a Kafka
topic (``push-notifications``), where a push sender would pick it up.

Which segments are high intent: the ``--segment`` options, or else the running worker's
``GET /segments/{id}``: those whose centre lies at least ``--min-z`` population standard
deviations above the average customer on a purchase or cart feature (:data:`INTENT_FEATURES`;
the same z-scores that make labels such as "frequent buyer" or "fills carts"). The choice
is made again when a change names a newer model version than the one it was made with.

Idempotent by ``event_id``: each change that enqueued a notification is remembered in a
SQLite file (``--state``), so a change delivered again (a restart, a rebalance, a worker
that re-sent it, a replay from the beginning under a new group) never enqueues twice. The
record is written after the broker acknowledged the notification, and the change's offset
is committed after that (the subscription commits a change once the loop asks for the
next one). A crash between the acknowledgement and the SQLite commit (a millisecond) would
send that one notification again on restart, with the same ``notification_id`` (the
change's ``event_id``), which is what the push sender drops duplicates by.

Run it next to ``make demo`` (broker on 127.0.0.1:9092, worker API on 6066)::

    python examples/trigger_service.py --url http://127.0.0.1:6066

Its log says which segments it chose and every notification it enqueued; ``--help`` lists
the options. It stores no customer id (only change ids), and logs none. One instance per
state file: instances sharing a group on several machines would need a shared store (a
database table with the same primary key), since a rebalance hands a partition's
unfinished change to another member.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from stream_app import SegmentChangeEvent, subscribe
from stream_app.config import Settings
from stream_app.core.changes import iso_ms

log = logging.getLogger("trigger_service")

#: Centre features that measure buying intent (those the model clusters on count).
INTENT_FEATURES = ("orders_90d", "orders_30d", "add_to_cart_7d", "revenue_90d")


class ProcessedChanges:
    """The ids of the changes that enqueued a notification, in a SQLite file."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None)  # autocommit
        self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.execute("CREATE TABLE IF NOT EXISTS processed_changes ("
                                "event_id TEXT PRIMARY KEY, enqueued_at TEXT NOT NULL)")

    def seen(self, event_id: str) -> bool:
        row = self.connection.execute("SELECT 1 FROM processed_changes WHERE event_id = ?",
                                      (event_id,)).fetchone()
        return row is not None

    def remember(self, event_id: str) -> None:
        self.connection.execute("INSERT OR IGNORE INTO processed_changes VALUES (?, ?)",
                                (event_id, iso_ms(time.time() * 1000)))

    def close(self) -> None:
        self.connection.close()


@dataclass(frozen=True)
class HighIntent:
    """The chosen segments, and the model version they were chosen with (None: given)."""

    segments: frozenset[int]
    model_version: int | None


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return orjson.loads(response.read())


def high_intent_segments(url: str, min_z: float) -> HighIntent:
    """Segments whose centre is at least ``min_z`` above the population on an
    :data:`INTENT_FEATURES` feature, from a worker's ``GET /segments/{id}``."""
    overview = http_json(f"{url}/segments")
    chosen = set()
    for segment in overview["segments"]:
        detail = http_json(f"{url}/segments/{segment['id']}")
        if any(d["feature"] in INTENT_FEATURES and d["z"] >= min_z
               for d in detail["distinguishing"]):
            chosen.add(segment["id"])
    return HighIntent(frozenset(chosen), overview["model_version"])


def notification(change: SegmentChangeEvent) -> bytes:
    """The push request for a customer who entered a high-intent segment."""
    return orjson.dumps({
        "notification_id": change.event_id,  # the same for every copy of the change
        "customer_id": change.customer_id,
        "template": "high-intent-nudge",
        "segment": change.segment,
        "segment_label": change.segment_label,
        "cause_event_id": change.event_id,
        "cause_ts": iso_ms(change.ts.timestamp() * 1000),
        "created_at": iso_ms(time.time() * 1000),
    })


def describe(intent: HighIntent) -> str:
    where = ("given" if intent.model_version is None
             else f"model v{intent.model_version}")
    return f"high-intent segments ({where}): {sorted(intent.segments) or 'none'}"


async def run(args: argparse.Namespace) -> None:
    """Follow the changes and enqueue notifications until stopped."""
    def choose() -> HighIntent:
        if args.segment:
            return HighIntent(frozenset(args.segment), None)
        return high_intent_segments(args.url, args.min_z)

    intent = await asyncio.to_thread(choose)
    log.info(describe(intent))
    store = ProcessedChanges(args.state)
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    await producer.start()
    enqueued = duplicates = 0
    try:
        async with subscribe(args.bootstrap, topic=args.topic, group_id=args.group_id,
                             from_beginning=args.from_beginning) as changes:
            async for change in changes:
                if (intent.model_version is not None
                        and change.model_version > intent.model_version):
                    intent = await choose_again(choose, intent, change.model_version)
                if not change.moved_into(intent.segments):
                    continue
                if store.seen(change.event_id):
                    duplicates += 1
                    log.info("change %s: already enqueued, skipped", change.event_id)
                    continue
                await producer.send_and_wait(args.push_topic, notification(change),
                                             key=change.customer_id.encode())
                store.remember(change.event_id)
                enqueued += 1
                log.info("change %s: entered segment %s, push notification enqueued",
                         change.event_id, change.segment)
    finally:
        await producer.stop()
        store.close()
        log.info("stopped: %d notifications enqueued, %d duplicate changes skipped",
                 enqueued, duplicates)


async def choose_again(choose: Callable[[], HighIntent], intent: HighIntent,
                       version: int) -> HighIntent:
    """The segments chosen with a newer model; the old choice if the worker cannot say
    (marked with ``version``, so it is not asked again before the next model)."""
    try:
        chosen = await asyncio.to_thread(choose)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("could not choose the segments again (%s); keeping %s", exc,
                    sorted(intent.segments))
        return HighIntent(intent.segments, version)
    if chosen.segments != intent.segments:
        log.info(describe(chosen))
    return chosen


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(
        description="Enqueue a push notification when a customer enters a high-intent "
                    "segment (idempotent by the change's event_id).")
    parser.add_argument("--bootstrap", default=settings.kafka_bootstrap_servers,
                        help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS, "
                             "%(default)s)")
    parser.add_argument("--topic", default=settings.segment_changes_topic,
                        help="segment changes topic (default: %(default)s)")
    parser.add_argument("--push-topic", default="push-notifications",
                        help="where notification requests go (default: %(default)s)")
    parser.add_argument("--group-id", default="trigger-service-high-intent",
                        help="consumer group: a restart resumes where it stopped "
                             "(default: %(default)s)")
    parser.add_argument("--state", type=Path, default=Path("trigger-service.sqlite3"),
                        help="SQLite file of the changes already handled "
                             "(default: %(default)s)")
    parser.add_argument("--segment", type=int, action="append", metavar="ID",
                        help="a high-intent segment (repeatable); default: chosen from the "
                             "worker's API")
    parser.add_argument("--url", default=f"http://127.0.0.1:{settings.web_port}",
                        help="a worker's HTTP API, to choose the segments (default: "
                             "%(default)s)")
    parser.add_argument("--min-z", type=float, default=1.5,
                        help="z-score of a centre on a purchase or cart feature that makes "
                             "a segment high intent (default: %(default)s)")
    parser.add_argument("--from-beginning", action="store_true",
                        help="a new group starts at the oldest change instead of the end")
    return parser.parse_args(None if argv is None else list(argv))


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # its INFO: every rebalance step

    async def until_stopped() -> None:
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        await run(args)

    try:
        asyncio.run(until_stopped())
    except asyncio.CancelledError:
        return 0
    except (OSError, ValueError) as exc:  # broker or worker unreachable, bad answer
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
