"""Subscribing to changes on a real broker and a real worker: ``stream_app.client.subscribe``,
``stream-app watch`` and the example trigger service (``examples/trigger_service.py``).

One worker is fed generated shop traffic until its segment changes settle; the tests read
its topics with the subscription API, the command line and the example service. A worker
may still publish a change later (a re-scoring pass, a sweep), so the tests that count
exactly read a frozen copy of what it had published (keys and order per customer kept), or
a copy they extend with malformed, stale or duplicate messages.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from stream_app import (
    AudienceChangeEvent,
    BrokerUnreachable,
    SegmentChangeEvent,
    Subscription,
    subscribe,
    subscribe_audiences,
)
from stream_app.core.audiences import AudienceChange
from stream_app.core.changes import SegmentChange
from stream_app.tools.generator import SyntheticShop
from stream_app.worker.broker import EmbeddedBroker, free_port
from tests.conftest import Worker, consume_all, metric_sum, produce, wait_for

ROOT = Path(__file__).resolve().parents[2]
CUSTOMERS = 150
EVENTS = 4000
FIRST_PART = 1000  # events produced before the first model (its warm-up: 20 × K samples)
STEP_MS = 600_000  # 10 minutes of event time per event: about 28 days of history
AUDIENCES = """\
audiences:
  - name: buyers
    condition: orders_total >= 1
  - name: browsers
    condition: views_7d >= 5
