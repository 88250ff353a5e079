"""``stream-app soak``: does the worker hold a steady load for a long time?

A run starts its own embedded broker and one worker (RocksDB store, as in production),
then:

1. **Maximum rate.** It pre-produces a warm-up workload (:func:`stream_app.tools.bench.history`:
   ``warm_events`` events of ``customers`` customers, event times over the past 60 days)
   and times the worker reading all of it, as ``stream-app bench`` times its ``app`` mode.
   This also gives every customer a state, so the soak phase adds no customers and the
   worker's memory has no reason to grow.
2. **Settle.** It waits until the worker has finished what the replay left (learner
   backlog, sweeps, re-scoring), as the bench's latency phase does.
3. **Soak.** It offers the same customers' events (event time: now, new event ids) at
   ``fraction`` of the measured maximum (or ``--rate``) for ``minutes``, with
   :data:`INVALID_KINDS` messages mixed in at ``invalid_share`` so the dead-letter path
   runs too. Every ``sample_s`` it records the worker's consumer lag, the input backlog
   (acknowledged input − consumed), RSS, CPU, events/s and end-to-end latency
   percentiles (from the worker's latency histogram).
4. **Drain and check.** It waits for the worker to consume everything and reads the
   dead-letter topic, then checks (:func:`checks`):

   * ``lag_bounded``: the lag never exceeded ``max_lag_s`` seconds of offered input;
   * ``rss_flat``: RSS at the end of the load is at most ``1 + rss_tolerance`` times RSS
     half-way through it (:func:`warmup_seconds`: RocksDB's bounded caches fill first);
   * ``nothing_lost``: input messages = processed events + dead letters, and the dead
     letters are exactly the invalid messages sent.

Results (config, every sample, summary, checks) go to ``soak-results.json``; the command
exits 1 if a check fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import platform
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console
from rich.table import Table

from stream_app.config import Settings
from stream_app.tools.bench import (
    BenchConfig,
    BenchError,
    Child,
    WorkerWatch,
    measure,
    measure_app,
    open_reader,
    preproduce,
    proc_cpu_seconds,
    rss_mb,
    start_worker,
    wall_clock_ms,
    write_json,
)
from stream_app.tools.generator import GeneratedEvent, SyntheticShop, produce
from stream_app.worker.topics import prepare_topics

#: Invalid messages the soak mixes in, in turn, and the rejection reason each gets.
INVALID_KINDS = ("invalid_json", "schema_violation", "key_mismatch")
#: Seconds the worker may go without consuming anything while it drains the soak load.
DRAIN_STALL_S = 120.0
#: How long the dead-letter topic may take to show every dead letter after the drain.
DLQ_READ_TIMEOUT_S = 60.0
LATENCY_METRIC = "stream_app_end_to_end_latency_seconds"


@dataclass(frozen=True)
class SoakConfig:
    """What one ``stream-app soak`` run does (the CLI options)."""

    minutes: float = 10.0
    #: Events/s offered (0: ``fraction`` of the maximum measured in the same run).
    rate: float = 0.0
    fraction: float = 0.8
    warm_events: int = 100_000
    customers: int = 20_000
    partitions: int = 4
    k: int = 32
    seed: int = 7
    #: Share of soak messages that are invalid (each one becomes one dead letter).
    invalid_share: float = 0.01
    sample_s: float = 5.0
    #: Bound of the lag, in seconds of offered input.
    max_lag_s: float = 2.0
    #: Bound of the p99 end-to-end latency over the whole load (ms).
    max_p99_ms: float = 1000.0
    #: The last full minute's p99 at most this many times the first settled minute's (the
    #: second; judged on loads of three minutes or more).
    p99_flat_ratio: float = 1.2
    #: Segment changes per offered event at most (the warm-up made the population mature).
    max_changes_per_event: float = 0.05
    #: Allowed RSS growth from the end of the warm-up to the end of the load (fraction).
    rss_tolerance: float = 0.10
    single_record_batches: bool = False
    #: The worker's ROCKSDB_BLOCK_CACHE_MB (None: the setting's default).
    rocksdb_block_cache_mb: int | None = None
    out: Path = Path("soak-results.json")

    def bench(self) -> BenchConfig:
        """The bench run whose pieces the soak uses (the worker on RocksDB, app mode)."""
        return BenchConfig(events=self.warm_events, customers=self.customers,
                           partitions=self.partitions, k=self.k, store="rocksdb",
                           seed=self.seed, modes=("app",), latency_seconds=0.0,
                           single_record_batches=self.single_record_batches, out=self.out)


def warmup_seconds(duration_s: float) -> float:
    """Seconds of load after which RSS counts as warmed up: half the run. RocksDB's block
    caches and memtables (bounded per table partition by ``ROCKSDB_BLOCK_CACHE_MB`` and
    ``ROCKSDB_WRITE_BUFFER_MB``) fill over the first minutes; a first trial judged from
    minute 1 saw them fill (+126 MB, then flat), and with 4 MB caches RSS stayed flat from
    the start (+0.25 MB/min).

    >>> warmup_seconds(600), warmup_seconds(30)
    (300.0, 15.0)
    """
    return duration_s / 2


# -- workload ------------------------------------------------------------------------------

class SoakShop(SyntheticShop):
    """The warm-up workload's customers (same seed: same ids, types and tastes), with their
    own event ids (the worker drops repeated ids) and random draws."""

    def __init__(self, customers: int, seed: int) -> None:
        super().__init__(customers, seed=seed, profiles=False)  # profiles came in the warm-up
        self.rng = random.Random(seed + 1)

    def _event_id(self) -> str:
        return "soak-" + super()._event_id()


class InvalidMixer:
    """Pass events through, replacing every ``1/share``-th by an invalid message (one of
    :data:`INVALID_KINDS` in turn, keyed by the customer it replaces), until ``deadline``
    (monotonic)."""

    def __init__(self, share: float, deadline: float) -> None:
        self.every = round(1 / share) if share > 0 else 0
        self.deadline = deadline
        self.invalid: dict[str, int] = dict.fromkeys(INVALID_KINDS, 0)

    @property
    def invalid_sent(self) -> int:
        return sum(self.invalid.values())

    def mix(self, events: Iterator[GeneratedEvent]) -> Iterator[GeneratedEvent]:
        for i, event in enumerate(events, 1):
            if time.monotonic() >= self.deadline:
                return
            if self.every and i % self.every == 0:
                kind = INVALID_KINDS[(i // self.every) % len(INVALID_KINDS)]
                self.invalid[kind] += 1
                yield self.spoil(event, kind)
            else:
                yield event

    @staticmethod
    def spoil(event: GeneratedEvent, kind: str) -> GeneratedEvent:
        """An invalid message made from ``event`` that the worker rejects as ``kind``.

        >>> e = GeneratedEvent("click", b"c1", b'{"customer_id": "c1"}', "", 0)
        >>> InvalidMixer.spoil(e, "key_mismatch").key
        b'c1-other'
        """
        if kind == "invalid_json":
            value = event.value[: len(event.value) // 2]  # cut off mid-object
        elif kind == "schema_violation":
            doc = orjson.loads(event.value)
            value = orjson.dumps({"event_id": doc["event_id"], "customer_id": doc["customer_id"]})
        else:  # key_mismatch: the event under another customer's key
            return dataclasses.replace(event, key=event.key + b"-other")
        return dataclasses.replace(event, value=value)


# -- worker metrics ------------------------------------------------------------------------

@dataclass
class Reading:
    """One scrape of the worker's ``/metrics``, with its process readings."""

    at: float  # seconds since the soak load started
    sums: dict[str, float]  # every sample name, summed over labels
    invalid_consumed: float  # stream_app_events_consumed_total{type="invalid"}
    latency_buckets: dict[float, float]  # cumulative counts by upper bound
    rss_mb: float
    cpu_s: float
    #: Seconds the worker's main thread (the event loop) waited for a CPU while runnable.
    runqueue_wait_s: float
    #: CPU seconds of the embedded broker (on a small machine it competes with the worker).
    broker_cpu_s: float

    @property
    def consumed(self) -> float:
        return self.sums.get(WorkerWatch.CONSUMED, 0.0)


