"""Decoding and validation of input messages, with no Faust import.

:class:`EventDecoder` turns the raw bytes of a Kafka message into an :class:`Event`, or
raises :class:`InvalidEvent` with a reason from the bounded set :data:`REASONS` (used as a
metric label) and a human-readable detail (sent to the DLQ).

>>> decoder = EventDecoder()
>>> ev = decoder.decode("click", b"c1", b'{"event_id":"e1","customer_id":"c1",'
...     b'"ts":"2026-03-01T23:30:00+02:00","event_type":"page_view","channel":"App"}')
>>> ev.kind, ev.ts, ev.local_hour, ev.channel
('click', 1772400600000, 23, 'app')
>>> decoder.decode("click", b"c1", b'{"event_id": 1}')
Traceback (most recent call last):
...
stream_app.core.validation.InvalidEvent: schema_violation: data must contain [...] properties

A message may also hold a JSON array of events (collectors batch a customer's events);
:meth:`EventDecoder.decode_all` judges each element on its own:

>>> [getattr(e, "reason", "ok") for e in decoder.decode_all("click", b"c1",
...     b'[{"event_id":"e2","customer_id":"c1","ts":1772400600000,"event_type":"search"},'
...     b' {"event_id":"e3","customer_id":"c2","ts":1772400600000,"event_type":"search"}]')]
['ok', 'key_mismatch']
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import fastjsonschema
import orjson

from stream_app.core.schemas import load_schema

#: Bounded set of rejection reasons (the ``reason`` label of the invalid-events metric).
REASONS = (
    "oversized",
    "invalid_json",
    "not_an_object",
    "schema_violation",
    "invalid_timestamp",
    "timestamp_out_of_range",
    "key_mismatch",
    "empty_array",
)

#: Message kinds and the schema file that validates each.
SCHEMA_FILES = {
    "click": "clickstream.schema.json",
    "purchase": "purchase.schema.json",
    "profile": "customer-profile.schema.json",
    "erasure": "customer-erasure.schema.json",
}

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: Default earliest accepted event time (setting ``EVENT_TS_MIN``): 1980-01-01T00:00:00Z. It
#: accepts any real shop history yet not a ts in seconds read as milliseconds (January 1970).
MIN_TS_MS = 315_532_800_000
#: The schemas' bounds of an epoch-millisecond ``ts`` (1970-01-01 and 2100-01-01, both UTC):
#: outside them an integer ``ts`` is a ``schema_violation``; within them ``EVENT_TS_MIN``
#: and ``MAX_FUTURE_SKEW_S`` decide.
SCHEMA_MIN_TS_MS = 0
SCHEMA_MAX_TS_MS = 4_102_444_800_000
_MS = timedelta(milliseconds=1)
PROFILE_FIELDS = ("age", "income", "region", "city", "gender")


class InvalidEvent(ValueError):
    """A message that cannot be processed; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        #: The element of a JSON-array message that was rejected (see ``decode_all``).
        self.element: Any = None