"""
#: Tansu holds a JoinGroup for half the session timeout (docs/embedded-broker.md).
GROUP_OPTIONS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
_names = itertools.count()


@dataclass
class Published:
    """What the worker published, read back with a plain consumer."""

    worker: Worker
    bootstrap: str
    changes: list[Any]  # ConsumerRecords of the segment-changes topic
    audiences: list[Any]  # ConsumerRecords of the audience-changes topic
    frozen_changes: str  # a topic holding ``changes``, and nothing else, ever
    frozen_audiences: str  # the same for ``audiences``


@pytest.fixture(scope="module")
def published(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Published]:
    tmp = tmp_path_factory.mktemp("subscribe")
    definitions = tmp / "audiences.yaml"
    definitions.write_text(AUDIENCES)
    prefix = f"sub{os.getpid()}"
    topics = {"click": f"{prefix}-clickstream", "purchase": f"{prefix}-purchases",
              "profile": f"{prefix}-profiles", "changes": f"{prefix}-segment-changes",
              "dlq": f"{prefix}-dlq", "erasure": f"{prefix}-customer-erasure",
              "audiences": f"{prefix}-audience-changes"}
    worker = Worker(broker, tmp / "worker", topics, f"{prefix}-app", SEGMENTS_K=6,
                    AUDIENCES_FILE=definitions, RESCORE_MIN_INTERVAL_S=2)
    try:
        worker.start()
        now = int(time.time() * 1000)
        shop = SyntheticShop(CUSTOMERS, seed=3, start_ms=now - EVENTS * STEP_MS,
                             step_ms=STEP_MS)
        events = [(topics[e.kind], e.key, e.value) for e in shop.events(EVENTS)]
        # A first part, then the rest once the first model is applied: the customers'
        # later events then move them (trigger "event"), whatever the worker's speed (a
        # fast worker read all of it before the first model, and every placement came
        # from the model's re-scoring pass).
        produce(broker.bootstrap_servers, events[:FIRST_PART])
        wait_for(lambda: metric_sum(worker.metrics(), "stream_app_model_version") >= 1, 120,
                 "the first model")
        produce(broker.bootstrap_servers, events[FIRST_PART:])
        wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
                 == EVENTS, 180, "every input event to be consumed")
        previous = [-1.0]

        def settled() -> tuple[int, int] | None:  # both counts stop moving
            m = worker.metrics()
            counts = (metric_sum(m, "stream_app_segment_changes_total"),
                      metric_sum(m, "stream_app_audience_changes_total"))
            same, previous[0] = sum(counts) == previous[0], sum(counts)
            return (int(counts[0]), int(counts[1])) if same and counts[0] else None

        changes, audiences = wait_for(settled, 180, "segment changes to settle", interval=3.0)
        snapshot = Published(worker, broker.bootstrap_servers,
                             consume_all(broker.bootstrap_servers, topics["changes"], changes),
                             consume_all(broker.bootstrap_servers, topics["audiences"],
                                         audiences),
                             new_topic("frozen-changes"), new_topic("frozen-audiences"))
        send(broker.bootstrap_servers, snapshot.frozen_changes, records_of(snapshot.changes))
        send(broker.bootstrap_servers, snapshot.frozen_audiences,
             records_of(snapshot.audiences))
        yield snapshot
    finally:
        worker.stop()


# -- helpers ---------------------------------------------------------------------------

def new_topic(what: str) -> str:
    return f"sub{os.getpid()}-{what}-{next(_names)}"


def send(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]],
         timestamp_ms: int | None = None) -> None:
    """Send (key, value) records in order (keyed ones to their key's partition)."""
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(topic, value, key=key, timestamp_ms=timestamp_ms)
                       for key, value in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def records_of(messages: list[Any]) -> list[tuple[bytes | None, bytes | None]]:
    return [(m.key, m.value) for m in messages]


async def collect(subscription: Subscription[Any], count: int, timeout: float = 60.0
                  ) -> list[Any]:
    """The first ``count`` events of ``subscription`` (closed afterwards)."""
    out: list[Any] = []

    async def run() -> None:
        async with subscription:
            async for event in subscription:
                out.append(event)
                if len(out) == count:
                    return

    try:
        await asyncio.wait_for(run(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"only {len(out)} of {count} events within {timeout} s"
                             ) from None
    return out


def by_customer(events: list[Any]) -> dict[str, list[Any]]:
    """Events per customer, in order (a customer's changes share a partition)."""
    out: dict[str, list[Any]] = collections.defaultdict(list)
    for event in events:
        out[event.customer_id].append(event)
    return dict(out)


def end_offsets_total(bootstrap: str, topic: str) -> int:
    """Records on a topic whose batches hold one record each (Tansu's end offsets are
    right only then; the example service sends one notification at a time)."""
    async def run() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                await consumer.topics()
                partitions = consumer.partitions_for_topic(topic) or set()
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
            return sum(ends.values())
        finally:
            await consumer.stop()

    return asyncio.run(run())


def audience_messages() -> list[tuple[bytes, bytes]]:
    """Contract-conforming audience changes, made by the worker's own message class."""
    rows = [("c-1", "vip", "enter", "event", 2, "big basket"),
            ("c-2", "vip", "enter", "profile", 3, "deal seeker"),
            ("c-1", "lapsed", "enter", "inactivity", 2, "big basket"),
            ("c-3", "vip", "exit", "definitions", None, None),
            ("c-2", "vip", "exit", "consent", None, None),
            ("c-4", "lapsed", "enter", "model_update", 3, "deal seeker"),
            ("c-1", "vip", "exit", "erasure", None, None),
            ("c-5", "vip", "enter", "event", 2, "big basket")]
    now = int(time.time() * 1000)
    return [(customer.encode(),
             AudienceChange(customer, audience, action, now - 60_000 * i, trigger, f"e-{i}",
                            "3f2a9c1d0b7e", segment, label).to_json())
            for i, (customer, audience, action, trigger, segment, label) in enumerate(rows)]


# -- the subscription API --------------------------------------------------------------

def test_subscribe_from_the_beginning_yields_the_published_changes_typed(published):
    expected = [SegmentChangeEvent.from_json(m.value) for m in published.changes]
    wanted = collections.Counter(m.value for m in published.changes)

    async def until_all_seen() -> list[Any]:  # the worker's own topic, which may grow
        events: list[Any] = []
        async with subscribe(published.bootstrap, topic=published.worker.topics["changes"],
                             from_beginning=True) as changes:
            async for event in changes:
                events.append(event)
                if not wanted - collections.Counter(e.raw_json for e in events):
                    return events
        raise AssertionError("the subscription ended")

    events = asyncio.run(asyncio.wait_for(until_all_seen(), 60))
    assert by_customer([e for e in events if e.raw_json in wanted]) == by_customer(expected)
    # The worker may publish more after the snapshot (a later model version re-scores):
    # per customer those come after the snapshot's changes, never before or between them.
    seen, snapshot = by_customer(events), by_customer(expected)
    for customer, changes in seen.items():
        before = snapshot.get(customer, [])
        assert changes[:len(before)] == before
        later = changes[len(before):]
        assert all(e.raw_json not in wanted for e in later)
        if before and later:
            assert min(e.emitted_at for e in later) >= before[-1].emitted_at
    for event, message in zip(expected, published.changes):
        document = orjson.loads(message.value)
        assert event.customer_id == message.key.decode() == document["customer_id"]
        assert event.ts.utcoffset() is not None and event.emitted_at >= event.ts
        assert dict(event.features) == document["features"]
        assert [r.feature for r in event.reasons] == [
            r["feature"] for r in document.get("reasons", [])]
    assert {e.trigger for e in events} >= {"event"}
    with pytest.raises(TypeError):  # immutable, features included
        events[0].features["orders_90d"] = 1  # type: ignore[index]


def test_filters_keep_only_matching_changes(published):
    expected = [SegmentChangeEvent.from_json(m.value) for m in published.changes]
    segment = collections.Counter(e.segment for e in expected).most_common(1)[0][0]
    into_or_out = [e for e in expected if segment in (e.segment, e.previous_segment)]
    assert 0 < len(into_or_out) < len(expected)
    triggers = collections.Counter(e.trigger for e in expected)
    trigger = min(triggers, key=lambda t: triggers[t])  # the rarest one
    both = [e for e in into_or_out if e.trigger == trigger]

    async def run() -> tuple[list[Any], list[Any], list[Any]]:
        kept = await collect(subscribe(published.bootstrap, topic=published.frozen_changes,
                                       segments=[segment], from_beginning=True),
                             len(into_or_out))
        by_trigger = await collect(subscribe(published.bootstrap,
                                             topic=published.frozen_changes,
                                             triggers=[trigger], from_beginning=True),
                                   triggers[trigger])
        combined = (await collect(subscribe(published.bootstrap,
                                            topic=published.frozen_changes,
                                            segments=[segment], triggers=[trigger],
                                            from_beginning=True), len(both))
                    if both else [])
        return kept, by_trigger, combined

    kept, by_trigger, combined = asyncio.run(run())
    assert by_customer(kept) == by_customer(into_or_out)
    assert by_customer(by_trigger) == by_customer([e for e in expected if e.trigger == trigger])
    assert by_customer(combined) == by_customer(both)

    # A filter that matches none of them yields none of them: on a copy of the topic with
    # one matching change after them all, that change comes first.
    topic = new_topic("nothing-matches")
    sentinel = SegmentChange("c-sentinel", 3, 999, "nowhere", 1, int(time.time() * 1000),
                             "event", "e-sentinel", {"orders_90d": 1.0}).to_json()
    send(published.bootstrap, topic, [*records_of(published.changes),
                                      (b"c-sentinel", sentinel)])
    subscription = subscribe(published.bootstrap, topic=topic, segments=[999],
                             from_beginning=True)
    first = asyncio.run(collect(subscription, 1))
    assert [e.raw_json for e in first] == [sentinel] and subscription.malformed == 0

    with pytest.raises(ValueError, match="unknown triggers"):
        subscribe(published.bootstrap, topic=topic, triggers=["definitions"])


def test_malformed_messages_are_skipped_and_the_rest_arrives(published, caplog):
    good = published.changes
    customer = good[0].key
    malformed: list[bytes | None] = [
        b"not json", b"[]", b'{"event_id": "x"}', None, b"\xff\xfe",
        orjson.dumps({**orjson.loads(good[0].value), "ts": "yesterday"}),
        orjson.dumps({**orjson.loads(good[0].value), "segment": "three"}),
    ]
    topic = new_topic("malformed")
    # The bad messages share the first customer's partition, between its changes.
    send(published.bootstrap, topic, [*records_of(good[:1]),
                                      *[(customer, value) for value in malformed],
                                      *records_of(good[1:])])
    subscription = subscribe(published.bootstrap, topic=topic, from_beginning=True)
    with caplog.at_level(logging.WARNING, logger="stream_app.subscribe"):
        events = asyncio.run(collect(subscription, len(good)))
    assert collections.Counter(e.raw_json for e in events) == collections.Counter(
        m.value for m in good)
    assert subscription.malformed == len(malformed)
    warnings = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == len(malformed)
    assert any("invalid JSON" in w for w in warnings)
    assert any("segment must be integer or null" in w for w in warnings)
    assert any("no value" in w for w in warnings)


def test_from_the_end_yields_only_changes_published_after_the_start(published):
    topic = new_topic("from-end")
    hour_ago = int(time.time() * 1000) - 3_600_000
    # Old changes in multi-record batches: the embedded broker reports the end of such a
    # partition as the start of its newest batch, which must not be replayed.
    send(published.bootstrap, topic, records_of(published.changes), timestamp_ms=hour_ago)
    probes = [SegmentChange(f"c-probe-{i}", None, 1, "probe", 1, int(time.time() * 1000),
                            "event", f"probe-{i}", {}).to_json() for i in range(200)]

    async def run() -> list[Any]:
        received: list[Any] = []

        async def follow() -> None:
            async for event in subscribe(published.bootstrap, topic=topic):
                received.append(event)

        task = asyncio.create_task(follow())
        producer = AIOKafkaProducer(bootstrap_servers=published.bootstrap)
        await producer.start()
        try:  # new changes, one at a time, until the subscription shows it has started
            sent = 0
            while not received:
                assert sent < len(probes), "the subscription never received a new change"
                await producer.send_and_wait(topic, probes[sent], key=b"c-probe")
                sent += 1
                for _ in range(25):  # up to 0.5 s for it to arrive
                    if received:
                        break
                    await asyncio.sleep(0.02)
            for probe in probes[sent:sent + 5]:  # and a few more after that
                await producer.send_and_wait(topic, probe, key=b"c-probe")
            sent += 5
            await asyncio.wait_for(_until(lambda: received[-1].raw_json == probes[sent - 1]),
                                   30)
        finally:
            await producer.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return received

    received = asyncio.run(run())
    raw = [e.raw_json for e in received]
    first = probes.index(raw[0])
    assert raw == probes[first:first + len(raw)], "only new changes, in order, none lost"


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.02)


def test_a_group_resumes_after_the_last_finished_event(published):
    """break, an exception, commit(): what is committed decides where the group goes on."""
    all_messages = collections.Counter(m.value for m in published.changes)
    total = len(published.changes)

    def open_group(group: str) -> Subscription[SegmentChangeEvent]:
        return subscribe(published.bootstrap, topic=published.frozen_changes, group_id=group,
                         from_beginning=True, consumer_options=GROUP_OPTIONS)

    async def first_run(group: str, n: int, how: str) -> list[bytes]:
        seen: list[bytes] = []
        if how == "break":  # no aclose: leaving the loop must stop the consumer
            async for change in open_group(group):
                seen.append(change.raw_json)
                if len(seen) == n:
                    break
        elif how == "exception":
            with pytest.raises(RuntimeError):
                async for change in open_group(group):
                    seen.append(change.raw_json)
                    if len(seen) == n:
                        raise RuntimeError("the handler failed")
        else:  # commit the n-th explicitly, then leave
            async with open_group(group) as changes:
                async for change in changes:
                    seen.append(change.raw_json)
                    if len(seen) == n:
                        await changes.commit()
                        break
        return seen

    async def scenario(how: str) -> None:
        group = f"g-{how}-{next(_names)}"
        n = 7
        first = await first_run(group, n, how)
        finished = first if how == "commit" else first[:-1]
        rest = await collect(open_group(group), total - len(finished), timeout=90)
        # Nothing lost, and only the unfinished one again.
        assert collections.Counter(finished) + collections.Counter(
            e.raw_json for e in rest) == all_messages, how
        if how != "commit":
            assert first[-1] in {e.raw_json for e in rest}

    async def all_scenarios() -> None:
        for how in ("break", "exception", "commit"):
            await scenario(how)

    asyncio.run(all_scenarios())


def test_subscribe_audiences_parses_the_contract_and_filters(published):
    # The worker's own audience changes (from the definitions given to it) parse.
    assert published.audiences, "the worker published no audience changes"
    expected = [AudienceChangeEvent.from_json(m.value) for m in published.audiences]
    events = asyncio.run(collect(subscribe_audiences(
        published.bootstrap, topic=published.frozen_audiences, from_beginning=True),
        len(expected)))
    assert by_customer(events) == by_customer(expected)
    assert {e.audience for e in events} <= {"buyers", "browsers"}

    # Filters, on a topic filled with contract-conforming messages.
    topic = new_topic("audiences")
    messages = audience_messages()
    send(published.bootstrap, topic, messages)
    parsed = [AudienceChangeEvent.from_json(v) for _, v in messages]

    def check(expect: list[AudienceChangeEvent], **filters: Any) -> None:
        got = asyncio.run(collect(subscribe_audiences(published.bootstrap, topic=topic,
                                                      from_beginning=True, **filters),
                                  len(expect)))
        assert by_customer(got) == by_customer(expect), filters

    check(parsed)
    check([e for e in parsed if e.audience == "lapsed"], audiences=["lapsed"])
    check([e for e in parsed if e.action == "exit"], actions=["exit"])
    check([e for e in parsed if e.segment == 2], segments=[2])
    check([e for e in parsed if e.trigger in ("definitions", "consent")],
          triggers=["definitions", "consent"])
    check([e for e in parsed if e.audience == "vip" and e.action == "enter"],
          audiences=["vip"], actions=["enter"])
    with pytest.raises(ValueError, match="unknown actions"):
        subscribe_audiences(published.bootstrap, topic=topic, actions=["join"])


def test_an_unreachable_broker_raises_within_the_timeout():
    async def first(servers: str, timeout: float) -> None:
        async for _ in subscribe(servers, topic="segment-changes", connect_timeout_s=timeout):
            break

    started = time.monotonic()
    with pytest.raises(BrokerUnreachable, match="connection refused"):
        asyncio.run(first(f"127.0.0.1:{free_port()}", 5))
    assert time.monotonic() - started < 5
    with SilentListener() as port:
        started = time.monotonic()
        with pytest.raises(BrokerUnreachable, match="no answer within 2 s"):
            asyncio.run(first(f"127.0.0.1:{port}", 2))
        assert time.monotonic() - started < 6


class SilentListener:
    """A TCP port that accepts connections and never answers (a broker that hangs)."""

    def __enter__(self) -> int:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.connections: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return int(self.server.getsockname()[1])

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                self.connections.append(self.server.accept()[0])
            except OSError:
                continue

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()
        for connection in self.connections:
            connection.close()
        self.server.close()


# -- stream-app watch ------------------------------------------------------------------

def watch(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream_app.tools.cli", "watch", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


LINE = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})  (\S+)  (new|\d+(?: "[^"]*")?) → '
                  r'(none|\d+(?: "[^"]*")?)  \[(\w+)\]')