def read_metrics(url: str, child: Child, at: float, broker_pid: int) -> Reading:
    """Scrape ``url`` (blocking) and read the worker's RSS and CPU, and the broker's CPU."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=5.0) as resp:
        body = resp.read().decode()
    sums: dict[str, float] = {}
    invalid, buckets = 0.0, {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            sums[s.name] = sums.get(s.name, 0.0) + s.value
            if s.name == WorkerWatch.CONSUMED and s.labels.get("type") == "invalid":
                invalid += s.value
            elif s.name == f"{LATENCY_METRIC}_bucket":
                buckets[float(s.labels["le"])] = s.value
    return Reading(at, sums, invalid, buckets, rss_mb(child.pid), proc_cpu_seconds(child.pid),
                   runqueue_wait_s(child.pid), proc_cpu_seconds(broker_pid))


def runqueue_wait_s(pid: int) -> float:
    """Seconds the main thread of ``pid`` has spent runnable but waiting for a CPU
    (``/proc/<pid>/schedstat``; 0 where the kernel keeps no such statistics)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def histogram_quantiles(buckets: dict[float, float], qs: tuple[float, ...]
                        ) -> list[float | None]:
    """Quantiles from cumulative histogram counts, interpolated within a bucket as
    Prometheus' ``histogram_quantile`` does (the last finite bound if in ``+Inf``).

    >>> [round(q, 3) for q in histogram_quantiles({0.1: 50, 0.2: 100, math.inf: 100},
    ...                                           (0.5, 0.75))]
    [0.1, 0.15]
    >>> histogram_quantiles({0.1: 0, math.inf: 0}, (0.5,))
    [None]
    """
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return [None] * len(qs)
    out: list[float | None] = []
    for q in qs:
        rank, lower, below = q * total, 0.0, 0.0
        for bound in bounds:
            count = buckets[bound]
            if count >= rank:
                if math.isinf(bound):
                    out.append(lower)
                else:
                    share = (rank - below) / (count - below) if count > below else 1.0
                    out.append(lower + (bound - lower) * share)
                break
            lower, below = bound, count
    return out