@dataclass(slots=True)
class Event:
    """A validated input event, normalised to what the feature windows need.

    ``ts`` is epoch milliseconds (UTC); ``local_hour`` is the hour of day in the
    event's own zone offset (UTC when the timestamp was given as epoch milliseconds).
    Money is in integer cents.
    """

    kind: str
    event_id: str
    customer_id: str
    ts: int
    local_hour: int
    event_type: str
    channel: str | None = None
    session_id: str | None = None
    categories: tuple[str, ...] = ()
    amount_cents: int = 0
    discount_cents: int = 0
    quantity: int = 0
    profile: dict[str, Any] = field(default_factory=dict)
    #: A profile update's ``consent.segmentation`` (None: not stated).
    consent: bool | None = None

    def content_digest(self) -> bytes:
        """24 bits of BLAKE2b of the click's or purchase's content as the worker reads it,
        to tell an honest redelivery of an ``event_id`` from a conflicting one (the
        customer's state keeps it next to the id, 3 bytes each; two different contents
        look the same with a chance of 2**-24, and such a conflicting copy is then counted
        as an honest duplicate: neither is applied). The first 3 bytes of the 6-byte
        digest earlier versions kept, so their states are read without a change of
        judgement.

        The content is the validated, normalised fields the features are computed from,
        not the message's bytes (a redelivery may be re-serialised with other key order,
        spacing, ``10`` for ``10.0`` or ``" App"`` for ``"app"``): ``kind``, ``ts``,
        ``local_hour`` (the zone offset of an ISO ``ts``), ``event_type``, ``channel``,
        ``session_id``, ``categories``, ``amount_cents``, ``discount_cents`` and
        ``quantity``. Fields the worker does not read (``order_id``, ``product_id``,
        ``price``, ``query``, ``currency``, unknown ones) are not content: a copy that
        differs only there changes nothing the worker computes. The customer and the
        ``event_id`` are what make it a copy.

        >>> a = Event("purchase", "e1", "c1", 1_767_225_600_000, 0, "purchase", channel="app",
        ...           amount_cents=1000)
        >>> b = Event("purchase", "e1", "c1", 1_767_225_600_000, 0, "purchase", channel="app",
        ...           amount_cents=999_900)
        >>> len(a.content_digest()), a.content_digest() == b.content_digest()
        (3, False)
        >>> from dataclasses import replace
        >>> a.content_digest() == replace(a, amount_cents=1000.0).content_digest()
        True
        """
        content = (self.kind, self.ts, self.local_hour, self.event_type, self.channel,
                   self.session_id, self.categories, int(self.amount_cents),
                   int(self.discount_cents), int(self.quantity))  # 2.0 and 2 alike
        digest = hashlib.blake2b(orjson.dumps(content), digest_size=6, person=b"event-content")
        return digest.digest()[:3]


