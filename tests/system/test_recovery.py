"""Crash, clean stop and rebalance in the middle of a stream: nothing lost, nothing counted twice.

A worker is killed (SIGKILL) or stopped (SIGTERM) while events are still being produced and
processed, then started again; or one of two workers stops and the other takes over its
partitions, and later gets them back. Afterwards:

* every customer's features equal the batch recomputation of all input (no lost events,
  no double counts), read through the HTTP API of the workers that own them;
* the segment-changes topic, read whole and de-duplicated by ``event_id``, holds a
  consistent chain per customer (each change's ``previous_segment`` is the segment of the
  customer's previous change) that ends at the customer's current segment (no change lost);
  the copies of a change are the same move (customer, trigger, previous segment, segment,
  event time); a copy re-sent after a crash carries the features of its re-sending;
* the audience-changes topic, read the same way, holds for every customer and audience
  enter and exit in turn, ending at the customer's current audiences (the restart tests
  run with audiences defined).

"All input consumed" is judged by the consumer group's committed offsets, not by the
worker's counters (a restarted worker counts the events it processes again).
The tests print the recovery times they measure (``-s`` shows them).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.conftest import Worker, metric_sum, produce, wait_for
from tests.factories import as_triples, shop_events
from tests.integration.test_exactness import check_against_batch

CUSTOMERS = 200
K = 6
STEP_MS = 600_000  # 10 minutes of event time per event
INPUT_KINDS = ("click", "purchase", "profile")
#: Background production: this many events per batch, one batch per PAUSE_S (~600 events/s,
#: below what a worker processes, so the worker is busy but keeps up until it is stopped).
CHUNK = 60
PAUSE_S = 0.1
#: What copies of one change (one event_id) have in common.
SAME_MOVE = ("customer_id", "trigger", "previous_segment", "segment", "ts")
#: Audiences of the restart tests: on features that move often, with hysteresis, and on
#: the segment.
AUDIENCES = """\
audiences:
  - name: browsers
    condition: views_7d >= 6
    exit_condition: views_7d < 3
  - name: buyers
    condition: orders_30d >= 1
  - name: segment-zero
    condition: segment == 0
"""

Event = tuple[str, bytes, bytes]  # (kind, key, value)



def produce_in_background(worker: Worker, events: list[Event]) -> Future[None]:
    """Send ``events`` in paced chunks from another thread; the future ends with the last ack."""
    bootstrap = worker.env["KAFKA_BOOTSTRAP_SERVERS"]
    messages = [(worker.topics[kind], key, value) for kind, key, value in events]

    def run() -> None:
        for start in range(0, len(messages), CHUNK):
            produce(bootstrap, messages[start:start + CHUNK])
            time.sleep(PAUSE_S)  # load shaping, not synchronisation

    pool = ThreadPoolExecutor(1)
    future = pool.submit(run)
    pool.shutdown(wait=False)
    return future


def committed_offsets(worker: Worker) -> dict[str, list[int | None]]:
    """Per input topic: the group's committed offset of each partition (None: never)."""
    async def run() -> dict[str, list[int | None]]:
        # A consumer of the app's group with manual assignment: it asks the group
        # coordinator for committed offsets without joining the group.
        consumer = AIOKafkaConsumer(bootstrap_servers=worker.env["KAFKA_BOOTSTRAP_SERVERS"],
                                    group_id=worker.app_id, enable_auto_commit=False)
        await consumer.start()
        try:
            offsets = {}
            for kind in INPUT_KINDS:
                topic = worker.topics[kind]
                partitions = await _partitions(consumer, topic)
                offsets[topic] = [await consumer.committed(TopicPartition(topic, p))
                                  for p in sorted(partitions)]
            return offsets
        finally:
            await consumer.stop()

    return asyncio.run(run())


def expected_total(worker: Worker, events: list[Event]) -> dict[str, int]:
    totals = {worker.topics[kind]: 0 for kind in INPUT_KINDS}
    for kind, _, _ in events:
        totals[worker.topics[kind]] += 1
    return totals