def test_watch_prints_readable_lines_that_match_the_filters(published):
    expected = [SegmentChangeEvent.from_json(m.value) for m in published.changes]
    segment = collections.Counter(e.segment for e in expected).most_common(1)[0][0]
    matching = [e for e in expected if segment in (e.segment, e.previous_segment)
                and e.trigger == "event"]
    count = min(10, len(matching))
    assert count > 0
    result = watch("--bootstrap", published.bootstrap,
                   "--segment-changes-topic", published.frozen_changes,
                   "--from-beginning", "--segment", str(segment), "--trigger", "event",
                   "--count", str(count))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == count
    summaries = {e.summary() for e in matching}
    for line in lines:
        match = LINE.match(line)
        assert match, line
        assert match.group(5) == "event"
        assert str(segment) in (match.group(3).split()[0], match.group(4).split()[0]), line
        assert line in summaries


def test_watch_json_prints_the_messages_as_published(published):
    result = watch("--bootstrap", published.bootstrap,
                   "--segment-changes-topic", published.frozen_changes,
                   "--from-beginning", "--json", "--count", str(len(published.changes)))
    assert result.returncode == 0, result.stderr
    assert collections.Counter(result.stdout.encode().splitlines()) == collections.Counter(
        m.value for m in published.changes)


def test_watch_audiences_with_filters(published):
    topic = new_topic("watch-audiences")
    messages = audience_messages()
    send(published.bootstrap, topic, messages)
    entering_vip = [AudienceChangeEvent.from_json(v) for _, v in messages]
    entering_vip = [e for e in entering_vip if e.audience == "vip" and e.action == "enter"]
    result = watch("--bootstrap", published.bootstrap, "--audience-changes-topic", topic,
                   "--audiences", "--audience", "vip", "--action", "enter",
                   "--from-beginning", "--count", str(len(entering_vip)))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(e.summary() for e in entering_vip)
    assert all("  enter vip  [" in line for line in result.stdout.splitlines())

    misuse = watch("--bootstrap", published.bootstrap, "--audience", "vip")
    assert misuse.returncode == 2 and "--audiences" in misuse.stderr


