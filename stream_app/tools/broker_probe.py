"""``stream-app broker-probe``: what one steady load costs the broker as its log grows.

A soak on the embedded broker (Tansu, memory storage) slows down after a few minutes
while the worker's CPU goes *down*: the worker waits for fetches. This probe takes the
worker out of the picture. On its own broker, a topic is filled step by step (``fill``
records per step in producer batches of ``batch_records``); after each fill, the same
steady load runs for ``seconds``: ``rate`` records a second produced, in one small batch
per partition every :data:`TICK_S` (as a paced producer with a short linger makes them),
read at the tail by a plain consumer (by default with the worker's fetch wait). Each step
reports the broker's CPU from the start of the steady load until the reader has it all,
and the delay from a record's produce time to its arrival at the reader. A broker whose
cost does not depend on what it holds (Apache Kafka finds a fetch offset through an index)
shows the same row at every size.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich import box
from rich.console import Console
from rich.table import Table

from stream_app.tools.bench import proc_cpu_seconds, write_json
from stream_app.worker.broker import TANSU_FETCH_MAX_WAIT_MS, EmbeddedBroker

TOPIC = "broker-probe"
#: Seconds between two sends of the steady load (one batch per partition each).
TICK_S = 0.01
#: Fill batches handed to the producer before their acknowledgements are awaited.
FILL_WINDOW = 64
#: Seconds the consumer may take, after the steady load, to read what it was sent.
DRAIN_S = 30.0


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """One probe: ``steps`` fills of ``fill`` records (batches of ``batch_records``), each
    followed by ``seconds`` of ``rate`` records/s over ``partitions`` partitions."""

    steps: int = 6
    fill: int = 150_000
    batch_records: int = 50
    rate: float = 1_200.0
    seconds: float = 8.0
    partitions: int = 4
    record_bytes: int = 250
    fetch_max_wait_ms: int = TANSU_FETCH_MAX_WAIT_MS
    fetch_min_bytes: int = 1
    out: Path | None = None


@dataclass(frozen=True)
class Step:
    """What one steady load cost, with the log at ``log_records`` / ``log_batches``."""

    log_records: int
    log_batches: int
    produced: int
    consumed: int
    broker_cores: float
    delay_p50_ms: float
    delay_p99_ms: float


class Probe:
    """The topic, its producer and its tail reader on one broker."""

    def __init__(self, cfg: ProbeConfig, bootstrap_servers: str, broker_pid: int) -> None:
        self.cfg = cfg
        self.servers = bootstrap_servers
        self.broker_pid = broker_pid
        self.partitions = [TopicPartition(TOPIC, p) for p in range(cfg.partitions)]
        self.value = b"x" * cfg.record_bytes
        self.log_records = 0
        self.log_batches = 0
        #: Offset after the last acknowledged record, by partition (the embedded broker's
        #: ListOffsets answers the newest batch's first offset + 1).
        self.ends: dict[int, int] = {}
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers, linger_ms=0,
            max_batch_size=max(16384, cfg.batch_records * (cfg.record_bytes + 64)))
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers,
                                         fetch_max_wait_ms=cfg.fetch_max_wait_ms,
                                         fetch_min_bytes=cfg.fetch_min_bytes)

    async def __aenter__(self) -> Probe:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(TOPIC, self.cfg.partitions, 1)])
        finally:
            await admin.close()
        await self.producer.start()
        await self.consumer.start()
        self.consumer.assign(self.partitions)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.producer.stop()

    async def send(self, partition: int, records: int) -> asyncio.Future[Any]:
        """One producer batch of ``records`` records to ``partition``; the log's end there
        is noted when the broker acknowledges it."""
        batch = self.producer.create_batch()
        now_ms = int(time.time() * 1000)
        for _ in range(records):
            if batch.append(key=None, value=self.value, timestamp=now_ms) is None:
                raise RuntimeError(f"{records} records do not fit in one batch")
        batch.close()
        self.log_records += records
        self.log_batches += 1
        sent = await self.producer.send_batch(batch, TOPIC, partition=partition)
        sent.add_done_callback(lambda done: self.note_end(partition, done, records))
        return sent

    def note_end(self, partition: int, sent: asyncio.Future[Any], records: int) -> None:
        if not sent.cancelled() and sent.exception() is None:
            end = sent.result().offset + records
            self.ends[partition] = max(self.ends.get(partition, 0), end)

    async def fill(self) -> None:
        """Add ``fill`` records to the log, spread over the partitions."""
        cfg, pending = self.cfg, []
        batches = -(-cfg.fill // cfg.batch_records)
        for n in range(batches):
            records = min(cfg.batch_records, cfg.fill - n * cfg.batch_records)
            pending.append(await self.send(n % cfg.partitions, records))
            if len(pending) >= FILL_WINDOW:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)

    async def steady(self) -> Step:
        """The steady load at the tail of the log as it is now."""
        cfg, consumer = self.cfg, self.consumer
        for tp in self.partitions:
            consumer.seek(tp, self.ends.get(tp.partition, 0))
        log_records, log_batches = self.log_records, self.log_batches
        delays: list[float] = []
        produced = 0
        cpu_before, started = proc_cpu_seconds(self.broker_pid), time.monotonic()
        reader = asyncio.create_task(self.read(delays))
        per_tick = cfg.rate * TICK_S / cfg.partitions
        owed, pending = 0.0, []
        while (elapsed := time.monotonic() - started) < cfg.seconds:
            owed += per_tick
            whole = int(owed)
            if whole:
                owed -= whole
                for partition in range(cfg.partitions):
                    pending.append(await self.send(partition, whole))
                produced += whole * cfg.partitions
            await asyncio.sleep(max(0.0, (elapsed // TICK_S + 1) * TICK_S
                                    - (time.monotonic() - started)))
        await asyncio.gather(*pending)
        deadline = time.monotonic() + DRAIN_S
        while len(delays) < produced and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        seconds = time.monotonic() - started
        cores = (proc_cpu_seconds(self.broker_pid) - cpu_before) / seconds
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        p50, p99 = np.percentile(delays, [50, 99]) if delays else (float("nan"),) * 2
        return Step(log_records, log_batches, produced, len(delays), round(cores, 3),
                    round(float(p50), 1), round(float(p99), 1))

    async def read(self, delays: list[float]) -> None:
        """Read at the tail, noting each record's delay (ms since it was produced)."""
        while True:
            fetched = await self.consumer.getmany(timeout_ms=200)
            now_ms = time.time() * 1000
            for records in fetched.values():
                delays.extend(now_ms - record.timestamp for record in records)