def wait_until_consumed(worker: Worker, events: list[Event], timeout: float = 180) -> None:
    """Wait until the group committed every message of ``events`` (all input topics): the
    committed offsets of a topic's partitions add up to its message count (offsets start
    at 0)."""
    want = expected_total(worker, events)
    seen: list[dict[str, list[int | None]]] = [{}]

    def totals() -> dict[str, int]:
        return {topic: sum(offset or 0 for offset in offsets)
                for topic, offsets in seen[0].items()}

    def done() -> bool:
        seen[0] = committed_offsets(worker)
        now = totals()
        assert all(now[t] <= want[t] for t in want), (seen[0], want)  # never beyond
        return now == want

    try:
        wait_for(done, timeout, "every input message to be processed and committed", 0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: committed {totals()}, sent {want}; committed offset "
                             f"per partition {seen[0]}") from None


def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every message of ``topic`` up to its current end, in partition order."""
    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p)
                          for p in sorted(await _partitions(consumer, topic))]
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            await consumer.seek_to_beginning(*partitions)
            out: list[Any] = []
            deadline = time.monotonic() + 60
            async def behind() -> bool:
                return any([await consumer.position(tp) < ends[tp] for tp in partitions])

            while await behind():
                assert time.monotonic() < deadline, f"could not read {topic} to its end"
                batch = await consumer.getmany(timeout_ms=500)
                for tp in partitions:
                    out.extend(m for m in batch.get(tp, []) if m.offset < ends[tp])
            return out
        finally:
            await consumer.stop()

    return asyncio.run(run())


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partitions of ``topic`` (``topics()`` refreshes the consumer's metadata)."""
    await consumer.topics()
    partitions = consumer.partitions_for_topic(topic)
    assert partitions, f"no partitions for {topic}"
    return partitions


@dataclass
class ChangeLog:
    """The segment-changes topic, de-duplicated by ``event_id`` and grouped by customer."""

    chains: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    messages: int = 0
    duplicates: int = 0

    def final(self) -> dict[str, int | None]:
        return {c: chain[-1]["segment"] for c, chain in self.chains.items()}


def read_changes(worker: Worker) -> ChangeLog:
    """Read the whole segment-changes topic and check what holds at any moment: copies of
    a change are the same move, and each customer's chain is consistent."""
    messages = read_topic(worker.env["KAFKA_BOOTSTRAP_SERVERS"], worker.topics["changes"])
    first_copy: dict[str, bytes] = {}
    chains: dict[str, list[dict[str, Any]]] = defaultdict(list)
    log = ChangeLog(messages=len(messages))
    for message in messages:
        change = orjson.loads(message.value)
        assert message.key.decode() == change["customer_id"], change
        # A copy is the same move; its features may be re-evaluated (a change re-sent after
        # a crash carries the customer's features as they were when it was re-sent).
        move = orjson.dumps({k: change[k] for k in SAME_MOVE})
        seen = first_copy.get(change["event_id"])
        if seen is not None:
            assert move == seen, ("two changes with one event_id differ", seen, move)
            log.duplicates += 1
            continue
        first_copy[change["event_id"]] = move
        chains[change["customer_id"]].append(change)
    for customer, chain in chains.items():
        previous = None
        for change in chain:
            assert change["previous_segment"] == previous, (
                f"{customer}: a change from {change['previous_segment']} follows one to "
                f"{previous}: a change was lost, or made twice under different event_ids; "
                "the customer's changes (trigger, previous, segment, model version, ts, "
                "emitted_at, event_id):\n" + "\n".join(
                    f"{c['trigger']} {c['previous_segment']} -> {c['segment']} "
                    f"v{c['model_version']} {c['ts']} {c['emitted_at']} {c['event_id']}"
                    for c in chain))
            previous = change["segment"]
    log.chains = dict(chains)
    return log


def current_segments(worker: Worker, customers: set[str]) -> dict[str, int | None]:
    """Each customer's segment from ``GET /customers/{id}`` (routed to the owner)."""
    def segment(customer: str) -> int | None:
        status, doc = worker.get(f"/customers/{customer}")
        assert status == 200, (customer, status, doc)
        return doc["segment"]

    ordered = sorted(customers)
    with ThreadPoolExecutor(16) as pool:
        return dict(zip(ordered, pool.map(segment, ordered)))


def check_changes_complete(worker: Worker, events: list[Event], *others: Worker) -> ChangeLog:
    """Chains are consistent and end at each customer's current segment (polled: a
    re-scoring or sweep pass may still be publishing). Customers without a segment have
    no change. A failure carries :func:`lost_state_report` (``others``: more workers whose
    warnings it shows)."""
    try:
        return _check_changes_complete(worker, events)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n{lost_state_report(worker, str(exc), (worker, *others))}") from None