def latency_ms(start: Reading, end: Reading) -> dict[str, float | int | None]:
    """p50/p95/p99 (ms) of the segment changes sent between two readings (event-triggered
    changes: input's Kafka timestamp → change sent), and how many took longer than the
    histogram's top finite bucket (30 s), where a quantile reads as that bound."""
    delta = {b: end.latency_buckets.get(b, 0.0) - start.latency_buckets.get(b, 0.0)
             for b in end.latency_buckets}
    p50, p95, p99 = histogram_quantiles(delta, (0.5, 0.95, 0.99))
    count = int(delta.get(math.inf, 0.0))
    finite = [b for b in delta if not math.isinf(b)]
    beyond = count - int(delta[max(finite)]) if finite else 0

    def ms(value: float | None) -> float | None:
        return None if value is None else round(1000 * value, 1)

    return {"p50_ms": ms(p50), "p95_ms": ms(p95), "p99_ms": ms(p99), "changes": count,
            "changes_over_top_bucket": beyond}  # quantiles among these read as the bucket


# -- the run -------------------------------------------------------------------------------

class Offered:
    """Input messages acknowledged by the broker so far (warm-up + soak)."""

    def __init__(self, warm: int) -> None:
        self.warm = warm
        self.soak = 0

    @property
    def total(self) -> int:
        return self.warm + self.soak


def sample(previous: Reading, now: Reading, offered: Offered) -> dict[str, Any]:
    """One row of ``samples``: the state at ``now`` and rates since ``previous``."""
    seconds = max(now.at - previous.at, 1e-9)
    worker_cores, broker_cores = cores(previous, now)
    return {"t_s": round(now.at, 1),
            "offered": offered.total,
            "consumed": int(now.consumed),
            "backlog": max(0, offered.total - int(now.consumed)),
            "consumer_lag": int(now.sums.get("stream_app_consumer_lag", 0.0)),
            "events_per_s": round((now.consumed - previous.consumed) / seconds, 1),
            "rss_mb": round(now.rss_mb, 1),
            "cpu_cores": worker_cores,
            # share of the interval the event loop was runnable but had no CPU: high means
            # the machine, not the worker, limits the rate
            "cpu_wait_share": round((now.runqueue_wait_s - previous.runqueue_wait_s) / seconds,
                                    3),
            "broker_cpu_cores": broker_cores,
            "load_avg_1m": round(os.getloadavg()[0], 2),
            **latency_ms(previous, now)}


def cores(start: Reading, end: Reading) -> tuple[float, float]:
    """Cores the worker and the embedded broker used between two readings. Side by side
    (per sample, per minute, over the load) they say which of the two limits a soak that
    falls behind: a worker waiting for fetches uses less CPU while the broker's rises
    (docs/embedded-broker.md)."""
    seconds = max(end.at - start.at, 1e-9)
    return (round((end.cpu_s - start.cpu_s) / seconds, 3),
            round((end.broker_cpu_s - start.broker_cpu_s) / seconds, 3))


