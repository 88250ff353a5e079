"""The messages the app writes: segment changes and dead letters.

>>> c = SegmentChange("c1", None, 3, "deal seeker", 7, 1767225600000, "event", "e9",
...                   {"orders_90d": 2})
>>> c.event_id == SegmentChange("c1", None, 3, "x", 7, 1767225600000, "event", "e9", {}).event_id
True
>>> orjson.loads(c.to_json(emitted_at=0.0))["emitted_at"]
'1970-01-01T00:00:00.000Z'
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson


def iso_ms(epoch_ms: int | float) -> str:
    """ISO-8601 UTC with milliseconds, e.g. ``2026-01-01T00:00:00.000Z``."""
    dt = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def deterministic_id(*parts: object) -> str:
    """A UUID-shaped id derived from ``parts`` (BLAKE2b): equal parts give equal ids in
    every process, so a message sent again after a crash keeps its ``event_id``.

    >>> deterministic_id("c1", "event", "e9") == deterministic_id("c1", "event", "e9")
    True
    >>> len(deterministic_id("c1")), deterministic_id("c1").count("-")
    (36, 4)
    """
    material = "\x1f".join(str(part) for part in parts)
    h = hashlib.blake2b(material.encode(), digest_size=16).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def event_digest(event_id: str) -> int:
    """A 63-bit digest of an event id; equal ids give equal digests in every process.

    >>> event_digest("e9") == event_digest("e9"), 0 <= event_digest("e9") < 2**63
    (True, True)
    """
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big") >> 1


def cause_digest(cause: str | int) -> int:
    """The digest of a change's cause: an event or request id, or already its
    :func:`event_digest` (as a customer's state keeps the cause of its last changes,
    without the id itself, which may name the customer). Change ids are made from it, so
    a change sent again from the state alone keeps its ``event_id``.

    >>> cause_digest("e9") == cause_digest(event_digest("e9"))
    True
    """
    return cause if isinstance(cause, int) else event_digest(cause)


@dataclass(slots=True)
class SegmentChange:
    """A customer's move between micro-segments (``previous_segment`` is None at first)."""

    customer_id: str
    previous_segment: int | None
    segment: int | None
    segment_label: str | None
    model_version: int
    ts: int
    trigger: str
    cause_id: str | int  # the cause's id, or its event_digest
    features: dict[str, Any]
    previous_segment_label: str | None = None
    distance: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def event_id(self) -> str:
        """Deterministic: the same cause and move give the same id on reprocessing, also
        when a newer model decided it again after a crash (``model_update`` causes name
        their model version)."""
        return deterministic_id(self.customer_id, self.trigger, cause_digest(self.cause_id),
                                self.previous_segment, self.segment)

    def to_json(self, emitted_at: float | None = None) -> bytes:
        return orjson.dumps({
            "event_id": self.event_id,
            "customer_id": self.customer_id,
            "previous_segment": self.previous_segment,
            "previous_segment_label": self.previous_segment_label,
            "segment": self.segment,
            "segment_label": self.segment_label,
            "model_version": self.model_version,
            "ts": iso_ms(self.ts),
            "emitted_at": iso_ms((time.time() if emitted_at is None else emitted_at) * 1000),
            "trigger": self.trigger,
            "distance": self.distance,
            "features": self.features,
            **self.extra,
        })


#: Largest rejected value a dead letter carries (as base64, 4/3 of it): the record stays
#: under the producer's 1,000,000-byte request limit. Larger values are named by size and
#: SHA-256 only.
DLQ_VALUE_MAX_BYTES = 512 * 1024


def dead_letter(reason: str, detail: str, topic: str, partition: int, offset: int,
                timestamp: int | None, key: bytes | None, value: bytes | None,
                app_id: str, redaction: str | None = None,
                original_bytes: int | None = None) -> bytes:
    """The DLQ record for a rejected input message: the original bytes and why.

    ``redaction`` says what pseudonymisation did to ``key`` and ``value`` (None: they are
    as received; ``"pseudonymised"``: ids replaced by pseudonyms; ``"withheld"``: the
    value left out, ``original_bytes`` long; see
    :meth:`stream_app.core.privacy.Pseudonymiser.dead_letter_parts`).

    >>> record = dead_letter("invalid_json", "x", "t", 0, 5, None, b"k", b"\\xff", "a")
    >>> orjson.loads(record)["value"], orjson.loads(record)["value_base64"]
    (None, '/w==')
    >>> big = orjson.loads(dead_letter("oversized", "", "t", 0, 6, None, b"k",
    ...                                b"x" * (DLQ_VALUE_MAX_BYTES + 1), "a"))
    >>> big["value_base64"], big["value_bytes"], big["value_sha256"][:12]
    (None, 524289, '84079794567a')
    """
    def text(raw: bytes | None) -> str | None:
        if raw is None:
            return None
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return None

    def b64(raw: bytes | None) -> str | None:
        return None if raw is None else base64.b64encode(raw).decode()

    return orjson.dumps({
        "reason": reason,
        "detail": detail,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp": timestamp,
        "key": text(key),
        "key_base64": b64(key),
        "value": text(value) if value is None or len(value) <= 65_536 else None,
        "value_base64": b64(value) if value is None or len(value) <= DLQ_VALUE_MAX_BYTES
        else None,
        "value_bytes": None if value is None else len(value),
        "value_sha256": None if value is None else hashlib.sha256(value).hexdigest(),
        "redaction": redaction,
        "original_bytes": original_bytes,
        "failed_at": iso_ms(time.time() * 1000),
        "app_id": app_id,
    })