def _check_changes_complete(worker: Worker, events: list[Event]) -> ChangeLog:
    customers = {key.decode() for _, key, _ in events}
    outcome: list[Any] = [None, None]

    def complete() -> bool:
        log = read_changes(worker)  # asserts the invariants on every read
        segments = current_segments(worker, customers)
        final = log.final()
        expected = {c: s for c, s in segments.items() if s is not None}
        outcome[:] = [log, (final, expected)]
        return final == expected

    try:
        wait_for(complete, 90, "the last change of each customer to be its current segment",
                 interval=1.0)
    except AssertionError as exc:
        if not str(exc).startswith("timed out") or outcome[1] is None:
            raise  # an invariant of read_changes, or the API, failed
        final, expected = outcome[1]
        wrong = {c: (final.get(c), expected.get(c)) for c in set(final) | set(expected)
                 if final.get(c) != expected.get(c)}
        raise AssertionError(f"(topic's last change, API segment) differ for {len(wrong)} "
                             f"customers: {dict(sorted(wrong.items())[:10])}") from None
    log = outcome[0]
    assert len(log.chains) > CUSTOMERS // 2, "most customers should have been assigned"
    return log


def wait_mid_stream(worker: Worker, total: int, share: float = 0.35) -> float:
    """Wait until ``worker`` processed ``share`` of ``total`` events and published segment
    changes; the consumed count then."""
    def part_way() -> float | None:
        m = worker.metrics()
        consumed = metric_sum(m, "stream_app_events_consumed_total")
        changes = metric_sum(m, "stream_app_segment_changes_total")
        return consumed if consumed >= share * total and changes > 0 else None

    return wait_for(part_way, 120, f"{share:.0%} of the input to be processed", 0.05)


def timed_start(worker: Worker, events: list[Event]) -> tuple[float, float]:
    """Start ``worker``; seconds from process start to ``/ready`` 200, and to every input
    message processed and committed (bounded below by the background production, and
    including up to one commit interval)."""
    started = time.monotonic()
    worker.start(wait_ready=False)

    def ready() -> bool:
        assert worker.process is not None and worker.process.poll() is None, worker.log()
        return worker.get("/ready")[0] == 200

    wait_for(ready, 120, "the restarted worker to be ready", 0.1)
    to_ready = time.monotonic() - started
    wait_until_consumed(worker, events)
    return to_ready, time.monotonic() - started


@pytest.mark.parametrize(("sig", "store", "same_dir"), [
    (signal.SIGKILL, "memory://", False),
    (signal.SIGKILL, "rocksdb://", True),
    (signal.SIGTERM, "rocksdb://", True),
], ids=["sigkill-new-machine", "sigkill-same-dir-rocksdb", "sigterm-same-dir-rocksdb"])
def test_worker_stopped_mid_stream_resumes_exactly(make_worker, tmp_path, sig, store,
                                                    same_dir):
    audiences = tmp_path / "audiences.yaml"
    audiences.write_text(AUDIENCES)
    first = make_worker(SEGMENTS_K=K, TABLE_STORE=store, AUDIENCES_FILE=audiences).start()
    events = as_triples(shop_events(CUSTOMERS, 4000, seed=31, step_ms=STEP_MS))
    producing = produce_in_background(first, events)
    consumed_at_stop = wait_mid_stream(first, len(events))
    code = first.stop(sig)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), first.log()
    assert consumed_at_stop < len(events)

    # Same directory (RocksDB state on disk plus the changelog after it), or a new machine
    # with an empty one (all state from the changelog).
    second = first if same_dir else make_worker(SEGMENTS_K=K, TABLE_STORE=store,
                                                AUDIENCES_FILE=audiences)
    to_ready, to_consumed = timed_start(second, events)
    producing.result(timeout=60)
    wait_until_consumed(second, events)
    print(f"\n{signal.Signals(sig).name} {store} same_dir={same_dir}: stopped at "
          f"{consumed_at_stop:.0f}/{len(events)} events; restart to /ready {to_ready:.1f} s, "
          f"to all input consumed {to_consumed:.1f} s; duplicates dropped after restart "
          f"{metric_sum(second.metrics(), 'stream_app_duplicate_events_total'):.0f}")

    check_exact(second, events, first)
    log = check_changes_complete(second, events, first)
    print(f"segment changes: {log.messages} messages, {log.duplicates} duplicates by event_id")
    messages, copies = check_audiences_complete(second, events)
    print(f"audience changes: {messages} messages, {copies} duplicates by event_id")