def parse_ts(value: Any) -> tuple[int, int]:
    """Return ``(epoch_ms, local_hour)`` for an ISO-8601-with-zone string or epoch ms.

    >>> parse_ts("2026-01-01T00:00:00Z")
    (1767225600000, 0)
    >>> parse_ts(1767225600000)
    (1767225600000, 0)
    >>> parse_ts("2026-01-01T00:00:00")
    Traceback (most recent call last):
    ...
    stream_app.core.validation.InvalidEvent: invalid_timestamp: ts needs a zone offset or Z: ...
    """
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent("invalid_timestamp", f"ts is not ISO-8601: {value[:40]!r}") from None
        if dt.tzinfo is None:
            raise InvalidEvent("invalid_timestamp", f"ts needs a zone offset or Z: {value[:40]!r}")
        return (dt - EPOCH) // _MS, dt.hour
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InvalidEvent("invalid_timestamp", "epoch-millisecond ts must be an integer")
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value, (value // 3_600_000) % 24
    raise InvalidEvent("invalid_timestamp",
                       f"ts must be a string or integer, not {type(value).__name__}")


def iso_ms(ms: int) -> str:
    """UTC ISO-8601 text of epoch milliseconds (for messages).

    >>> iso_ms(315_532_800_000), iso_ms(1_772_400_600_250)
    ('1980-01-01T00:00:00Z', '2026-03-01T21:30:00.250Z')
    """
    try:
        moment = EPOCH + ms * _MS
    except OverflowError:
        return f"{ms} ms after 1970"
    return moment.isoformat(timespec="milliseconds" if ms % 1000 else "seconds"
                            ).replace("+00:00", "Z")


def _whole_number(value: Any) -> int | None:
    """A JSON number that is a whole number, as ``int`` (None for anything else)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def unit_hint(value: Any, low_ms: int, high_ms: int) -> str:
    """``"; … looks like seconds, not milliseconds …"`` when ``value`` is a number outside
    ``[low_ms, high_ms]`` that read as seconds (or microseconds) would be inside; else "".

    >>> unit_hint(1_772_400_600, MIN_TS_MS, 4_102_444_800_000)
    '; 1772400600 looks like seconds, not milliseconds (as seconds: 2026-03-01T21:30:00Z)'
    >>> print(unit_hint(1_772_400_600_000_000, MIN_TS_MS, 4_102_444_800_000)[2:])
    1772400600000000 looks like microseconds, not milliseconds (as microseconds: ...)
    >>> unit_hint("1772400600", MIN_TS_MS, 4_102_444_800_000)
    ''
    """
    number = _whole_number(value)
    if number is None:
        return ""
    if number < low_ms and low_ms <= number * 1000 <= high_ms:
        unit, ms = "seconds", number * 1000
    elif number > high_ms and low_ms <= number // 1000 <= high_ms:
        unit, ms = "microseconds", number // 1000
    else:
        return ""
    return f"; {number} looks like {unit}, not milliseconds (as {unit}: {iso_ms(ms)})"


def _writable(value: Any) -> Any:
    """``value`` in a form ``orjson.dumps`` writes: itself, or its JSON text as an
    ``orjson.Fragment`` when it is nested deeper than orjson writes (254 levels; it reads
    1024), so that a rejected array element can go to the DLQ as its own JSON.

    >>> deep = orjson.loads(b"[" * 300 + b"]" * 300)
    >>> orjson.dumps(_writable(deep)) == b"[" * 300 + b"]" * 300
    True
    """
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return orjson.Fragment(_deep_json(value))
    return value


def _deep_json(value: Any) -> bytes:
    """JSON text of a parsed document at any depth (an explicit stack, no recursion)."""
    out: list[bytes] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):  # punctuation (orjson never parses to a tuple)
            out.append(item[0])
        elif isinstance(item, dict):
            stack.append((b"}",))
            for n, (name, member) in enumerate(reversed(item.items())):
                stack.extend((member, (orjson.dumps(name) + b":",)))
                if n < len(item) - 1:
                    stack.append((b",",))
            stack.append((b"{",))
        elif isinstance(item, list):
            stack.append((b"]",))
            for n, member in enumerate(reversed(item)):
                stack.append(member)
                if n < len(item) - 1:
                    stack.append((b",",))
            stack.append((b"[",))
        else:
            out.append(orjson.dumps(item))
    return b"".join(out)


def _cents(value: float | int | None) -> int:
    return 0 if value is None else round(value * 100)


def _lower(value: str | None) -> str | None:
    return value.strip().lower() or None if value else None


class EventDecoder:
    """Decode and validate raw input messages against the JSON Schemas in ``schemas/``.

    Parameters
    ----------
    max_message_bytes
        Larger messages are rejected as ``oversized`` before parsing.
    max_future_skew_s
        Events stamped further than this into the future (wall clock) are rejected.
    min_ts_ms
        Events stamped before this (epoch ms; setting ``EVENT_TS_MIN``) are rejected.
    """

    def __init__(self, max_message_bytes: int = 1_000_000, max_future_skew_s: float = 86_400.0,
                 *, min_ts_ms: int = MIN_TS_MS):
        self.max_message_bytes = max_message_bytes
        self.max_future_skew_s = max_future_skew_s
        self.max_future_skew_ms = int(max_future_skew_s * 1000)
        self.min_ts_ms = min_ts_ms
        self._validators = {
            kind: fastjsonschema.compile(load_schema(name)) for kind, name in SCHEMA_FILES.items()
        }

    def decode(self, kind: str, key: bytes | None, value: bytes | None,
               position: str = "") -> Event:
        """Return the :class:`Event` in ``value`` or raise :class:`InvalidEvent`.

        ``position`` (topic/partition/offset) names a profile update without ``event_id``.
        """
        return self.decode_doc(kind, key, self._parse(value), position)

    def decode_all(self, kind: str, key: bytes | None, value: bytes | None,
                   position: str = "") -> list[Event | InvalidEvent]:
        """The events of a message holding one event or a JSON array of them; an element
        that is not valid is returned as its :class:`InvalidEvent`. Raises
        :class:`InvalidEvent` only when the message as a whole is unreadable."""
        doc = self._parse(value)
        if not isinstance(doc, list):
            return [self.decode_doc(kind, key, doc, position)]
        if not doc:
            raise InvalidEvent("empty_array", "the message is an empty JSON array")
        out: list[Event | InvalidEvent] = []
        for i, element in enumerate(doc):
            try:
                out.append(self.decode_doc(kind, key, element, f"{position}#{i}"))
            except InvalidEvent as exc:
                exc.element = _writable(element)
                out.append(exc)
        return out

    def _parse(self, value: bytes | None) -> Any:
        if value is None:
            raise InvalidEvent("invalid_json", "message has no value")
        if len(value) > self.max_message_bytes:
            raise InvalidEvent("oversized", f"{len(value)} bytes > {self.max_message_bytes}")
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent("invalid_json", str(exc)[:200]) from None

    def decode_doc(self, kind: str, key: bytes | None, doc: Any, position: str = "") -> Event:
        """Validate one parsed JSON document (an element of a message, or all of it)."""
        if not isinstance(doc, dict):
            raise InvalidEvent("not_an_object", f"expected a JSON object, got {type(doc).__name__}")
        try:
            self._validators[kind](doc)
        except fastjsonschema.JsonSchemaValueException as exc:
            detail = exc.message[:300]
            if exc.path == ["data", "ts"]:
                detail += self._epoch_ts_hint(doc.get("ts"))
            raise InvalidEvent("schema_violation", detail) from None
        customer_id = doc["customer_id"]
        if key is None or key != customer_id.encode():
            raise InvalidEvent(
                "key_mismatch", "the Kafka key must be the customer_id (UTF-8 bytes)"
            )
        if kind == "erasure":  # ts is optional: an erasure applies whatever the time
            event_id = doc.get("request_id") or f"erasure:{position}"
            ts = parse_ts(doc["ts"])[0] if "ts" in doc else 0
            return Event("erasure", event_id, customer_id, ts, 0, "erasure")
        ts, local_hour = parse_ts(doc["ts"])
        latest = int(time.time() * 1000) + self.max_future_skew_ms
        if ts < self.min_ts_ms or ts > latest:
            raise self._out_of_range(doc["ts"], ts, latest)
        if kind == "click":
            category = doc.get("category")
            return Event(
                "click", doc["event_id"], customer_id, ts, local_hour, doc["event_type"],
                channel=_lower(doc.get("channel")), session_id=doc.get("session_id") or None,
                categories=(category,) if category else (),
            )
        if kind == "purchase":
            return self._purchase(doc, customer_id, ts, local_hour)
        profile = {f: doc[f] for f in PROFILE_FIELDS if f in doc}
        event_id = doc.get("event_id") or f"profile:{position or ts}"
        consent = doc.get("consent", {}).get("segmentation")
        return Event("profile", event_id, customer_id, ts, local_hour, "profile", profile=profile,
                     consent=consent)

    def _out_of_range(self, value: Any, ts: int, latest: int) -> InvalidEvent:
        """The ``timestamp_out_of_range`` error of ``value`` (``ts`` epoch ms): the bound it
        crossed, the setting that moves it, and a hint at a unit mix-up."""
        shown = repr(value[:40]) if isinstance(value, str) else f"{value!r} ({iso_ms(ts)})"
        if ts < self.min_ts_ms:
            detail = (f"ts {shown} is before EVENT_TS_MIN ({iso_ms(self.min_ts_ms)}); "
                      "set EVENT_TS_MIN to accept older history")
        else:
            skew = self.max_future_skew_s
            detail = (f"ts {shown} is more than MAX_FUTURE_SKEW_S ({skew:.15g} s) ahead of the "
                      "worker's clock")
        return InvalidEvent("timestamp_out_of_range",
                            detail + unit_hint(value, self.min_ts_ms, latest))

    def _epoch_ts_hint(self, value: Any) -> str:
        """What to add to a schema violation of ``ts``: a unit mix-up, or, for epoch ms the
        worker would take but the schemas do not (before 1970, with an ``EVENT_TS_MIN``
        that early), how to send them."""
        latest = int(time.time() * 1000) + self.max_future_skew_ms
        hint = unit_hint(value, self.min_ts_ms, latest)
        ms = _whole_number(value)
        if hint or ms is None or not self.min_ts_ms <= ms <= latest:
            return hint
        return (f"; the schemas take an epoch-millisecond ts from {iso_ms(SCHEMA_MIN_TS_MS)} to "
                f"{iso_ms(SCHEMA_MAX_TS_MS)}: send it as ISO-8601 ({iso_ms(ms)!r})")

    @staticmethod
    def _purchase(doc: dict[str, Any], customer_id: str, ts: int, local_hour: int) -> Event:
        items = doc.get("items") or ()
        categories = {i["category"] for i in items if i.get("category")}
        if doc.get("category"):
            categories.add(doc["category"])
        # Without items an order counts one item; items of quantity 0 count none (as batch).
        quantity = sum(1 if i.get("quantity") is None else i["quantity"] for i in items
                       ) if items else 1
        return Event(
            "purchase", doc["event_id"], customer_id, ts, local_hour, "purchase",
            channel=_lower(doc.get("channel")), categories=tuple(sorted(categories)),
            amount_cents=_cents(doc["amount"]), discount_cents=_cents(doc.get("discount")),
            quantity=quantity,
        )