async def soak_all(cfg: SoakConfig, settings: Settings, workdir: Path,
                   console: Console, broker_pid: int) -> dict[str, Any]:
    """Warm-up (maximum rate), settle, soak, drain, checks: the results document."""
    bench_cfg = cfg.bench()
    started = time.monotonic()

    def phase(text: str) -> None:
        console.print(f"{time.monotonic() - started:6.1f} s  {text}")

    if cfg.rocksdb_block_cache_mb is not None:
        settings = dataclasses.replace(settings,
                                       rocksdb_block_cache_mb=cfg.rocksdb_block_cache_mb)
    await prepare_topics(settings)
    warm = await preproduce(bench_cfg, settings, console)
    phase(f"produced {warm} warm-up messages; measuring the maximum rate (worker, RocksDB)")
    child, url = start_worker(settings, workdir)
    try:
        watch = WorkerWatch(child, url)
        broker_cpu = proc_cpu_seconds(broker_pid)
        app = await measure_app(watch, warm, warm)  # one event per message
        app.extra["broker_cpu_seconds"] = round(proc_cpu_seconds(broker_pid) - broker_cpu, 2)
        max_rate = app.events_per_s
        rate = cfg.rate or cfg.fraction * max_rate
        phase(f"maximum {max_rate:,.0f} events/s; waiting for the worker to settle")
        settled_in = await watch.settle()
        phase(f"offering {rate:,.0f} events/s for {cfg.minutes:g} min "
              f"({cfg.invalid_share:.1%} invalid)")
        soak = await offer(cfg, settings, child, url, rate, Offered(warm), console,
                           broker_pid)
    finally:
        child.stop()
    return results_document(cfg, settings, warm, app.to_dict(), rate, settled_in, soak)


async def offer(cfg: SoakConfig, settings: Settings, child: Child, url: str, rate: float,
                offered: Offered, console: Console, broker_pid: int) -> dict[str, Any]:
    """The soak phase: paced load with samples, then the drain and the dead-letter count."""
    duration = 60 * cfg.minutes
    mixer = InvalidMixer(cfg.invalid_share, time.monotonic() + duration)
    events = mixer.mix(SoakShop(cfg.customers, cfg.seed).events(None, wall_clock_ms))
    t0 = time.monotonic()

    def acked(n: int) -> None:
        offered.soak = n

    async def scrape() -> Reading:
        return await asyncio.to_thread(read_metrics, url, child, time.monotonic() - t0,
                                       broker_pid)

    dlq_before = await count_messages(settings, settings.dlq_topic, 0, quiet_s=1.0)
    first = last = await scrape()
    samples: list[dict[str, Any]] = []
    producer = asyncio.create_task(produce(settings.bootstrap_servers, settings.kind_topics,
                                           events, rate, on_sent=acked))
    next_minute = 60.0
    minute_start, minutes = first, []
    while not producer.done():
        await asyncio.wait({producer}, timeout=cfg.sample_s)
        child.check()
        now = await scrape()
        samples.append(sample(last, now, offered))
        last = now
        if now.at >= next_minute or producer.done():
            next_minute += 60.0
            s = samples[-1]
            minute = {"minute": len(minutes) + 1, "t_s": round(now.at, 1),
                      "seconds": round(now.at - minute_start.at, 1),
                      **latency_ms(minute_start, now)}
            minute["worker_cpu_cores"], minute["broker_cpu_cores"] = cores(minute_start, now)
            minutes.append(minute)
            minute_start = now
            console.print(f"  {now.at / 60:4.1f} min  sent {offered.soak:>9,}  "
                          f"{s['events_per_s']:>7,.0f} ev/s  backlog {s['backlog']:>6,}  "
                          f"lag {s['consumer_lag']:>6,}  RSS {s['rss_mb']:6.0f} MB  "
                          f"CPU worker {minute['worker_cpu_cores']:.2f} "
                          f"broker {minute['broker_cpu_cores']:.2f}  "
                          f"p99 of the minute {minute['p99_ms'] if minute['changes'] else '-'}"
                          " ms")
    sent = await producer  # every message acknowledged
    offered.soak = sent
    end_of_load = last
    produced_in = last.at
    drain_started = time.monotonic()
    drained = True
    try:
        await WorkerWatch(child, url).until("the worker to drain the soak load",
                                            WorkerWatch.CONSUMED, offered.total,
                                            stall=DRAIN_STALL_S)
    except BenchError:
        drained = False
    drain_s = time.monotonic() - drain_started
    dlq = await count_messages(settings, settings.dlq_topic, dlq_before + mixer.invalid_sent,
                               quiet_s=2.0) - dlq_before
    final = await scrape()
    return {"sent": sent, "invalid_sent": mixer.invalid_sent,
            "invalid_by_kind": mixer.invalid, "seconds": round(produced_in, 1),
            "achieved_rate": round(sent / produced_in, 1) if produced_in else 0.0,
            "drained": drained, "drain_s": round(drain_s, 1), "dlq_messages": dlq,
            "first": first, "end_of_load": end_of_load, "final": final, "samples": samples,
            "minutes": minutes}


