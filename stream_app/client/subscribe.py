"""Subscribing to what the workers publish: typed change events and an async iterator.

A trigger service (a push-notification sender, a CRM sync, a bidder) wants the customers'
moves as Python objects, filtered, and with a clear delivery contract. This module gives it:

* :class:`SegmentChangeEvent` and :class:`AudienceChangeEvent`: immutable, typed versions
  of the messages of ``segment-changes`` (``schemas/segment-change.schema.json``) and
  ``audience-changes`` (``schemas/audience-change.schema.json``), timestamps as
  timezone-aware :class:`~datetime.datetime`. ``from_json`` checks a message against its
  schema and raises :class:`ValueError` saying what is wrong.
* :func:`subscribe` and :func:`subscribe_audiences`: async iterators over those events,
  built on aiokafka's consumer, with filters, consumer-group offsets committed only for
  finished events, malformed messages skipped, and a clean stop when the loop is left.

>>> raw = (b'{"event_id": "0b3c1a52-9a35-4c52-8a3a-4f5d7c0e2d11", "customer_id": "c-17",'
...        b' "previous_segment": 3, "previous_segment_label": "searcher",'
...        b' "segment": 5, "segment_label": "frequent buyer", "model_version": 12,'
...        b' "ts": "2026-11-24T10:00:00.000Z", "emitted_at": "2026-11-24T10:00:00.123Z",'
...        b' "trigger": "event", "distance": 0.84, "features": {"orders_90d": 4},'
...        b' "reasons": [{"feature": "orders_90d", "value": 4, "z": 1.8, "segment_z": 1.5}]}')
>>> change = SegmentChangeEvent.from_json(raw)
>>> change.customer_id, change.previous_segment, change.segment, change.trigger
('c-17', 3, 5, 'event')
>>> change.ts.isoformat(timespec="milliseconds"), change.features["orders_90d"]
('2026-11-24T10:00:00.000+00:00', 4)
>>> change.reasons[0]
ChangeReason(feature='orders_90d', value=4, z=1.8, segment_z=1.5)
>>> change.moved_into({5, 6}), change.moved_into({3, 5})
(True, False)
>>> change.summary()
'2026-11-24 10:00:00.000  c-17  3 "searcher" → 5 "frequent buyer"  [event]  orders_90d=4'
>>> SegmentChangeEvent.from_json(b'{"event_id": "x"}')
Traceback (most recent call last):
...
ValueError: not a segment change: data must contain [...] properties
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import orjson

# BrokerUnreachable is raised by the subscriptions and part of this API (stream_app re-exports it).
from stream_app.client.kafka import BrokerUnreachable as BrokerUnreachable
from stream_app.client.kafka import start_client
from stream_app.core.schemas import load_schema

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

# The logger keeps its name from before the package split (log filters and docs use it).
log = logging.getLogger("stream_app.subscribe")

#: Seconds the first step of a subscription may wait for a broker to answer.
CONNECT_TIMEOUT_S = 10.0
#: How long the broker may hold a fetch when nothing is new (aiokafka's default: 500 ms).
#: The embedded broker (Tansu) answers a fetch only when this expires, so it bounds the
#: delay of every change there; on Apache Kafka it only sets how often an idle consumer asks.
FETCH_MAX_WAIT_MS = 100
#: Starting from the end, records at the head of a partition stamped more than this many
#: seconds before the subscription started are skipped: the embedded broker reports a
#: partition's end as the start of its newest batch, so "the end" would replay that batch.
STALE_HEAD_S = 10.0
#: How long one fetch waits before the loop commits what was skipped and asks again.
IDLE_POLL_MS = 1000
#: What a subscription reads when its call names no servers or topic: the environment
#: variable a worker reads it from, and the worker's default when that is unset or empty
#: (the settings' variables and defaults, :class:`stream_app.config.Settings`, which this
#: package does not import; a test checks that they agree).
DEFAULT_SERVERS = ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
DEFAULT_SEGMENT_CHANGES_TOPIC = ("SEGMENT_CHANGES_TOPIC", "segment-changes")
DEFAULT_AUDIENCE_CHANGES_TOPIC = ("AUDIENCE_CHANGES_TOPIC", "audience-changes")
DEFAULT_CATALOGUE_TOPIC = ("SEGMENT_CATALOGUE_TOPIC", "segment-catalogue")


def from_env(default: tuple[str, str], environ: Mapping[str, str] | None = None) -> str:
    """The value of ``default``'s environment variable, or its default when it is unset or
    empty (as the worker reads it), looked up in ``environ`` (default: ``os.environ``).

    >>> from_env(DEFAULT_SEGMENT_CHANGES_TOPIC, {})
    'segment-changes'
    >>> from_env(DEFAULT_SERVERS, {"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092"})
    'k1:9092,k2:9092'
    """
    name, value = default
    return (os.environ if environ is None else environ).get(name) or value


def server_list(bootstrap_servers: str | Sequence[str]) -> list[str]:
    """Bootstrap servers as a list: a comma-separated string is split, blanks dropped.

    >>> server_list(" k1:9092, k2:9092,"), server_list(("k1:9092",))
    (['k1:9092', 'k2:9092'], ['k1:9092'])
    """
    if isinstance(bootstrap_servers, str):
        return [s.strip() for s in bootstrap_servers.split(",") if s.strip()]
    return list(bootstrap_servers)


# -- the events ------------------------------------------------------------------------

@cache
def _validator(schema_file: str) -> Callable[[Any], Any]:
    import fastjsonschema

    return fastjsonschema.compile(load_schema(schema_file))


@cache
def trigger_names(schema_file: str, field_name: str = "trigger") -> tuple[str, ...]:
    """The triggers (or the values of another enumerated ``field_name``) a message of
    ``schema_file`` may name, as the schema lists them.

    >>> trigger_names(SegmentChangeEvent.SCHEMA)
    ('event', 'inactivity', 'model_update', 'profile', 'erasure', 'consent')
    """
    return tuple(load_schema(schema_file)["properties"][field_name]["enum"])


def _document(raw: bytes | str | None, schema_file: str, what: str) -> dict[str, Any]:
    """Parse and validate one message; ``ValueError`` naming the problem otherwise."""
    import fastjsonschema

    if raw is None:
        raise ValueError(f"not {what}: the message has no value")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not {what}: invalid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ValueError(f"not {what}: a JSON {type(document).__name__}, not an object")
    try:
        _validator(schema_file)(document)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise ValueError(f"not {what}: {exc.message}") from None
    return document


def _timestamp(document: Mapping[str, Any], name: str, what: str) -> datetime:
    """A date-time field as an aware datetime (the schema checked its form)."""
    text: str = document[name]
    try:  # Python 3.10 reads no "Z"
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z"))
                                        else text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(f"not {what}: {name} {text!r} is not an ISO-8601 time with a zone")
    return moment


def _as_bytes(raw: bytes | str) -> bytes:
    return raw.encode() if isinstance(raw, str) else bytes(raw)


@dataclass(frozen=True, slots=True)
class ChangeReason:
    """A feature that brought the customer closer to its new segment: its value, the
    customer's z-score and the new segment centre's z-score."""

    feature: str
    value: float | None
    z: float
    segment_z: float


@dataclass(frozen=True, slots=True)
class SegmentChangeEvent:
    """One message of ``segment-changes``: a customer moved between micro-segments.

    ``previous_segment`` is None on a customer's first assignment; ``segment`` is None when
    the customer left segmentation (trigger ``erasure`` or ``consent``: delete what you
    keep about it). ``raw_json`` is the message exactly as published (not compared).
    """

    SCHEMA: ClassVar[str] = "segment-change.schema.json"

    event_id: str
    customer_id: str
    previous_segment: int | None
    previous_segment_label: str | None
    segment: int | None
    segment_label: str | None
    model_version: int
    ts: datetime
    emitted_at: datetime
    trigger: str
    distance: float | None
    features: Mapping[str, float | None] = field(hash=False)
    reasons: tuple[ChangeReason, ...]
    raw_json: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def from_json(cls, raw: bytes | str) -> SegmentChangeEvent:
        """Parse one message; ``ValueError`` if it is not a valid segment change."""
        what = "a segment change"
        doc = _document(raw, cls.SCHEMA, what)
        return cls(
            event_id=doc["event_id"],
            customer_id=doc["customer_id"],
            previous_segment=doc["previous_segment"],
            previous_segment_label=doc.get("previous_segment_label"),
            segment=doc["segment"],
            segment_label=doc["segment_label"],
            model_version=doc["model_version"],
            ts=_timestamp(doc, "ts", what),
            emitted_at=_timestamp(doc, "emitted_at", what),
            trigger=doc["trigger"],
            distance=doc.get("distance"),
            features=MappingProxyType(doc["features"]),
            reasons=tuple(ChangeReason(r["feature"], r["value"], r["z"], r["segment_z"])
                          for r in doc.get("reasons", ())),
            raw_json=_as_bytes(raw),
        )

    def moved_into(self, segments: Collection[int]) -> bool:
        """Whether the customer entered the group ``segments`` with this change (it is in
        one of them now and was in none of them before)."""
        return self.segment in segments and self.previous_segment not in segments

    def summary(self) -> str:
        """One readable line: event time (UTC), customer, move, trigger and the features
        that brought the customer closer (see the module's example)."""
        def segment(number: int | None, label: str | None, absent: str) -> str:
            return absent if number is None else f'{number} "{label}"' if label else str(number)

        reasons = "  " + " ".join(f"{r.feature}={_number(r.value)}" for r in self.reasons)
        return (f"{_clock(self.ts)}  {self.customer_id}  "
                f"{segment(self.previous_segment, self.previous_segment_label, 'new')} → "
                f"{segment(self.segment, self.segment_label, 'none')}  [{self.trigger}]"
                f"{reasons.rstrip()}")


@dataclass(frozen=True, slots=True)
class AudienceChangeEvent:
    """One message of ``audience-changes``: a customer entered or left an audience.

    ``segment`` and ``segment_label`` are the customer's at that moment (None: none).
    ``raw_json`` is the message exactly as published (not compared).

    >>> AudienceChangeEvent.from_json(
    ...     b'{"event_id": "5f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f", "customer_id": "c-17",'
    ...     b' "audience": "lapsed-vip-almaty", "action": "enter",'
    ...     b' "ts": "2026-11-24T10:00:00.000Z", "emitted_at": "2026-11-24T10:00:00.123Z",'
    ...     b' "trigger": "event", "definitions_version": "3f2a9c1d0b7e",'
    ...     b' "segment": 3, "segment_label": "frequent buyer"}')
    ... # doctest: +NORMALIZE_WHITESPACE
    AudienceChangeEvent(event_id='5f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f', customer_id='c-17',
        audience='lapsed-vip-almaty', action='enter',
        ts=datetime.datetime(2026, 11, 24, 10, 0, tzinfo=datetime.timezone.utc),
        emitted_at=datetime.datetime(2026, 11, 24, 10, 0, 0, 123000,
                                     tzinfo=datetime.timezone.utc),
        trigger='event', definitions_version='3f2a9c1d0b7e', segment=3,
        segment_label='frequent buyer')
    >>> AudienceChangeEvent.from_json(b'[1, 2]')
    Traceback (most recent call last):
    ...
    ValueError: not an audience change: a JSON list, not an object
    """

    SCHEMA: ClassVar[str] = "audience-change.schema.json"

    event_id: str
    customer_id: str
    audience: str
    action: str
    ts: datetime
    emitted_at: datetime
    trigger: str
    definitions_version: str
    segment: int | None
    segment_label: str | None
    raw_json: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def from_json(cls, raw: bytes | str) -> AudienceChangeEvent:
        """Parse one message; ``ValueError`` if it is not a valid audience change."""
        what = "an audience change"
        doc = _document(raw, cls.SCHEMA, what)
        return cls(
            event_id=doc["event_id"],
            customer_id=doc["customer_id"],
            audience=doc["audience"],
            action=doc["action"],
            ts=_timestamp(doc, "ts", what),
            emitted_at=_timestamp(doc, "emitted_at", what),
            trigger=doc["trigger"],
            definitions_version=doc["definitions_version"],
            segment=doc["segment"],
            segment_label=doc["segment_label"],
            raw_json=_as_bytes(raw),
        )

    def summary(self) -> str:
        """One readable line: event time (UTC), customer, action, audience, trigger, segment.

        >>> AudienceChangeEvent("e", "c-17", "lapsed-vip", "exit",
        ...                     datetime.fromisoformat("2026-11-24T10:00:00+00:00"),
        ...                     datetime.fromisoformat("2026-11-24T10:00:01+00:00"),
        ...                     "inactivity", "3f2a9c1d0b7e", None, None).summary()
        '2026-11-24 10:00:00.000  c-17  exit lapsed-vip  [inactivity]  no segment'
        """
        segment = ("no segment" if self.segment is None else f"segment {self.segment}"
                   + (f' "{self.segment_label}"' if self.segment_label else ""))
        return (f"{_clock(self.ts)}  {self.customer_id}  {self.action} {self.audience}  "
                f"[{self.trigger}]  {segment}")


@dataclass(frozen=True, slots=True)
class CatalogueChangeEvent:
    """One message of ``segment-catalogue``: a model version changed what a segment means
    (``schemas/segment-catalogue.schema.json``). ``related`` is the segment a ``merged``
    one went ``into``, a ``retired`` one's ``successor``, or the one a ``revived`` one
    ``revives``. ``raw_json`` is the message exactly as published (not compared).

    >>> event = CatalogueChangeEvent.from_json(
    ...     b'{"event_id": "5f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f", "segment": 7,'
    ...     b' "kind": "relabelled", "model_version": 12, "previous_model_version": 11,'
    ...     b' "label": "frequent app buyers", "previous_label": "app buyers",'
    ...     b' "active": true, "size": 412, "typical": "3 orders in 90 days",'
    ...     b' "centre": {"orders_90d": 3.1}, "moved_by": 0.21,'
    ...     b' "emitted_at": "2026-11-24T10:00:00.123Z"}')
    >>> line = event.summary()
    >>> line[:24], line[line.index("v12"):line.index("  (")]
    ('2026-11-24 10:00:00.123 ', 'v12  segment 7 relabelled: "app buyers" → "frequent app buyers"')
    """

    SCHEMA: ClassVar[str] = "segment-catalogue.schema.json"

    event_id: str
    segment: int
    kind: str
    model_version: int
    previous_model_version: int | None
    label: str
    previous_label: str | None
    active: bool
    size: int | None
    typical: str
    related: int | None
    emitted_at: datetime
    raw_json: bytes = field(default=b"", repr=False, compare=False)

    #: Segments a catalogue message refers to, by the name its kind gives them.
    RELATED: ClassVar[dict[str, str]] = {"merged": "into", "retired": "successor",
                                         "revived": "revives"}

    @classmethod
    def from_json(cls, raw: bytes | str) -> CatalogueChangeEvent:
        """Parse one message; ``ValueError`` if it is not a valid catalogue message."""
        what = "a segment catalogue message"
        doc = _document(raw, cls.SCHEMA, what)
        return cls(
            event_id=doc["event_id"], segment=doc["segment"], kind=doc["kind"],
            model_version=doc["model_version"],
            previous_model_version=doc["previous_model_version"], label=doc["label"],
            previous_label=doc["previous_label"], active=doc["active"], size=doc["size"],
            typical=doc["typical"], related=doc.get(cls.RELATED.get(doc["kind"], ""), None),
            emitted_at=_timestamp(doc, "emitted_at", what), raw_json=_as_bytes(raw))

    @property
    def trigger(self) -> str:
        """The kind (what ``stream-app watch`` colours by)."""
        return self.kind

    def summary(self) -> str:
        """One readable line: when, model version, segment, what changed, size."""
        what = {"relabelled": f'relabelled: "{self.previous_label}" → "{self.label}"',
                "merged": f'"{self.label}" merged into segment {self.related}',
                "retired": f'"{self.label}" retired (its customers go to segment '
                           f"{self.related})",
                "revived": f'"{self.label}" revives retired segment {self.related}'}.get(
            self.kind, f'{self.kind}: "{self.label}"')
        size = ("" if self.size is None else
                f"  ({self.size} customer{'' if self.size == 1 else 's'})")
        return (f"{_clock(self.emitted_at)}  v{self.model_version}  segment {self.segment} "
                f"{what}{size}")


def _clock(moment: datetime) -> str:
    """``2026-11-24 10:00:00.000``, in UTC."""
    utc = moment.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%d %H:%M:%S.") + f"{utc.microsecond // 1000:03d}"


def _number(value: float | None) -> str:
    """A feature value, short: ``4``, ``412.5``, ``0.333``, ``null``."""
    if value is None:
        return "null"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


ChangeEvent = TypeVar("ChangeEvent", SegmentChangeEvent, AudienceChangeEvent, CatalogueChangeEvent)


# -- the subscription ------------------------------------------------------------------

@dataclass
class _Progress:
    """What a running subscription knows about its offsets (shared by the iterator and
    its handle, so that the running generator does not keep the handle alive)."""

    group_id: str | None
    commit_interval_s: float
    consumer: AIOKafkaConsumer | None = None
    #: Per partition: the offset after the last message that needs no more work.
    finished: dict[TopicPartition, int] = field(default_factory=dict)
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    #: The event handed out last and not finished yet: (partition, offset after it).
    current: tuple[TopicPartition, int] | None = None
    last_commit: float = 0.0
    malformed: int = 0

    def finish_current(self) -> None:
        if self.current is not None:
            tp, after = self.current
            if self.consumer is not None and tp in self.consumer.assignment():
                self.finished[tp] = after  # (a revoked partition's new owner reads it)
            self.current = None

    async def commit(self, only: Collection[TopicPartition] | None = None) -> None:
        """Commit the finished offsets of assigned partitions (a group only)."""
        consumer = self.consumer
        if consumer is None or self.group_id is None:
            return
        from aiokafka.errors import KafkaError

        assigned = consumer.assignment()
        offsets = {tp: after for tp, after in self.finished.items()
                   if tp in assigned and (only is None or tp in only)
                   and self.committed.get(tp) != after}
        self.last_commit = time.monotonic()
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:  # a rebalance took the partition: its new owner resumes
            log.warning("could not commit the offsets of %d partition(s) of group %s (%s); "
                        "their unfinished events will be delivered again", len(offsets),
                        self.group_id, type(exc).__name__)
            return
        self.committed.update(offsets)

    def commit_due(self) -> bool:
        return time.monotonic() - self.last_commit >= self.commit_interval_s


@dataclass(frozen=True)
class _Source:
    """Where and how a subscription reads."""

    bootstrap_servers: list[str]
    topic: str
    from_beginning: bool
    connect_timeout_s: float
    consumer_options: Mapping[str, Any]


class Subscription(Generic[ChangeEvent]):
    """A running subscription (made by :func:`subscribe` or :func:`subscribe_audiences`).

    An async iterator of events and an async context manager; nothing connects before the
    first event is asked for. ``malformed`` counts the messages skipped as invalid.
    """

    def __init__(self, parse: Callable[[bytes], ChangeEvent], keep: Callable[[ChangeEvent], bool],
                 bootstrap_servers: str | Sequence[str] | None, topic: str,
                 from_beginning: bool, group_id: str | None, commit_interval_s: float,
                 connect_timeout_s: float, consumer_options: Mapping[str, Any] | None) -> None:
        servers = server_list(from_env(DEFAULT_SERVERS) if bootstrap_servers is None
                              else bootstrap_servers)
        if not servers:
            raise ValueError("no bootstrap servers")
        if commit_interval_s < 0 or connect_timeout_s <= 0:
            raise ValueError("commit_interval_s must be >= 0 and connect_timeout_s > 0")
        self.source = _Source(servers, topic, from_beginning, connect_timeout_s,
                              dict(consumer_options or {}))
        self._progress = _Progress(group_id, commit_interval_s)
        # The generator never refers to ``self``: when a loop is left without ``aclose``,
        # this handle is freed at once, and with it the generator, whose ``finally``
        # asyncio's async-generator finaliser then runs, stopping the consumer.
        self._events = _consume(self.source, self._progress, parse, keep)

    @property
    def topic(self) -> str:
        return self.source.topic

    @property
    def group_id(self) -> str | None:
        return self._progress.group_id

    @property
    def malformed(self) -> int:
        """Messages skipped because they were not valid events (each logged as a warning)."""
        return self._progress.malformed

    def __aiter__(self) -> Subscription[ChangeEvent]:
        return self

    async def __anext__(self) -> ChangeEvent:
        return await self._events.__anext__()

    async def commit(self) -> None:
        """Count the event handed out last as finished and commit now (with a group),
        e.g. before leaving the loop, so that it is not delivered again."""
        self._progress.finish_current()
        await self._progress.commit()

    async def aclose(self) -> None:
        """Stop: commit the finished events (with a group), leave the group, disconnect."""
        await self._events.aclose()

    async def __aenter__(self) -> Subscription[ChangeEvent]:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


async def _consume(source: _Source, progress: _Progress,
                   parse: Callable[[bytes], ChangeEvent],
                   keep: Callable[[ChangeEvent], bool]) -> AsyncGenerator[ChangeEvent, None]:
    """The subscription's loop: fetch, skip what is stale, malformed or filtered out, hand
    out the rest one at a time, and commit what is finished (see :func:`subscribe`)."""
    from aiokafka import AIOKafkaConsumer

    options: dict[str, Any] = {"fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
                               **source.consumer_options}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=source.bootstrap_servers, group_id=progress.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if source.from_beginning else "latest", **options)
    #: Per partition starting at "the end": the Kafka timestamp (ms) before which records
    #: at its head are stale (see STALE_HEAD_S).
    stale_before: dict[TopicPartition, int] = {}
    try:
        await _start(consumer, source.bootstrap_servers, source.connect_timeout_s)
        progress.consumer = consumer
        await _follow(consumer, source, progress, stale_before)
        while True:
            batch = await consumer.getmany(timeout_ms=IDLE_POLL_MS, max_records=500)
            if not batch:
                await progress.commit()  # nothing new: record what was skipped
                continue
            for tp, records in batch.items():
                for record in records:
                    if tp not in consumer.assignment():
                        break  # taken away by a rebalance: its new owner reads it
                    after = record.offset + 1
                    if stale_before.get(tp, -1) > record.timestamp:
                        progress.finished[tp] = after
                        continue
                    stale_before.pop(tp, None)
                    event = _decode(parse, record, progress)
                    if event is None or not keep(event):
                        progress.finished[tp] = after
                        continue
                    progress.current = (tp, after)
                    yield event
                    progress.finish_current()
                    if progress.group_id is not None and progress.commit_due():
                        await progress.commit()
    finally:
        progress.current = None  # handed out, not finished: delivered again
        try:
            if progress.consumer is not None:
                await asyncio.wait_for(progress.commit(), source.connect_timeout_s)
        except (asyncio.TimeoutError, OSError) as exc:
            log.warning("could not commit the finished offsets on stopping (%s)",
                        type(exc).__name__)
        finally:
            progress.consumer = None
            await consumer.stop()


def _decode(parse: Callable[[bytes], ChangeEvent], record: ConsumerRecord,
            progress: _Progress) -> ChangeEvent | None:
    """The record's event, or None (logged and counted) when it is malformed."""
    try:
        return parse(record.value)
    except (ValueError, TypeError) as exc:
        progress.malformed += 1
        log.warning("skipped a malformed message on %s partition %d offset %d: %s",
                    record.topic, record.partition, record.offset, exc)
        return None


async def _start(consumer: AIOKafkaConsumer, servers: list[str], timeout_s: float) -> None:
    """Connect, or raise :class:`BrokerUnreachable` within ``timeout_s`` (the Kafka
    client's own connection errors held back: the exception says it in one line)."""
    await start_client(consumer, servers, timeout_s)


async def _follow(consumer: AIOKafkaConsumer, source: _Source, progress: _Progress,
                  stale_before: dict[TopicPartition, int]) -> None:
    """Subscribe once the topic exists (a subscriber never creates it). Without a group,
    fix the start positions now; starting at the end, fill ``stale_before`` for the
    partitions that start there."""
    from aiokafka import ConsumerRebalanceListener

    topic = source.topic
    waiting = False
    while topic not in await consumer.topics():
        if not waiting:
            waiting = True
            log.warning("topic %s does not exist yet; waiting for it", topic)
        await asyncio.sleep(1.0)
    stale_ms = int((time.time() - STALE_HEAD_S) * 1000)

    class CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
            await progress.commit(only=set(revoked))
            for tp in revoked:
                progress.finished.pop(tp, None)
                progress.committed.pop(tp, None)
                stale_before.pop(tp, None)

        async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
            for tp in assigned:  # the group's committed offset is where this one starts
                progress.finished.pop(tp, None)
                progress.committed.pop(tp, None)
            if source.from_beginning:
                return
            for tp in assigned:  # a partition the group never committed starts at the end
                if await consumer.committed(tp) is None:
                    stale_before[tp] = stale_ms

    if progress.group_id is not None:
        consumer.subscribe([topic], listener=CommitOnRevoke())
        return
    consumer.subscribe([topic])
    while not consumer.assignment():  # the partitions of the metadata fetched above
        await asyncio.sleep(0.01)
    for tp in consumer.assignment():
        await consumer.position(tp)  # "the end" is now, not at the first fetch
    if not source.from_beginning:
        stale_before.update(dict.fromkeys(consumer.assignment(), stale_ms))


# -- the two entry points --------------------------------------------------------------

def _chosen(values: Iterable[Any] | None, allowed: Collection[Any] | None,
            what: str) -> frozenset[Any] | None:
    """A filter's values (None: no filter); ``ValueError`` naming unknown ones."""
    if values is None:
        return None
    chosen = frozenset(values)
    unknown = chosen - set(allowed) if allowed is not None else set()
    if unknown:
        raise ValueError(f"unknown {what} {sorted(unknown)}; choose from {', '.join(allowed)}")
    return chosen


def subscribe(bootstrap_servers: str | Sequence[str] | None = None, *,
              topic: str | None = None, segments: Iterable[int] | None = None,
              triggers: Iterable[str] | None = None, from_beginning: bool = False,
              group_id: str | None = None, commit_interval_s: float = 0.0,
              connect_timeout_s: float = CONNECT_TIMEOUT_S,
              consumer_options: Mapping[str, Any] | None = None,
              ) -> Subscription[SegmentChangeEvent]:
    """Follow the segment changes: an async iterator of :class:`SegmentChangeEvent`.

    Parameters
    ----------
    bootstrap_servers
        Kafka bootstrap servers (a comma-separated string or a list); default
        ``KAFKA_BOOTSTRAP_SERVERS``.
    topic
        Default ``SEGMENT_CHANGES_TOPIC`` (``segment-changes``). If it does not exist
        yet, the subscription waits for it (logging once) rather than creating it.
    segments
        Keep only changes into or out of these segments (``segment`` or
        ``previous_segment`` among them).
    triggers
        Keep only changes with these triggers (``event``, ``inactivity``,
        ``model_update``, ``profile``, ``erasure``, ``consent``).
    from_beginning
        Start at the oldest retained change instead of the end (with a group: only when
        the group has no committed offsets yet).
    group_id
        None: read every partition, start at the end (or the beginning) and commit
        nothing. A name: join that consumer group (its members share the partitions) and
        resume from its committed offsets, at least once (see Notes).
    commit_interval_s
        With a group: 0 commits every finished event before the next one is handed out;
        a positive value commits at most that often (and whenever the loop waits for
        new messages, and on stopping), which costs fewer round trips but lets a crash
        redeliver the events of the last interval.
    connect_timeout_s
        :class:`BrokerUnreachable` is raised by the first iteration when no broker
        answers within this many seconds. Later outages are waited out.
    consumer_options
        More :class:`aiokafka.AIOKafkaConsumer` arguments (TLS, SASL, session timeout).

    Returns
    -------
    Subscription
        Iterate it with ``async for``; ``malformed`` counts the messages skipped.

    Raises
    ------
    ValueError
        At once, for an unknown trigger or bad arguments.

    Notes
    -----
    Delivery is at least once. With a group, an event's offset is committed only after
    the loop asked for the next event, that is, after the loop's body finished with it:
    when the process crashes or the loop is left by ``break`` or an exception, the event
    being worked on is delivered again, to this group, and nothing is skipped. Copies of
    an event (this redelivery, a rebalance, a worker that re-sent a change after a crash)
    carry the same ``event_id``: act idempotently by it. ``await subscription.commit()``
    marks the current event finished too, e.g. just before ``break``.

    Malformed messages are skipped with a logged warning and counted, never raised.
    Events are in order per customer (a customer's changes share a partition), not across
    customers. Leaving the loop in any way stops the consumer (and leaves the group);
    ``async with subscribe(...) as changes:`` or :meth:`Subscription.aclose` makes that
    immediate rather than when asyncio finalises the abandoned iterator, at once in
    CPython.

    Examples
    --------
    >>> async def notify_buyers() -> None:
    ...     async with subscribe(segments=[3, 7], group_id="push-sender") as changes:
    ...         async for change in changes:
    ...             if change.moved_into({3, 7}):
    ...                 print(change.customer_id, "entered", change.segment_label)
    """
    chosen_segments = _chosen(segments, None, "segments")
    chosen_triggers = _chosen(triggers, trigger_names(SegmentChangeEvent.SCHEMA), "triggers")

    def keep(event: SegmentChangeEvent) -> bool:
        return ((chosen_triggers is None or event.trigger in chosen_triggers)
                and (chosen_segments is None or event.segment in chosen_segments
                     or event.previous_segment in chosen_segments))

    return Subscription(SegmentChangeEvent.from_json, keep, bootstrap_servers,
                        topic or from_env(DEFAULT_SEGMENT_CHANGES_TOPIC),
                        from_beginning, group_id, commit_interval_s, connect_timeout_s,
                        consumer_options)


def subscribe_audiences(bootstrap_servers: str | Sequence[str] | None = None, *,
                        topic: str | None = None, audiences: Iterable[str] | None = None,
                        actions: Iterable[str] | None = None,
                        segments: Iterable[int] | None = None,
                        triggers: Iterable[str] | None = None, from_beginning: bool = False,
                        group_id: str | None = None, commit_interval_s: float = 0.0,
                        connect_timeout_s: float = CONNECT_TIMEOUT_S,
                        consumer_options: Mapping[str, Any] | None = None,
                        ) -> Subscription[AudienceChangeEvent]:
    """Follow the audience changes: an async iterator of :class:`AudienceChangeEvent`.

    The same as :func:`subscribe` (parameters, delivery, stopping), for the topic
    ``AUDIENCE_CHANGES_TOPIC`` (``audience-changes``), with these filters:

    Parameters
    ----------
    audiences
        Keep only changes of these audiences (names of the definitions file).
    actions
        Keep only ``enter`` or only ``exit`` changes.
    segments
        Keep only changes of customers who were in these segments at that moment.
    triggers
        Keep only these triggers (those of segment changes, and ``definitions``).

    Examples
    --------
    >>> async def follow_vips() -> None:
    ...     async for change in subscribe_audiences(audiences=["lapsed-vip"],
    ...                                             actions=["enter"]):
    ...         print(change.customer_id, change.ts)
    """
    chosen_audiences = _chosen(audiences, None, "audiences")
    chosen_actions = _chosen(actions, ("enter", "exit"), "actions")
    chosen_segments = _chosen(segments, None, "segments")
    chosen_triggers = _chosen(triggers, trigger_names(AudienceChangeEvent.SCHEMA), "triggers")

    def keep(event: AudienceChangeEvent) -> bool:
        return ((chosen_audiences is None or event.audience in chosen_audiences)
                and (chosen_actions is None or event.action in chosen_actions)
                and (chosen_segments is None or event.segment in chosen_segments)
                and (chosen_triggers is None or event.trigger in chosen_triggers))

    return Subscription(AudienceChangeEvent.from_json, keep, bootstrap_servers,
                        topic or from_env(DEFAULT_AUDIENCE_CHANGES_TOPIC),
                        from_beginning, group_id, commit_interval_s, connect_timeout_s,
                        consumer_options)


def subscribe_catalogue(bootstrap_servers: str | Sequence[str] | None = None, *,
                        topic: str | None = None, segments: Iterable[int] | None = None,
                        kinds: Iterable[str] | None = None, from_beginning: bool = False,
                        group_id: str | None = None, commit_interval_s: float = 0.0,
                        connect_timeout_s: float = CONNECT_TIMEOUT_S,
                        consumer_options: Mapping[str, Any] | None = None,
                        ) -> Subscription[CatalogueChangeEvent]:
    """Follow the segment catalogue: an async iterator of :class:`CatalogueChangeEvent`.

    The same as :func:`subscribe` (parameters, delivery, stopping), for the topic
    ``SEGMENT_CATALOGUE_TOPIC`` (``segment-catalogue``). ``segments`` keeps the messages
    about these segments (and those naming them as ``into``, ``successor`` or
    ``revives``); ``kinds`` keeps these kinds only.

    Examples
    --------
    >>> async def follow_segment_7() -> None:
    ...     async for event in subscribe_catalogue(segments=[7], from_beginning=True):
    ...         print(event.summary())
    """
    chosen_segments = _chosen(segments, None, "segments")
    chosen_kinds = _chosen(kinds, trigger_names(CatalogueChangeEvent.SCHEMA, "kind"), "kinds")

    def keep(event: CatalogueChangeEvent) -> bool:
        return ((chosen_segments is None or event.segment in chosen_segments
                 or event.related in chosen_segments)
                and (chosen_kinds is None or event.kind in chosen_kinds))

    return Subscription(CatalogueChangeEvent.from_json, keep, bootstrap_servers,
                        topic or from_env(DEFAULT_CATALOGUE_TOPIC), from_beginning, group_id,
                        commit_interval_s, connect_timeout_s, consumer_options)