def check_audiences_complete(worker: Worker, events: list[Event]) -> tuple[int, int]:
    """Audience changes de-duplicated by ``event_id``: for each customer and audience,
    enter and exit alternate (starting with enter), and the last says whether the
    customer is in the audience now (``GET /customers/{id}``). Polled, as a pass may still
    be publishing. Returns (messages, copies)."""
    customers = sorted({key.decode() for _, key, _ in events})
    outcome: list[Any] = [(0, 0), set(), {}]

    def complete() -> bool:
        messages = read_topic(worker.env["KAFKA_BOOTSTRAP_SERVERS"], worker.topics["audiences"])
        seen: dict[str, tuple[str, str, str]] = {}
        actions: dict[tuple[str, str], list[str]] = defaultdict(list)
        causes: dict[tuple[str, str], list[str]] = defaultdict(list)  # for a failure
        for message in messages:
            doc = orjson.loads(message.value)
            what = (doc["customer_id"], doc["audience"], doc["action"])
            if doc["event_id"] in seen:
                assert seen[doc["event_id"]] == what, ("one event_id, two changes", what)
                continue
            seen[doc["event_id"]] = what
            actions[doc["customer_id"], doc["audience"]].append(doc["action"])
            causes[doc["customer_id"], doc["audience"]].append(
                f"{doc['action']} {doc['trigger']} {doc['event_id'][:8]} ts={doc['ts']} "
                f"@{message.partition}/{message.offset}")
        for (customer, audience), done in actions.items():
            assert done == ["enter", "exit"] * (len(done) // 2) + ["enter"] * (len(done) % 2), (
                f"{customer} {audience}: {done} (a change lost, or made twice): "
                f"{causes[customer, audience]}")
        with ThreadPoolExecutor(16) as pool:
            docs = list(pool.map(lambda c: worker.get(f"/customers/{c}")[1], customers))
        now = {(c, a) for c, doc in zip(customers, docs) for a in doc["audiences"]}
        ended_in = {pair for pair, done in actions.items() if done[-1] == "enter"}
        outcome[:] = [(len(messages), len(messages) - len(seen)), ended_in ^ now, causes]
        return ended_in == now

    try:
        wait_for(complete, 90, "each customer's audience changes to end at its audiences",
                 interval=1.0)
    except AssertionError as exc:
        differ = sorted(outcome[1])
        raise AssertionError(f"{exc}; (customer, audience) in one of topic and API only: "
                             f"{len(differ)}, {differ[:10]}; {outcome[0][0]} messages; "
                             f"changes of the first: "
                             f"{[outcome[2].get(pair) for pair in differ[:3]]}") from None
    assert outcome[0][0] > CUSTOMERS // 2, "audiences should have had members"
    return outcome[0]


def check_exact(worker: Worker, events: list[Event], *others: Worker) -> None:
    """``check_against_batch``; on a mismatch, the failure names, for each customer who
    differs, where its input events and its changelog records are, what the group
    committed, and the warnings the workers (``worker`` and ``others``) logged, to tell
    a lost state write from a truncated recovery."""
    try:
        assert check_against_batch(worker, events) == CUSTOMERS
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n{lost_state_report(worker, str(exc), (worker, *others))}") from None


def lost_state_report(worker: Worker, failure: str, workers: tuple[Worker, ...]) -> str:
    bootstrap = worker.env["KAFKA_BOOTSTRAP_SERVERS"]
    named = re.findall(r"customer_id='([^']+)'|^(\S+): a change from", failure, re.MULTILINE)
    customers = sorted({a or b for a, b in named})[:3]
    lines = [f"committed: {committed_offsets(worker)}"]
    for w in workers:
        logged = w.log_path.read_text(errors="replace").splitlines()
        lines += [f"log: {line[:300]}" for line in logged
                  if re.search(r"warn|error", line, re.IGNORECASE)][-30:]
    changelog = read_topic(bootstrap, f"{worker.app_id}-customers-changelog")
    for customer in customers:
        lines.append(f"customer {customer}:")
        for kind in ("purchase", "click"):
            for m in read_topic(bootstrap, worker.topics[kind]):
                if m.key == customer.encode():
                    doc = orjson.loads(m.value)
                    lines.append(f"  {kind} p{m.partition}@{m.offset} {doc.get('event_id')} "
                                 f"ts {doc.get('ts')}")
        for m in changelog:
            if m.key == customer.encode():
                state = orjson.loads(m.value) if m.value else {}
                lines.append(f"  changelog p{m.partition}@{m.offset} ts {m.timestamp} "
                             f"orders {len(state.get('o', []))} events {len(state.get('e', []))} "
                             f"segment {state.get('s')} last change {state.get('lc')}")
    return "\n".join(lines)