async def count_messages(settings: Settings, topic: str, expect: int, quiet_s: float) -> int:
    """Messages on ``topic`` (read from the beginning): once ``expect`` have been read
    (or :data:`DLQ_READ_TIMEOUT_S` passed), nothing new for ``quiet_s``."""
    consumer = await open_reader(settings, (topic,))
    seen, deadline = 0, time.monotonic() + DLQ_READ_TIMEOUT_S
    quiet_since = time.monotonic()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            got = sum(len(records) for records in batch.values())
            seen += got
            now = time.monotonic()
            if got:
                quiet_since = now
            elif (seen >= expect or now > deadline) and now - quiet_since >= quiet_s:
                return seen
    finally:
        await consumer.stop()


def results_document(cfg: SoakConfig, settings: Settings, warm: int, app: dict[str, Any],
                     rate: float, settled_in: float | None, soak: dict[str, Any]
                     ) -> dict[str, Any]:
    """The JSON written to ``--out``: config, phases, samples, summary and checks."""
    samples: list[dict[str, Any]] = soak["samples"]
    first, end, final = soak["first"], soak["end_of_load"], soak["final"]
    warm_s = warmup_seconds(60 * cfg.minutes)
    after_warmup = [s for s in samples if s["t_s"] >= warm_s] or samples[-1:]
    lag_messages = max((max(s["backlog"], s["consumer_lag"]) for s in samples), default=0)
    rss_warm, rss_end = after_warmup[0]["rss_mb"], end.rss_mb
    slope = (float(np.polyfit([s["t_s"] / 60 for s in after_warmup],
                              [s["rss_mb"] for s in after_warmup], 1)[0])
             if len(after_warmup) >= 2 else 0.0)
    input_total = warm + soak["sent"]
    processed = int(final.consumed - final.invalid_consumed)
    counts = {"input": input_total, "warm_up_input": warm, "soak_input": soak["sent"],
              "consumed": int(final.consumed), "processed": processed,
              "invalid_consumed": int(final.invalid_consumed),
              "dlq_topic": soak["dlq_messages"],
              "dlq_metric": int(final.sums.get("stream_app_dlq_messages_total", 0.0)),
              "invalid_sent": soak["invalid_sent"],
              "invalid_by_kind": soak["invalid_by_kind"]}
    worker_cores, broker_cores = cores(first, end)
    summary = {
        "max_rate": app["events_per_s"], "offered_rate": round(rate, 1),
        "achieved_rate": soak["achieved_rate"], "soak_seconds": soak["seconds"],
        "settled_in_s": settled_in,
        "max_lag_messages": lag_messages,
        "max_lag_seconds": round(lag_messages / rate, 2) if rate else None,
        "max_consumer_lag": max((s["consumer_lag"] for s in samples), default=0),
        "max_backlog": max((s["backlog"] for s in samples), default=0),
        "lag_at_end_of_load": samples[-1]["backlog"] if samples else 0,
        "drained": soak["drained"], "drain_s": soak["drain_s"],
        "rss_start_mb": round(first.rss_mb, 1), "rss_after_warmup_mb": rss_warm,
        "rss_end_mb": round(rss_end, 1), "rss_after_drain_mb": round(final.rss_mb, 1),
        "rss_max_mb": max((s["rss_mb"] for s in samples), default=0.0),
        "rss_slope_mb_per_min": round(slope, 2), "warmup_s": warm_s,
        # What RocksDB may hold at most: the customers table's partitions × (cache + 2
        # memtables).
        "rocksdb_bound_mb": cfg.partitions * (settings.rocksdb_block_cache_mb
                                              + 2 * settings.rocksdb_write_buffer_mb),
        "worker_cpu_cores": worker_cores,
        "worker_cpu_us_per_event": round(1e6 * (end.cpu_s - first.cpu_s)
                                         / max(end.consumed - first.consumed, 1), 1),
        "worker_cpu_wait_share": round((end.runqueue_wait_s - first.runqueue_wait_s)
                                       / max(end.at - first.at, 1e-9), 3),
        "broker_cpu_cores": broker_cores,
        "latency": latency_ms(first, end),
        "counts": counts,
        "segment_changes": int(end.sums.get("stream_app_segment_changes_total", 0.0)
                               - first.sums.get("stream_app_segment_changes_total", 0.0)),
        "model_version": int(final.sums.get("stream_app_model_version", 0.0)),
    }
    summary["minutes"] = soak["minutes"]
    summary["changes_per_event"] = round(summary["segment_changes"] / max(soak["sent"], 1), 4)
    checks = {
        "p99_bounded": {"passed": (summary["latency"]["p99_ms"] is not None
                                   and summary["latency"]["p99_ms"] <= cfg.max_p99_ms),
                        "value_ms": summary["latency"]["p99_ms"], "bound_ms": cfg.max_p99_ms},
        "p99_flat": p99_flat(soak["minutes"], cfg.p99_flat_ratio),
        "changes_per_event": {
            "passed": summary["changes_per_event"] <= cfg.max_changes_per_event,
            "value": summary["changes_per_event"], "bound": cfg.max_changes_per_event},
        "lag_bounded": {"passed": bool(rate) and lag_messages <= cfg.max_lag_s * rate,
                        "value_s": summary["max_lag_seconds"], "bound_s": cfg.max_lag_s},
        "rss_flat": {"passed": rss_end <= rss_warm * (1 + cfg.rss_tolerance),
                     "growth": round(rss_end / rss_warm - 1, 4) if rss_warm else None,
                     "tolerance": cfg.rss_tolerance},
        "nothing_lost": {"passed": soak["drained"]
                         and input_total == processed + soak["dlq_messages"]
                         and soak["dlq_messages"] == soak["invalid_sent"],
                         "input": input_total, "processed_plus_dlq":
                             processed + soak["dlq_messages"]},
    }
    return {
        "config": {**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                      if f.name != "out"},
                   "store": "rocksdb", "python": platform.python_version(),
                   "rocksdb_memory_mb": {"block_cache": settings.rocksdb_block_cache_mb,
                                         "write_buffer": settings.rocksdb_write_buffer_mb},
                   "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "max_rate_phase": app,
        "summary": summary,
        "checks": checks,
        # A check that could not be judged (None) does not fail the run.
        "passed": all(c["passed"] is not False for c in checks.values()),
        "samples": samples,
    }


