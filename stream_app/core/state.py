"""Everything kept per customer in the customer table, and its byte encoding.

De-duplication memory is bounded: the ids of clicks within the allowed lateness of the
customer's newest click (any older copy would be late and change nothing), at most
:data:`MAX_RECENT_IDS`, and the ids of the newest :data:`MAX_ORDER_IDS` purchases (a
late duplicate purchase would otherwise count twice in the lifetime totals).

Next to each remembered id the state keeps a 48-bit digest of the event's content, 8
base64 characters (:meth:`~stream_app.core.validation.Event.content_digest`), so that a copy
of a remembered id is told apart: the same content is an honest redelivery
(:data:`DUPLICATE`), other content a producer reusing ids (:data:`CONFLICT`, sent to the
DLQ as ``conflicting_duplicate``). The digests of a list are one string (``"es"``,
``"os"``), kept and stored as it is (no encoding per event), parallel to the ids and
aligned at their end: ids stored by a version that kept no digests (the first ones of a
list loaded from such a state) have none, and a copy of them counts as honest.

>>> s = CustomerState()
>>> s.remember("evt-1", 1_000, purchase=False, lateness_ms=3_600_000)
True
>>> s.remember("evt-1", 1_000, purchase=False, lateness_ms=3_600_000)
False
>>> s.admit("o-1", 1_000, True, 3_600_000, content="content1")
'new'
>>> s.admit("o-1", 1_000, True, 3_600_000, content="content1")
'duplicate'
>>> s.admit("o-1", 1_000, True, 3_600_000, content="content2")
'conflict'
>>> CustomerState.from_bytes(s.to_bytes()).segment is None
True
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from stream_app.core.changes import event_digest
from stream_app.core.features import FeatureWindow

MAX_RECENT_IDS = 1024
MAX_ORDER_IDS = 1000
#: Characters of the content digest kept next to each remembered event id (6 bytes in
#: base64, see ``Event.content_digest``).
DIGEST_CHARS = 8
#: The digest of an id remembered without its content (:meth:`CustomerState.remember`
#: called without one): a copy of it counts as honest.
NO_DIGEST = "*" * DIGEST_CHARS  # not a base64 character: never a real digest

#: What :meth:`CustomerState.admit` found: an id not remembered (now it is), a copy of a
#: remembered id with the same content (or none to compare), or with other content.
Admission = Literal["new", "duplicate", "conflict"]
NEW: Admission = "new"
DUPLICATE: Admission = "duplicate"
CONFLICT: Admission = "conflict"


class CustomerState:
    """Feature window, profile, current segment and de-duplication memory of a customer."""

    __slots__ = (
        "audiences", "audiences_version", "evaluated_at", "evaluations", "excluded",
        "last_audience", "last_change", "left_segment", "model_version", "order_sums", "orders",
        "partition", "pending", "pending_count", "profile", "profile_ts", "recent",
        "recent_sums", "sampled_at", "segment", "window",
    )

    def __init__(self) -> None:
        self.window = FeatureWindow()
        self.profile: dict[str, Any] = {}
        self.profile_ts = 0
        self.segment: int | None = None
        self.model_version = 0
        self.recent: list[list[int]] = []  # [digest, ts] of recent events
        self.orders: list[int] = []  # digests of the newest purchases
        #: Content digests (:data:`DIGEST_CHARS` each) of the last ``len // DIGEST_CHARS``
        #: entries of ``recent`` and ``orders``, in their order; entries before those
        #: (stored by a version that kept no digests) have none.
        self.recent_sums = ""
        self.order_sums = ""
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
        """Record an event id; return ``False`` if the event was already applied (an id
        remembered this way has no content digest: see :meth:`admit`)."""
        return self.admit(event_id, ts, purchase, lateness_ms) == NEW

    def admit(self, event_id: str, ts: int, purchase: bool, lateness_ms: int,
              content: str | None = None) -> Admission:
        """Record an event id with the digest of its ``content`` unless it is remembered.

        Returns :data:`NEW` (recorded: apply the event), :data:`DUPLICATE` (the id is
        remembered with the same content, or one of the two has no digest: an honest
        redelivery) or :data:`CONFLICT` (remembered with other content). Nothing changes
        unless the result is :data:`NEW`. Purchases are remembered for the newest
        :data:`MAX_ORDER_IDS`, clicks within ``lateness_ms`` of the newest click (see the
        module).
        """
        digest = event_digest(event_id)
        if purchase:
            orders = self.orders
            try:
                index = orders.index(digest)
            except ValueError:
                pass
            else:
                return _judge(self.order_sums, len(orders), index, content)
            orders.append(digest)
            self.order_sums += content or NO_DIGEST
            if len(orders) > MAX_ORDER_IDS:
                del orders[0]
                if len(self.order_sums) > DIGEST_CHARS * len(orders):
                    self.order_sums = self.order_sums[DIGEST_CHARS:]
            return NEW
        horizon = max(self.window.newest_click, ts) - lateness_ms
        for index, (d, t) in enumerate(self.recent):
            if d == digest and t >= horizon:
                return _judge(self.recent_sums, len(self.recent), index, content)
        if ts >= horizon:
            keep = [i for i, r in enumerate(self.recent) if r[1] >= horizon]
            sums = self.recent_sums
            if len(keep) < len(self.recent):
                sums = _kept(sums, len(self.recent), keep)
            recent = [self.recent[i] for i in keep]
            recent.append([digest, ts])
            sums += content or NO_DIGEST
            self.recent = recent[-MAX_RECENT_IDS:]
            self.recent_sums = sums[-DIGEST_CHARS * len(self.recent):]
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
            "e": self.recent,
            "o": self.orders,
            "es": self.recent_sums,
            "os": self.order_sums,
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
        # States stored before content digests were kept have none ("es"/"os" absent).
        s.recent_sums = _aligned(raw.get("es", ""), len(s.recent))
        s.order_sums = _aligned(raw.get("os", ""), len(s.orders))
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


def _judge(sums: str, count: int, index: int, content: str | None) -> Admission:
    """Whether the copy of entry ``index`` of a list of ``count`` remembered ids, whose
    last ``len(sums) // DIGEST_CHARS`` have the digests ``sums``, is an honest one: the
    same ``content``, or a digest missing on either side."""
    slot = index - (count - len(sums) // DIGEST_CHARS)
    if content is None or slot < 0:
        return DUPLICATE  # remembered by a version without digests (or nothing to compare)
    kept = sums[slot * DIGEST_CHARS:(slot + 1) * DIGEST_CHARS]
    return DUPLICATE if kept in (content, NO_DIGEST) else CONFLICT


def _kept(sums: str, count: int, keep: list[int]) -> str:
    """The digests of the entries ``keep`` (ascending indices into a list of ``count``
    ids whose last ``len(sums) // DIGEST_CHARS`` have the digests ``sums``)."""
    first = count - len(sums) // DIGEST_CHARS
    return "".join(sums[(i - first) * DIGEST_CHARS:(i - first + 1) * DIGEST_CHARS]
                   for i in keep if i >= first)


def _aligned(sums: str, count: int) -> str:
    """``sums`` as digests of at most the last ``count`` ids (whole digests only)."""
    usable = min(len(sums) // DIGEST_CHARS, count) * DIGEST_CHARS
    return sums[len(sums) - usable:] if usable else ""
