"""Everything kept per customer in the customer table, and its byte encoding.

De-duplication memory is bounded: the ids of clicks within the allowed lateness of the
customer's newest click (any older copy would be late and change nothing), at most
:data:`MAX_RECENT_IDS`, and the ids of the newest :data:`MAX_ORDER_IDS` purchases (a
late duplicate purchase would otherwise count twice in the lifetime totals).

>>> s = CustomerState()
>>> s.remember("evt-1", 1_000, purchase=False, lateness_ms=3_600_000)
True
>>> s.remember("evt-1", 1_000, purchase=False, lateness_ms=3_600_000)
False
>>> CustomerState.from_bytes(s.to_bytes()).segment is None
True
"""

from __future__ import annotations

from typing import Any

import orjson

from stream_app.changes import event_digest
from stream_app.features import FeatureWindow

MAX_RECENT_IDS = 1024
MAX_ORDER_IDS = 1000


class CustomerState:
    """Feature window, profile, current segment and de-duplication memory of a customer."""

    __slots__ = (
        "audiences", "audiences_version", "evaluated_at", "evaluations", "excluded",
        "last_audience", "last_change", "left_segment", "model_version", "orders",
        "partition", "pending", "pending_count", "profile", "profile_ts", "recent", "sampled_at",
        "segment", "window",
    )

    def __init__(self) -> None:
        self.window = FeatureWindow()
        self.profile: dict[str, Any] = {}
        self.profile_ts = 0
        self.segment: int | None = None
        self.model_version = 0
        self.recent: list[list[int]] = []  # [digest, ts] of recent events
        self.orders: list[int] = []  # digests of the newest purchases
        self.sampled_at = 0  # event time of the last sample sent to the learner
        self.evaluated_at = 0  # event time the features were last evaluated at
        self.left_segment: int | None = None  # the segment left at the last change
        self.evaluations = 0  # evaluations since the last change (for flap counting)
        self.pending: int | None = None  # segment winning evaluations without a move yet
        self.pending_count = 0
        #: Consent to segmentation withdrawn: nothing but this flag and ``profile_ts`` kept.
        self.excluded = False
        #: The input partition the customer's events arrive on (None: stored before it was
        #: kept). With pseudonyms the table key does not hash to it.
        self.partition: int | None = None
        #: ``[cause digest, trigger, previous segment, ts]`` of the last segment change
        #: (re-sent if its cause comes again: the change may have been lost in a crash).
        self.last_change: list[Any] | None = None
        #: Names of the audiences the customer is in, and the version of the definitions
        #: that last judged them ("" : never judged).
        self.audiences: list[str] = []
        self.audiences_version = ""
        #: ``[cause digest, trigger, ts, [[audience, action], ...]]`` of the last audience
        #: changes (re-sent if their cause comes again, like ``last_change``).
        self.last_audience: list[Any] | None = None

    @property
    def clock(self) -> int:
        """The time features are evaluated at: the newest event, or later after a sweep."""
        return max(self.window.as_of, self.evaluated_at)

    def remember(self, event_id: str, ts: int, purchase: bool, lateness_ms: int) -> bool:
        """Record an event id; return ``False`` if the event was already applied."""
        digest = event_digest(event_id)
        if purchase:
            if digest in self.orders:
                return False
            self.orders.append(digest)
            if len(self.orders) > MAX_ORDER_IDS:
                del self.orders[0]
            return True
        horizon = max(self.window.newest_click, ts) - lateness_ms
        if any(d == digest and t >= horizon for d, t in self.recent):
            return False
        if ts >= horizon:
            recent = [r for r in self.recent if r[1] >= horizon]
            recent.append([digest, ts])
            self.recent = recent[-MAX_RECENT_IDS:]
        return True

    def update_profile(self, attributes: dict[str, Any], ts: int) -> bool:
        """Apply a profile update unless a newer one was applied (last writer wins)."""
        if ts < self.profile_ts:
            return False
        self.profile_ts = ts
        for name, value in attributes.items():
            if value is None:
                self.profile.pop(name, None)
            else:
                self.profile[name] = value
        return True

    def holds(self, attributes: dict[str, Any]) -> bool:
        """Whether the profile already is ``attributes`` applied (None: attribute absent)."""
        return all(self.profile.get(name) == value for name, value in attributes.items())

    def exclude(self, ts: int) -> None:
        """Consent withdrawn by a profile update at ``ts``: forget everything else."""
        partition = self.partition
        self.__init__()  # type: ignore[misc]
        self.excluded = True
        self.profile_ts = ts
        self.partition = partition

    def to_bytes(self) -> bytes:
        if self.excluded:
            return orjson.dumps({"x": True, "pt": self.profile_ts, "pp": self.partition})
        document = {
            "w": self.window.to_dict(),
            "p": self.profile,
            "pt": self.profile_ts,
            "s": self.segment,
            "v": self.model_version,
            "e": self.recent,
            "o": self.orders,
            "t": self.sampled_at,
            "c": self.evaluated_at,
            "l": self.left_segment,
            "n": self.evaluations,
            "q": [self.pending, self.pending_count],
            "lc": self.last_change,
            "pp": self.partition,
        }
        if self.audiences_version:  # only where audiences are in use
            document.update(a=self.audiences, av=self.audiences_version, la=self.last_audience)
        return orjson.dumps(document)

    @staticmethod
    def audiences_outdated(stored: bytes, version: str, defined: bool) -> bool:
        """Whether the stored state ``stored`` is to be judged by the audience definitions
        ``version`` (``defined``: they define any audience): not judged by them yet, with
        consent, and with audiences to judge or memberships to leave. A look at the bytes
        of :meth:`to_bytes`, without parsing.

        >>> s = CustomerState()
        >>> CustomerState.audiences_outdated(s.to_bytes(), "0a1b2c3d4e5f", defined=True)
        True
        >>> s.audiences_version = "0a1b2c3d4e5f"
        >>> CustomerState.audiences_outdated(s.to_bytes(), "0a1b2c3d4e5f", defined=True)
        False
        >>> CustomerState.audiences_outdated(CustomerState().to_bytes(), "0a1b2c3d4e5f", False)
        False
        """
        if f'"av":"{version}"'.encode() in stored or stored.startswith(b'{"x":true'):
            return False
        return defined or b'"a":["' in stored

    @classmethod
    def from_bytes(cls, data: bytes) -> CustomerState:
        raw = orjson.loads(data)
        s = cls()
        s.partition = raw.get("pp")
        if raw.get("x"):
            s.excluded = True
            s.profile_ts = raw["pt"]
            return s
        s.window = FeatureWindow.from_dict(raw["w"])
        s.profile = raw["p"]
        s.profile_ts = raw["pt"]
        s.segment = raw["s"]
        s.model_version = raw["v"]
        s.recent = raw["e"]
        s.orders = raw["o"]
        s.sampled_at = raw["t"]
        s.evaluated_at = raw["c"]
        s.left_segment = raw["l"]
        s.evaluations = raw["n"]
        s.pending, s.pending_count = raw["q"]
        s.last_change = raw.get("lc")
        if "av" in raw:
            s.audiences = raw["a"]
            s.audiences_version = raw["av"]
            s.last_audience = raw["la"]
        return s