async def probe(cfg: ProbeConfig, bootstrap_servers: str, broker_pid: int,
                console: Console) -> list[Step]:
    """Every step of ``cfg`` on the broker at ``bootstrap_servers`` (process ``broker_pid``)."""
    steps: list[Step] = []
    async with Probe(cfg, bootstrap_servers, broker_pid) as run:
        for n in range(1, cfg.steps + 1):
            await run.fill()
            step = await run.steady()
            steps.append(step)
            console.print(f"step {n}/{cfg.steps}: log {step.log_records:,} records in "
                          f"{step.log_batches:,} batches, broker {step.broker_cores:.2f} "
                          f"cores, delay p99 {step.delay_p99_ms:,.0f} ms")
    return steps


def print_steps(cfg: ProbeConfig, steps: list[Step], console: Console) -> None:
    """The steps as one table, a row per size of the log."""
    table = Table(title=f"steady load {cfg.rate:,.0f} records/s over {cfg.partitions} "
                        f"partitions for {cfg.seconds:g} s, read at the tail",
                  box=box.SIMPLE)
    for column in ("log records", "log batches", "produced", "consumed", "broker cores",
                   "delay p50 ms", "delay p99 ms"):
        table.add_column(column, justify="right")
    for s in steps:
        table.add_row(f"{s.log_records:,}", f"{s.log_batches:,}", f"{s.produced:,}",
                      f"{s.consumed:,}", f"{s.broker_cores:.2f}",
                      f"{s.delay_p50_ms:,.0f}", f"{s.delay_p99_ms:,.0f}")
    console.print(table)


def run(cfg: ProbeConfig, console: Console | None = None) -> list[Step]:
    """The probe on its own embedded broker; the steps (printed, and written to ``out``)."""
    console = console or Console()
    with EmbeddedBroker() as broker:
        assert broker.process is not None
        console.print(f"broker {broker.bootstrap_servers} (Tansu, memory storage)")
        steps = asyncio.run(probe(cfg, broker.bootstrap_servers, broker.process.pid, console))
    print_steps(cfg, steps, console)
    if cfg.out is not None:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
        write_json(cfg.out, {"config": config, "steps": [asdict(s) for s in steps]})
    return steps
