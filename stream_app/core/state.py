"""Everything kept per customer in the customer table, and its byte encoding.

De-duplication memory is bounded: the ids of clicks within the allowed lateness of the
customer's newest click (any older copy would be late and change nothing), at most
:data:`MAX_RECENT_IDS`, and the ids of the newest :data:`MAX_ORDER_IDS` purchases (a
late duplicate purchase would otherwise count twice in the lifetime totals). A copy of an
id older than those (a customer with more than 384 clicks within the lateness) is applied
again: the bounds keep a heavy customer's record under 8 KB (``make bench`` measures it).

Next to each remembered id the state keeps a digest of the event's content
(:meth:`~stream_app.core.validation.Event.content_digest`), so that a copy of a remembered
id is told apart: the same content is an honest redelivery (:data:`DUPLICATE`), other
content a producer reusing ids (:data:`CONFLICT`, sent to the DLQ as
``conflicting_duplicate``). Ids remembered by a version that kept no digests have none,
and a copy of them counts as honest. The memory is packed
(:class:`~stream_app.core.dedup.RememberedIds`).

A record is the state's JSON document, followed, when any id is remembered, by a NUL
byte and the packed memory: clicks (``"ne"`` of them), then purchases. JSON never holds
a raw NUL, so the document ends at the first one. Records of earlier versions (the
memory as JSON lists ``"e"``/``"o"`` with base64 digests ``"es"``/``"os"``) are read
and written back in this form.

>>> s = CustomerState()
>>> s.remember("evt-1", 1_000, purchase=False, lateness_ms=3_600_000)
True
>>> s.remember("evt-1", 1_000, purchase=False, lateness_ms=3_600_000)
False
>>> s.admit("o-1", 1_000, True, 3_600_000, content=b"ct1")
'new'
>>> s.admit("o-1", 1_000, True, 3_600_000, content=b"ct1")
'duplicate'
>>> s.admit("o-1", 1_000, True, 3_600_000, content=b"ct2")
'conflict'
>>> r = CustomerState.from_bytes(s.to_bytes())
>>> r.segment is None, len(r.recent), len(r.orders), CustomerState.document(s.to_bytes())["ne"]
(True, 1, 1, 1)
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import orjson

from stream_app.core.changes import event_digest
from stream_app.core.dedup import (
    CONTENT_BYTES,
    KEY_BYTES,
    NO_CONTENT,
    TIMED_ENTRY_BYTES,
    RememberedIds,
    content_key,
    id_key,
)
from stream_app.core.features import FeatureWindow

__all__ = ["CHANGE_HISTORY", "CONFLICT", "DUPLICATE", "MAX_ORDER_IDS", "MAX_RECENT_IDS", "NEW",
           "Admission", "CustomerState", "event_digest"]

#: Click ids remembered at most (13 bytes each in a record).
MAX_RECENT_IDS = 384
#: Purchase ids remembered (9 bytes each in a record).
MAX_ORDER_IDS = 256
#: Segment changes a customer's record keeps for its explanation (about 60 bytes each).
CHANGE_HISTORY = 3
#: Where a record's JSON document ends and its packed memory begins.
_SEPARATOR = b"\x00"
#: Characters of a content digest in records of earlier versions (6 bytes in base64),
#: and what stood for none.
_LEGACY_DIGEST_CHARS = 8
_LEGACY_NO_DIGEST = "*" * _LEGACY_DIGEST_CHARS

#: What :meth:`CustomerState.admit` found: an id not remembered (now it is), a copy of a
#: remembered id with the same content (or none to compare), or with other content.
Admission = Literal["new", "duplicate", "conflict"]
NEW: Admission = "new"
DUPLICATE: Admission = "duplicate"
CONFLICT: Admission = "conflict"


class CustomerState:
    """Feature window, profile, current segment and de-duplication memory of a customer."""

    __slots__ = (
        "audiences", "audiences_version", "changes", "evaluated_at", "evaluations",
        "excluded", "last_audience", "last_change", "left_segment", "model_version", "orders",
        "partition", "pending", "pending_count", "profile", "profile_ts", "recent",
        "sampled_at", "segment", "window",
    )

    def __init__(self, window: FeatureWindow | None = None, recent: RememberedIds | None = None,
                 orders: RememberedIds | None = None) -> None:
        self.window = FeatureWindow() if window is None else window
        self.profile: dict[str, Any] = {}
        self.profile_ts = 0
        self.segment: int | None = None
        self.model_version = 0
        #: The recent clicks' ids, and the newest purchases'.
        self.recent = RememberedIds(timed=True) if recent is None else recent
        self.orders = RememberedIds(timed=False) if orders is None else orders
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
        #: The last :data:`CHANGE_HISTORY` segment changes, oldest first, as ``[ts, trigger,
        #: previous segment, segment, model version, [reason features]]`` (explanations).
        self.changes: list[list[Any]] = []
        #: Names of the audiences the customer is in, and the version of the definitions
        #: that last judged them ("" : never judged).
        self.audiences: list[str] = []
        self.audiences_version = ""
        #: ``[cause digest, trigger, ts, [[audience, action], ...]]`` of the last audience
        #: changes (re-sent if their cause comes again, like ``last_change``).
        self.last_audience: list[Any] | None = None

    def remember_change(self, ts: int, trigger: str, previous: int | None, segment: int,
                        model_version: int, reasons: list[str]) -> None:
        """Keep a segment change for explanations (the newest :data:`CHANGE_HISTORY`)."""
        self.changes = [*self.changes[1 - CHANGE_HISTORY:],
                        [ts, trigger, previous, segment, model_version, reasons]]

    @property
    def clock(self) -> int:
        """The time features are evaluated at: the newest event, or later after a sweep."""
        return max(self.window.as_of, self.evaluated_at)

    def remember(self, event_id: str, ts: int, purchase: bool, lateness_ms: int) -> bool:
        """Record an event id; return ``False`` if the event was already applied (an id
        remembered this way has no content digest: see :meth:`admit`)."""
        return self.admit(event_id, ts, purchase, lateness_ms) == NEW

    def admit(self, event_id: str, ts: int, purchase: bool, lateness_ms: int,
              content: bytes | None = None) -> Admission:
        """Record an event id with the digest of its ``content`` unless it is remembered.

        Returns :data:`NEW` (recorded: apply the event), :data:`DUPLICATE` (the id is
        remembered with the same content, or one of the two has no digest: an honest
        redelivery) or :data:`CONFLICT` (remembered with other content). Nothing changes
        unless the result is :data:`NEW`. Purchases are remembered for the newest
        :data:`MAX_ORDER_IDS`, clicks within ``lateness_ms`` of the newest click (see the
        module).
        """
        key = id_key(event_id)
        if purchase:
            orders = self.orders
            index = orders.find(key)
            if index >= 0:
                return _judge(orders.content(index), content)
            orders.add(key, content)
            orders.trim(MAX_ORDER_IDS)
            return NEW
        recent = self.recent
        horizon = max(self.window.newest_click, ts) - lateness_ms
        index = recent.find(key, horizon)
        if index >= 0:
            return _judge(recent.content(index), content)
        if ts >= horizon:
            recent.expire(horizon)
            recent.add(key, content, ts)
            recent.trim(MAX_RECENT_IDS)
        return NEW

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
            "ne": len(self.recent),
            "t": self.sampled_at,
            "c": self.evaluated_at,
            "l": self.left_segment,
            "n": self.evaluations,
            "q": [self.pending, self.pending_count],
            "lc": self.last_change,
            "pp": self.partition,
        }
        if self.changes:
            document["h"] = self.changes
        if self.audiences_version:  # only where audiences are in use
            document.update(a=self.audiences, av=self.audiences_version, la=self.last_audience)
        if not self.recent.entries and not self.orders.entries:
            return orjson.dumps(document)
        return b"".join((orjson.dumps(document), _SEPARATOR, self.recent.entries,
                         self.orders.entries))

    @staticmethod
    def document(stored: bytes) -> dict[str, Any]:
        """The JSON document of a stored state (without the packed memory), for a look
        at a few fields without building the state."""
        end = stored.find(_SEPARATOR)
        return orjson.loads(stored if end < 0 else stored[:end])

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
        end = stored.find(_SEPARATOR)
        end = len(stored) if end < 0 else end  # the packed memory may hold any bytes
        if stored.find(f'"av":"{version}"'.encode(), 0, end) >= 0 \
                or stored.startswith(b'{"x":true'):
            return False
        return defined or stored.find(b'"a":["', 0, end) >= 0

    @classmethod
    def from_bytes(cls, data: bytes) -> CustomerState:
        end = data.find(_SEPARATOR)
        raw = orjson.loads(data if end < 0 else data[:end])
        if raw.get("x"):
            s = cls()
            s.partition = raw.get("pp")
            s.excluded = True
            s.profile_ts = raw["pt"]
            return s
        recent = orders = None  # none remembered
        if "e" in raw:  # an earlier version's record: the memory as JSON lists
            recent = _legacy(True, [tuple(item) for item in raw["e"]], raw.get("es", ""),
                             MAX_RECENT_IDS)
            orders = _legacy(False, [(item, 0) for item in raw["o"]], raw.get("os", ""),
                             MAX_ORDER_IDS)
        elif end >= 0:
            packed = memoryview(data)[end + 1:]
            clicks = raw["ne"] * TIMED_ENTRY_BYTES
            recent = RememberedIds(True, packed[:clicks])
            orders = RememberedIds(False, packed[clicks:])
        # The parts built once (not an empty window and memory first, then replaced).
        s = cls(FeatureWindow.from_dict(raw["w"]), recent, orders)
        s.partition = raw.get("pp")
        s.profile = raw["p"]
        s.profile_ts = raw["pt"]
        s.segment = raw["s"]
        s.model_version = raw["v"]
        s.sampled_at = raw["t"]
        s.evaluated_at = raw["c"]
        s.left_segment = raw["l"]
        s.evaluations = raw["n"]
        s.pending, s.pending_count = raw["q"]
        s.last_change = raw.get("lc")
        s.changes = raw.get("h", [])
        if "av" in raw:
            s.audiences = raw["a"]
            s.audiences_version = raw["av"]
            s.last_audience = raw["la"]
        return s


def _judge(kept: bytes, content: bytes | None) -> Admission:
    """Whether a copy of a remembered id whose content digest is ``kept`` is an honest
    one: the same ``content``, or a digest missing on either side."""
    if content is None or kept == NO_CONTENT:
        return DUPLICATE  # remembered by a version without digests (or nothing to compare)
    return DUPLICATE if kept == content_key(content) else CONFLICT


def _legacy(timed: bool, ids: list[tuple[int, int]], sums: str, keep: int) -> RememberedIds:
    """The memory of an earlier version's record: ``ids`` as ``(event_digest, ts)``
    (``ts`` 0 for purchases), the last ``len(sums) // 8`` of them with base64 content
    digests ``sums`` (``"********"``: none), newest ``keep`` kept.

    >>> m = _legacy(False, [(event_digest("a"), 0), (event_digest("b"), 0)], "YWJjZGVm", 8)
    >>> m.keys() == [id_key("a"), id_key("b")], m.content(0) == NO_CONTENT, m.content(1)
    (True, True, b'abc')
    """
    memory = RememberedIds(timed)
    digests = min(len(sums) // _LEGACY_DIGEST_CHARS, len(ids))
    sums = sums[len(sums) - digests * _LEGACY_DIGEST_CHARS:]
    first = len(ids) - digests  # the ids before it were stored without digests
    for index, (digest, ts) in enumerate(ids):
        content = None
        if index >= first:
            at = (index - first) * _LEGACY_DIGEST_CHARS
            text = sums[at:at + _LEGACY_DIGEST_CHARS]
            if text != _LEGACY_NO_DIGEST:
                content = base64.urlsafe_b64decode(text)[:CONTENT_BYTES]
        memory.add((digest >> 15).to_bytes(KEY_BYTES, "big"), content, ts)
    memory.trim(keep)
    return memory
