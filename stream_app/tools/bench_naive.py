"""The benchmark's ``naive`` baseline: the smallest Faust app that does per-event work.

One agent reads every input topic message by message (``async for value in stream``),
decodes the JSON and increments one entry of a memory table keyed by customer per event
(a message holds one event or a JSON array of them). That is the cost
of Faust itself with one table write per event, with none of stream-app's logic, so
``stream-app bench`` can tell how much of the worker's time is Faust and how much is ours.

Run by the benchmark as a child process::

    python -m stream_app.tools.bench_naive worker --loglevel warn

configured like a worker (``KAFKA_BOOTSTRAP_SERVERS``, ``STREAM_APP_ID``, the input topic
variables, ``TOPIC_PARTITIONS``, ``DATA_DIR``, ``STREAM_APP_EMBEDDED_BROKER``) plus
``BENCH_NAIVE_EXPECTED`` (messages to wait for) and ``BENCH_NAIVE_REPORT`` (a JSON file
rewritten on the first message, every :data:`REPORT_EVERY` messages and when the expected
count is reached:
``count``, ``done``, wall times ``first``/``last`` and process CPU seconds
``cpu_first``/``cpu_last`` of the first and latest processed message).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import faust
import orjson

from stream_app.config import Settings
from stream_app.worker import patches
from stream_app.worker.broker import TANSU_FETCH_MAX_WAIT_MS, faust_broker_options

#: Messages between two progress reports (the benchmark detects a stalled worker by them).
REPORT_EVERY = 5000


class Progress:
    """Counts processed messages and writes the report file (atomically)."""

    def __init__(self, expected: int, path: Path) -> None:
        self.expected = expected
        self.path = path
        self.count = 0
        self.first = self.last = 0.0
        self.cpu_first = self.cpu_last = 0.0

    def tick(self) -> None:
        """Account for one processed message; report when due."""
        self.last, self.cpu_last = time.time(), time.process_time()
        if self.count == 0:
            self.first, self.cpu_first = self.last, self.cpu_last
        self.count += 1
        if self.count in (1, self.expected) or self.count % REPORT_EVERY == 0:
            self.write()

    def write(self) -> None:
        doc = {"count": self.count, "done": self.count >= self.expected,
               "first": self.first, "last": self.last,
               "cpu_first": self.cpu_first, "cpu_last": self.cpu_last}
        partial = self.path.with_suffix(".tmp")
        partial.write_bytes(orjson.dumps(doc))
        partial.replace(self.path)


def create_naive_app(settings: Settings, progress: Progress) -> faust.App:
    """The baseline app: one agent over the input topics, one table write per event."""
    if settings.embedded_broker:  # Tansu's fetch wait, as the worker's app has it
        patches.install_fetch_wait(TANSU_FETCH_MAX_WAIT_MS)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers],
        store="memory://",
        datadir=settings.data_dir,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_disable_leader=True,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        **faust_broker_options(settings.embedded_broker, settings.single_record_batches),
    )
    counts = app.Table(
        "counts", default=int, partitions=settings.topic_partitions,
        schema=faust.Schema(key_type=str, value_type=int,
                            key_serializer="json", value_serializer="json"),
    )

    @app.agent(app.topic(*settings.input_topics))
    async def count(stream: faust.StreamT) -> None:
        async for value in stream:
            doc = orjson.loads(value)
            for event in doc if isinstance(doc, list) else (doc,):  # one event, or an array
                counts[event["customer_id"]] += 1
            progress.tick()

    return app


def main() -> None:
    """Entry point of ``python -m stream_app.tools.bench_naive`` (Faust's command line)."""
    progress = Progress(int(os.environ["BENCH_NAIVE_EXPECTED"]),
                        Path(os.environ["BENCH_NAIVE_REPORT"]))
    create_naive_app(Settings.from_env(), progress).main()


if __name__ == "__main__":
    main()
