"""Everything kept per customer in the customer table, and its byte encoding.

>>> s = CustomerState()
>>> s.remember("evt-1")
True
>>> s.remember("evt-1")
False
>>> CustomerState.from_bytes(s.to_bytes()).segment is None
True
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from stream_app.features import FeatureWindow

#: How many recent event ids are remembered per customer to drop redeliveries.
RECENT_EVENT_IDS = 64


def event_digest(event_id: str) -> int:
    """A 63-bit digest of an event id; equal ids give equal digests in every process."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big") >> 1


class CustomerState:
    """Feature window, profile, current segment and de-duplication memory of a customer."""

    __slots__ = ("model_version", "profile", "recent", "sampled_at", "segment", "window")

    def __init__(self) -> None:
        self.window = FeatureWindow()
        self.profile: dict[str, Any] = {}
        self.segment: int | None = None
        self.model_version = 0
        self.recent: list[int] = []
        self.sampled_at = 0  # event time of the last sample sent to the learner

    def remember(self, event_id: str) -> bool:
        """Record ``event_id``; return ``False`` if it was seen among the recent ids."""
        digest = event_digest(event_id)
        if digest in self.recent:
            return False
        self.recent.append(digest)
        if len(self.recent) > RECENT_EVENT_IDS:
            del self.recent[0]
        return True

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "w": self.window.to_dict(),
            "p": self.profile,
            "s": self.segment,
            "v": self.model_version,
            "e": self.recent,
            "t": self.sampled_at,
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> CustomerState:
        raw = orjson.loads(data)
        s = cls()
        s.window = FeatureWindow.from_dict(raw["w"])
        s.profile = raw["p"]
        s.segment = raw["s"]
        s.model_version = raw["v"]
        s.recent = raw["e"]
        s.sampled_at = raw["t"]
        return s