def test_watch_stops_on_ctrl_c_with_status_0(published):
    process = subprocess.Popen(
        [sys.executable, "-m", "stream_app.tools.cli", "watch", "--bootstrap", published.bootstrap,
         "--segment-changes-topic", published.frozen_changes, "--from-beginning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # it is following the topic
        assert LINE.match(first), first
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


STUBBORN = """
import asyncio
from stream_app.tools.cli import stop_on_signals

async def main() -> None:
    stop_on_signals(asyncio.current_task(), {grace}, "stubborn")
    print("ready", flush=True)
    swallowed = 0
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:  # a client library that swallows the cancellation
            swallowed += 1
            if swallowed >= {honour_after}:
                raise
            print("swallowed", flush=True)

try:
    asyncio.run(main())
except asyncio.CancelledError:  # as stream-app watch ends on a signal
    pass
"""


@pytest.mark.parametrize("signals, honour_after, gives_up", [
    (1, 99, True),   # never stops by itself: exits after the grace, with its stack
    (2, 2, False),   # a second Ctrl-C cancels again: stops cleanly
])
def test_a_stop_signal_ends_the_process_even_when_a_cancellation_is_swallowed(
        signals, honour_after, gives_up):
    grace = 1.5
    process = subprocess.Popen(
        [sys.executable, "-c", STUBBORN.format(grace=grace, honour_after=honour_after)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        for _ in range(signals - 1):  # the next Ctrl-C once the last was swallowed
            assert process.stdout.readline() == "swallowed\n"
            process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    if gives_up:
        assert "stubborn: did not stop within 1.5 s of the signal" in stderr
        assert "in main" in stderr  # where it was stuck
        assert took >= grace
    else:
        assert "did not stop" not in stderr and took < grace


def test_watch_reports_an_unreachable_broker():
    started = time.monotonic()
    refused = watch("--bootstrap", f"127.0.0.1:{free_port()}")
    assert refused.returncode == 1
    assert "cannot reach Kafka" in refused.stderr and "connection refused" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert time.monotonic() - started < 10
    with SilentListener() as port:
        started = time.monotonic()
        hanging = watch("--bootstrap", f"127.0.0.1:{port}")
        took = time.monotonic() - started
    assert hanging.returncode == 1 and "no answer within 10 s" in hanging.stderr
    assert took < 20, took


# -- the example trigger service -------------------------------------------------------

class TriggerService:
    """``examples/trigger_service.py`` as a child process, its log in a file."""

    def __init__(self, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "trigger_service.py"), *args],
            stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def skipped(self) -> collections.Counter[str]:
        """How often each change was skipped as already enqueued."""
        return collections.Counter(re.findall(r"change (\S+): already enqueued, skipped",
                                              self.log()))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def high_intent(worker: Worker, min_z: float = 0.5) -> set[int]:
    """The rule of the example, computed here from the same API."""
    _, overview = worker.get("/segments")
    chosen = set()
    for segment in overview["segments"]:
        _, detail = worker.get(f"/segments/{segment['id']}")
        if any(d["feature"] in ("orders_90d", "orders_30d", "add_to_cart_7d", "revenue_90d")
               and d["z"] >= min_z for d in detail["distinguishing"]):
            chosen.add(segment["id"])
    return chosen


def notifications(bootstrap: str, topic: str, count: int) -> list[dict[str, Any]]:
    return [orjson.loads(m.value) for m in consume_all(bootstrap, topic, count)]


def test_example_trigger_service_enqueues_once_per_entering_change(published, tmp_path):
    segments = high_intent(published.worker)
    assert segments, "no segment of high purchase intensity to test with"
    changes = [SegmentChangeEvent.from_json(m.value) for m in published.changes]
    entering = {e.event_id: e for e in changes if e.moved_into(segments)}
    assert entering
    topic, push_topic = new_topic("service-changes"), new_topic("push")
    send(published.bootstrap, topic, records_of(published.changes))
    state = tmp_path / "processed.sqlite3"
    common = ["--bootstrap", published.bootstrap, "--topic", topic, "--push-topic", push_topic,
              "--state", str(state), "--url", published.worker.url, "--min-z", "0.5",
              "--from-beginning"]

    service = TriggerService(tmp_path / "run1.log", *common, "--group-id", "push-1")
    try:
        wait_for(lambda: end_offsets_total(published.bootstrap, push_topic) >= len(entering),
                 120, f"{len(entering)} notifications")
        chosen = re.search(r"high-intent segments \(model v\d+\): \[([\d, ]*)\]", service.log())
        assert chosen and {int(s) for s in chosen.group(1).split(",")} == segments
        pushed = notifications(published.bootstrap, push_topic, len(entering))
        assert sorted(n["notification_id"] for n in pushed) == sorted(entering)
        for n in pushed:
            change = entering[n["notification_id"]]
            assert (n["customer_id"], n["segment"]) == (change.customer_id, change.segment)

        # Redelivery: copies of entering changes (as a worker re-sends them) enqueue nothing.
        copies = [m for m in published.changes
                  if SegmentChangeEvent.from_json(m.value).event_id in entering][:3]
        before = service.skipped()
        send(published.bootstrap, topic, records_of(copies))
        copied = collections.Counter(SegmentChangeEvent.from_json(m.value).event_id
                                     for m in copies)
        wait_for(lambda: service.skipped() - before == copied, 60, "the copies to be skipped")
    finally:
        assert service.stop() == 0, service.log()[-3000:]
    assert end_offsets_total(published.bootstrap, push_topic) == len(entering)

    # Replay: the whole topic again under a new group, with the same state: nothing more.
    replay = TriggerService(tmp_path / "run2.log", *common, "--group-id", "push-2")
    try:
        wait_for(lambda: set(replay.skipped()) == set(entering), 120,
                 "the replay to be skipped")
    finally:
        assert replay.stop() == 0, replay.log()[-3000:]
    assert end_offsets_total(published.bootstrap, push_topic) == len(entering)
    assert "0 notifications enqueued" in replay.log()
