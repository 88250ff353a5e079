"""``stream-app replay``: send a file of historical events (JSONL) into Kafka.

Each line is sent unchanged (the exact bytes, so the worker validates it as it would live
traffic) with the line's ``customer_id`` as key. The topic is ``--topic``, or chosen per
line by its kind (``order_id``: purchases, ``event_type``: clickstream, otherwise
profiles). A backfill therefore gives the same features as the same events arriving live.

Sending is not the end of it: a line the worker rejects goes to the dead-letter topic, and
a replay that only counted what the broker acknowledged would call a file of broken lines a
success. So :func:`replay` keeps the partition and offset the broker acknowledged for every
message it sent (:class:`Sent`), and :class:`WorkerFollow` then watches the worker's
consumer group (the app id) until its committed offsets have passed the last message sent
on every partition, reading meanwhile the dead-letter records whose (topic, partition,
offset) is one of the replay's: the :class:`ReplayReport` says how many messages the
worker processed and how many it rejected, by reason.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from stream_app.client.kafka import start_client
from stream_app.worker.pacing import Pace

#: Default of ``--wait``: give up on the worker after this many seconds without progress.
WAIT_IDLE_S = 60.0
#: Milliseconds a poll of the dead-letter topic waits for records.
POLL_MS = 500
#: At most this many seconds reading the dead-letter topic to its end after the wait.
DRAIN_S = 15.0


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


@dataclass
class Sent:
    """What a replay sent: per (topic, partition), the offsets the broker acknowledged, in
    ascending order (one producer, so each partition's offsets only grow)."""

    offsets: dict[tuple[str, int], array] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(len(o) for o in self.offsets.values())

    def add(self, topic: str, partition: int, offset: int) -> None:
        self.offsets.setdefault((topic, partition), array("q")).append(offset)

    def holds(self, topic: str, partition: int, offset: int) -> bool:
        """Whether the replay sent the message at this position.

        >>> sent = Sent(); sent.add("t", 0, 4); sent.add("t", 0, 9)
        >>> sent.holds("t", 0, 9), sent.holds("t", 0, 5), sent.holds("t", 1, 4)
        (True, False, False)
        """
        offsets = self.offsets.get((topic, partition))
        if not offsets:
            return False
        i = bisect.bisect_left(offsets, offset)
        return i < len(offsets) and offsets[i] == offset

    def before(self, topic: str, partition: int, committed: int) -> int:
        """How many of the messages sent to this partition lie before ``committed`` (a
        consumer group's committed offset: the next one it will read).

        >>> sent = Sent(); [sent.add("t", 0, o) for o in (3, 4, 8)] and None
        >>> [sent.before("t", 0, c) for c in (0, 4, 5, 9)]
        [0, 1, 2, 3]
        """
        return bisect.bisect_left(self.offsets.get((topic, partition), ()), committed)


@dataclass
class ReplayReport:
    """What the worker made of a replay.

    ``consumed`` messages are those its consumer group has committed; ``rejected`` counts
    the consumed messages it sent to the dead-letter topic, by reason (a JSON-array message
    of which an element was rejected counts once, under its first element's reason);
    ``complete`` is False when the wait ended before the worker had consumed everything.
    """

    sent: int
    consumed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    complete: bool = False
    waited_s: float = 0.0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def processed(self) -> int:
        """Consumed and not rejected (a dead letter may be read before the commit of its
        message: never below 0)."""
        return max(self.consumed - self.rejected_total, 0)

    def summary(self) -> str:
        """``7 processed, 6 rejected (3 invalid_json, 2 schema_violation, 1 ...)``.

        >>> ReplayReport(13, 13, Counter({"schema_violation": 2, "invalid_json": 3})).summary()
        '8 processed, 5 rejected (3 invalid_json, 2 schema_violation)'
        >>> ReplayReport(4, 4).summary()
        '4 processed, 0 rejected'
        """
        reasons = ", ".join(f"{n} {reason}" for reason, n in
                            sorted(self.rejected.items(), key=lambda kv: (-kv[1], kv[0])))
        return (f"{self.processed} processed, {self.rejected_total} rejected"
                + (f" ({reasons})" if reasons else ""))


def progress_bar(label: str, enabled: bool = True) -> Progress:
    """The progress display of ``replay`` and ``generate``: on stderr (stdout keeps the
    result lines), live on a terminal, the final state only when stderr is not one."""
    return Progress(TextColumn(label + " {task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)


async def replay(path: Path, bootstrap_servers: list[str], topics: dict[str, str],
                 topic: str | None = None, rate: float | None = None,
                 progress: bool = True, follow: WorkerFollow | None = None,
                 wait_idle_s: float = WAIT_IDLE_S) -> tuple[Sent, ReplayReport | None]:
    """Send every line of ``path`` and record where the broker put each message.

    With ``follow`` (started before the first message is sent, so that no dead letter of
    the replay is missed), then wait until the worker has consumed everything sent, or
    ``wait_idle_s`` seconds have passed without it consuming more, and report what it
    made of it. Raises :class:`~stream_app.client.kafka.BrokerUnreachable` when no broker
    answers.
    """
    total = sum(1 for line in path.open("rb") if line.strip())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5,
                                max_batch_size=256 * 1024)
    await start_client(producer, bootstrap_servers)  # BrokerUnreachable: one clear line
    bar = progress_bar("replay", progress)
    pace = Pace(rate)
    sent = Sent()

    async def acknowledged(pending: list[asyncio.Future]) -> None:
        for meta in await asyncio.gather(*pending):
            sent.add(meta.topic, meta.partition, meta.offset)

    report = None
    with bar:
        try:
            task = bar.add_task(path.name, total=total)
            pending: list[asyncio.Future] = []
            for key, value, kind in read_lines(path):
                pending.append(await producer.send(topic or topics[kind], value, key=key))
                await pace.sent()
                if len(pending) >= 1000:
                    await acknowledged(pending)
                    bar.update(task, advance=len(pending))
                    pending.clear()
            await acknowledged(pending)
            bar.update(task, advance=len(pending))
        finally:
            await producer.stop()
        if follow is not None:
            worker = bar.add_task("worker consumed", total=sent.count)
            report = await follow.wait(sent, wait_idle_s,
                                       lambda n: bar.update(worker, completed=n))
    return sent, report


class WorkerFollow:
    """Follows what the worker does with messages a tool sent: the consumer group's
    committed offsets (how far it has consumed) and the dead-letter topic (what it
    rejected, and why).

    Start it before sending (:meth:`start`): it notes where the dead-letter topic ends, so
    it reads only records that can be about the messages to come.
    """

    def __init__(self, bootstrap_servers: list[str], group_id: str, dlq_topic: str) -> None:
        self.servers = bootstrap_servers
        self.group_id = group_id
        self.dlq_topic = dlq_topic
        self._dlq: AIOKafkaConsumer
        self._group: AIOKafkaConsumer
        self._started: list[AIOKafkaConsumer] = []
        self._dlq_assigned = False
        #: (topic, partition, offset) of a replayed message → the reason it was rejected.
        self.rejections: dict[tuple[str, int, int], str] = {}

    async def start(self) -> None:
        """Connect (:class:`~stream_app.client.kafka.BrokerUnreachable` if no broker answers)
        and position the dead-letter reader at the topic's current end."""
        self._dlq = AIOKafkaConsumer(bootstrap_servers=self.servers, group_id=None,
                                     enable_auto_commit=False, auto_offset_reset="earliest")
        await start_client(self._dlq, self.servers)
        self._started.append(self._dlq)
        # A group member that never subscribes: it only reads the group's committed offsets
        # (no join, no commit, so the workers' assignment is untouched).
        self._group = AIOKafkaConsumer(bootstrap_servers=self.servers,
                                       group_id=self.group_id, enable_auto_commit=False)
        await start_client(self._group, self.servers)
        self._started.append(self._group)
        await self._assign_dlq(at_end=True)

    async def stop(self) -> None:
        for consumer in self._started:
            await consumer.stop()
        self._started.clear()

    async def __aenter__(self) -> WorkerFollow:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _assign_dlq(self, at_end: bool) -> None:
        """Read every partition of the dead-letter topic once it exists: from its end when
        it existed before the replay, else from its beginning (created since)."""
        if self._dlq_assigned or self.dlq_topic not in await self._dlq.topics():
            return
        partitions = [TopicPartition(self.dlq_topic, p)
                      for p in sorted(self._dlq.partitions_for_topic(self.dlq_topic) or ())]
        if not partitions:
            return
        self._dlq.assign(partitions)
        if at_end:
            for tp, end in (await self._dlq.end_offsets(partitions)).items():
                self._dlq.seek(tp, end)
        else:
            await self._dlq.seek_to_beginning(*partitions)
        self._dlq_assigned = True

    async def _read_dlq(self, sent: Sent, timeout_ms: int = POLL_MS) -> int:
        """Read what the dead-letter topic has; keep the records about ``sent`` messages.
        Returns the number of records read (any message)."""
        await self._assign_dlq(at_end=False)
        if not self._dlq_assigned:
            await asyncio.sleep(timeout_ms / 1000)  # the poll interval, as getmany would
            return 0
        read = 0
        for records in (await self._dlq.getmany(timeout_ms=timeout_ms)).values():
            for record in records:
                read += 1
                try:
                    doc = orjson.loads(record.value)
                    where = (doc["topic"], int(doc["partition"]), int(doc["offset"]))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # not a dead letter of ours
                if sent.holds(*where):
                    self.rejections.setdefault(where, str(doc.get("reason") or "unknown"))
        return read

    async def consumed(self, sent: Sent) -> int:
        """How many ``sent`` messages lie before the group's committed offsets."""
        total = 0
        for (topic, partition), offsets in sent.offsets.items():
            committed = await self._group.committed(TopicPartition(topic, partition))
            total += len(offsets) if committed is not None and committed > offsets[-1] \
                else sent.before(topic, partition, committed or 0)
        return total

    async def wait(self, sent: Sent, idle_s: float = WAIT_IDLE_S,
                   on_progress: Callable[[int], None] | None = None) -> ReplayReport:
        """Until the group has consumed every ``sent`` message, or ``idle_s`` seconds pass
        without it consuming one more; then the report (the dead-letter topic read to its
        end first: the worker flushes its dead letters before it commits)."""
        report = ReplayReport(sent.count)
        started = last_move = time.monotonic()
        while True:
            await self._read_dlq(sent)
            consumed = await self.consumed(sent)
            if on_progress:
                on_progress(consumed)
            now = time.monotonic()
            if consumed > report.consumed:
                report.consumed, last_move = consumed, now
            if consumed >= sent.count:
                report.complete = True
                break
            if now - last_move >= idle_s:
                break
        await self._drain_dlq(sent)
        report.rejected = Counter(self.rejections.values())
        report.waited_s = time.monotonic() - started
        return report

    async def _drain_dlq(self, sent: Sent) -> None:
        """Read the dead-letter topic up to its end, then until a poll finds nothing (an
        end offset can read low on the embedded broker)."""
        if not self._dlq_assigned:
            return
        deadline = time.monotonic() + DRAIN_S  # others' dead letters may keep coming
        partitions = list(self._dlq.assignment())
        ends = await self._dlq.end_offsets(partitions)

        async def behind() -> bool:
            return any([await self._dlq.position(tp) < end for tp, end in ends.items()])

        while time.monotonic() < deadline and await behind():
            await self._read_dlq(sent)
        while time.monotonic() < deadline and await self._read_dlq(sent):
            pass


def model_note(url: str, timeout: float = 5.0) -> str:
    """One line on the segment model of the worker at ``url`` (``GET /model``, open
    without a token): ``model version 12 (wcss_ratio 1.004, silhouette 0.551)``, or why
    there is none to show."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/model", timeout=timeout) as resp:
            model = orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return f"the worker at {url} has no segment model yet"
        return f"model not shown: the worker at {url} answered {exc.code}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"model not shown: no worker answered at {url} ({reason}; see --url)"
    quality = model.get("quality") or {}
    figures = ", ".join(f"{name} {quality[name]:.4g}" for name in
                        ("wcss_ratio", "silhouette", "homogeneity") if name in quality)
    return (f"model version {model.get('version')} at {url}"
            + (f" ({figures})" if figures else " (no quality figures yet)"))