def p99_flat(minutes: list[dict[str, Any]], ratio: float) -> dict[str, Any]:
    """Whether the p99 latency stays flat: the last full minute's p99 at most ``ratio``
    times the first settled minute's (the second: the first includes the start of the
    load). ``passed`` is None for loads shorter than three full minutes.

    >>> rows = [{"seconds": 60, "p99_ms": p} for p in (300.0, 100.0, 110.0, 118.0)]
    >>> p99_flat(rows, 1.2)["passed"], p99_flat(rows[:3] + [{"seconds": 60, "p99_ms": 150}],
    ...                                         1.2)["passed"]
    (True, False)
    >>> p99_flat(rows[:2], 1.2)["passed"] is None
    True

    A p99 beyond the latency histogram's top bucket reads as that bucket's bound (more than
    1 % of the minute's changes over it): only a lower bound, so an overloaded worker's
    minutes, all at the bound, are not judged flat (``passed`` None), and a last minute
    there fails only if the bound itself is too far above the settled minute's p99.

    >>> over = [{"seconds": 60, "p99_ms": 30000.0, "changes": 100,
    ...          "changes_over_top_bucket": 5}] * 3
    >>> p99_flat(over, 1.2)["passed"] is None
    True
    >>> p99_flat(rows[:3] + over[:1], 1.2)["passed"]
    False
    """
    full = [m for m in minutes if m["seconds"] >= 59.0 and m.get("p99_ms") is not None]
    if len(full) < 3:
        return {"passed": None, "ratio": ratio, "why": "fewer than three full minutes"}
    settled, last = full[1]["p99_ms"], full[-1]["p99_ms"]
    verdict = {"first_settled_ms": settled, "last_ms": last, "ratio": ratio}
    if _beyond_top_bucket(full[1]) or (_beyond_top_bucket(full[-1])
                                       and last <= ratio * settled):
        return {"passed": None, **verdict, "why": "p99 beyond the histogram's top bucket"}
    return {"passed": last <= ratio * settled, **verdict}