def local_sizes(worker: Worker) -> dict[int, int]:
    """Customers per partition in ``worker``'s segment sizes, for the partitions
    it owns now (``GET /segments/_local``; a partition with customers has a count)."""
    status, body = worker.get("/segments/_local")
    assert status == 200, body
    return {int(p): sum(per_segment.values()) for p, per_segment in body["sizes"].items()}


def owned_partitions(worker: Worker) -> set[int]:
    """The input partitions ``worker`` owns now (of those holding customers)."""
    return set(local_sizes(worker))


def split_between(workers: tuple[Worker, ...], partitions: set[int]) -> bool:
    """Every worker owns some of ``partitions``, each is owned by exactly one."""
    owned = [owned_partitions(w) for w in workers]
    return (all(owned) and sum(map(len, owned)) == len(partitions)
            and set().union(*owned) == partitions)


def topic_partitions(worker: Worker, kind: str) -> int:
    async def run() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=worker.env["KAFKA_BOOTSTRAP_SERVERS"])
        await consumer.start()
        try:
            return len(await _partitions(consumer, worker.topics[kind]))
        finally:
            await consumer.stop()

    return asyncio.run(run())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_survivor_takes_over_and_gives_back_partitions_exactly(make_worker, sig):
    first = make_worker(SEGMENTS_K=K).start()
    second = make_worker(SEGMENTS_K=K).start()
    workers = (first, second)
    partitions = set(range(topic_partitions(first, "click")))
    assert len(partitions) >= 2
    wait_for(lambda: all(w.get("/ready")[1]["partitions_assigned"] for w in workers), 90,
             "both workers to own partitions")

    events = as_triples(shop_events(CUSTOMERS, 4500, seed=37, step_ms=STEP_MS))
    before, during, after = events[:3000], events[3000:4000], events[4000:]
    producing = produce_in_background(first, before)

    def both_busy() -> bool:
        counts = [metric_sum(w.metrics(), "stream_app_events_consumed_total") for w in workers]
        changes = sum(metric_sum(w.metrics(), "stream_app_segment_changes_total")
                      for w in workers)
        return all(counts) and sum(counts) >= 0.35 * len(before) and changes > 0

    wait_for(both_busy, 120, "both workers to process part of the stream", 0.05)
    assert split_between(workers, partitions)
    stopped = time.monotonic()
    code = second.stop(sig)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), second.log()

    wait_for(lambda: owned_partitions(first) == partitions, 120,
             "the survivor to own every partition")
    takeover = time.monotonic() - stopped
    producing.result(timeout=60)
    wait_until_consumed(first, before)
    check_exact(first, before, second)
    assert sum(local_sizes(first).values()) == CUSTOMERS  # the sizes table came along
    check_changes_complete(first, before, second)

    # The stopped worker returns while more events arrive: the partitions are split again;
    # the last events arrive after the split (the survivor may have taken all before it).
    producing = produce_in_background(first, during)
    restarted = time.monotonic()
    second.start()
    wait_for(lambda: split_between(workers, partitions), 120,
             "the returning worker to get partitions back")
    give_back = time.monotonic() - restarted
    producing.result(timeout=60)
    produce_in_background(first, after).result(timeout=60)
    wait_until_consumed(first, events)
    wait_for(lambda: metric_sum(second.metrics(), "stream_app_events_consumed_total") > 0, 60,
             "the returning worker to process events")
    print(f"\n{signal.Signals(sig).name}: survivor owned all partitions {takeover:.1f} s after "
          f"the stop; partitions split again {give_back:.1f} s after the restart")
    for worker in workers:  # either worker answers for every customer (routed to the owner)
        check_exact(worker, events, *workers)
    assert sum(sum(local_sizes(w).values()) for w in workers) == CUSTOMERS
    log = check_changes_complete(second, events, first)
    print(f"segment changes: {log.messages} messages, {log.duplicates} duplicates by event_id")