def _beyond_top_bucket(minute: dict[str, Any]) -> bool:
    """Whether more than 1 % of a minute's changes took longer than the histogram's top
    finite bucket (its p99 then reads as that bound)."""
    return minute.get("changes_over_top_bucket", 0) > 0.01 * minute.get("changes", 0)


def print_results(doc: dict[str, Any], console: Console) -> None:
    """A short table of the summary and the checks."""
    s, c, checks = doc["summary"], doc["summary"]["counts"], doc["checks"]
    lat = s["latency"]
    table = Table(title=f"stream-app soak: {doc['config']['minutes']:g} min, "
                        f"{doc['config']['customers']:,} customers, RocksDB",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_column("check")

    def verdict(name: str) -> str:
        passed = checks[name]["passed"]
        return ("not judged" if passed is None else "[green]ok[/]" if passed
                else "[red]FAILED[/]")

    rows = [
        ("maximum rate (warm-up replay)", f"{s['max_rate']:,.0f} events/s", ""),
        ("offered / achieved", f"{s['offered_rate']:,.0f} / {s['achieved_rate']:,.0f} events/s",
         ""),
        ("max lag (backlog, gauge)", f"{s['max_backlog']:,} / {s['max_consumer_lag']:,} msgs = "
                                     f"{s['max_lag_seconds']} s", verdict("lag_bounded")),
        ("RSS start / warm / end / drained",
         f"{s['rss_start_mb']:.0f} / {s['rss_after_warmup_mb']:.0f} / {s['rss_end_mb']:.0f} / "
         f"{s['rss_after_drain_mb']:.0f} MB", verdict("rss_flat")),
        ("RSS slope after warm-up", f"{s['rss_slope_mb_per_min']:+.2f} MB/min", ""),
        ("input = processed + DLQ", f"{c['input']:,} = {c['processed']:,} + {c['dlq_topic']:,}",
         verdict("nothing_lost")),
        ("invalid sent / DLQ metric", f"{c['invalid_sent']:,} / {c['dlq_metric']:,}", ""),
        ("latency p50 / p95 / p99", f"{lat['p50_ms']} / {lat['p95_ms']} / {lat['p99_ms']} ms "
                                    f"({lat['changes']:,} changes, "
                                    f"{lat['changes_over_top_bucket']:,} over 30 s)",
         verdict("p99_bounded")),
        ("p99 per minute", " ".join(str(m["p99_ms"]) for m in s["minutes"]) + " ms",
         verdict("p99_flat")),
        ("segment changes per event", f"{s['changes_per_event']}",
         verdict("changes_per_event")),
        ("worker CPU", f"{s['worker_cpu_cores']:.2f} cores, "
                       f"{s['worker_cpu_us_per_event']:.0f} µs/event", ""),
        ("worker waiting for a CPU", f"{s['worker_cpu_wait_share']:.0%} of the time", ""),
        ("embedded broker's CPU", f"{s['broker_cpu_cores']:.2f} cores", ""),
        ("CPU per minute, worker / broker",
         " ".join(f"{m['worker_cpu_cores']:.2f}/{m['broker_cpu_cores']:.2f}"
                  for m in s["minutes"]) + " cores", ""),
        ("drained in", f"{s['drain_s']} s", ""),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print("[bold green]all checks passed[/]" if doc["passed"]
                  else "[bold red]a check failed[/]")


def run(cfg: SoakConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the soak on its own broker, write and print the results."""
    console = console or Console()

    async def body(bench_cfg: BenchConfig, settings: Settings, workdir: Path,
                   console: Console, broker_pid: int) -> dict[str, Any]:
        return await soak_all(cfg, settings, workdir, console, broker_pid)

    doc = measure(cfg.bench(), console, body)
    write_json(cfg.out, doc)
    print_results(doc, console)
    console.print(f"whole run {doc['wall_seconds']} s; results in {cfg.out}")
    return doc

