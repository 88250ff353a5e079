"""What candidate audience definitions would hold, judged on stored customers without
applying them (``POST /audiences/preview``, ``stream-app audiences preview``).

Each worker folds its own customers into an :class:`AudiencePreview` (read-only: no state
is written and nothing is sent), and the worker asked merges every worker's part with
:func:`merge_previews`. A customer is judged as the worker would judge it once the
definitions are applied: an audience of the same name as an applied one keeps its
members' hysteresis (``member_after`` with the customer's current membership), a new
audience starts with no members, and an applied audience missing from the candidate file
loses all of them.

>>> candidate = AudienceSet.from_document({"audiences": [
...     {"name": "buyers", "condition": "orders_30d >= 1"},
...     {"name": "browsers", "condition": "views_7d >= 5"}]})
>>> applied = AudienceSet.from_document({"audiences": [
...     {"name": "buyers", "condition": "orders_30d >= 2"}]})
>>> preview = AudiencePreview(candidate, applied, sample_size=2)
>>> preview.add("c1", {"orders_30d": 1, "views_7d": 9, "segment": 4}, current=[])
>>> preview.add("c2", {"orders_30d": 3, "views_7d": 0, "segment": 2}, current=["buyers"])
>>> part = preview.document()
>>> part["audiences"]["buyers"]["members"], part["audiences"]["buyers"]["would_enter"]
(2, 1)
>>> part["audiences"]["buyers"]["overlap"], part["audiences"]["browsers"]["segments"]
({'browsers': 1}, {'4': 1})
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from stream_app.core.audiences import AudienceSet

#: Member ids a preview shows per audience (with the token).
SAMPLE_SIZE = 10


class AudiencePreview:
    """Members, entries, exits, segment and audience overlaps of ``candidate`` on the
    customers :meth:`add` is given, compared with the ``applied`` definitions."""

    def __init__(self, candidate: AudienceSet, applied: AudienceSet,
                 sample_size: int = SAMPLE_SIZE) -> None:
        self.candidate = candidate
        self.applied = applied
        self.sample_size = sample_size
        self.customers = 0
        names = [a.name for a in candidate.audiences]
        self.members = dict.fromkeys(names, 0)
        self.entering = dict.fromkeys(names, 0)
        self.exiting = dict.fromkeys(names, 0)
        self.segments: dict[str, Counter[str]] = {name: Counter() for name in names}
        self.overlap: dict[str, Counter[str]] = {name: Counter() for name in names}
        self.samples: dict[str, list[str]] = {name: [] for name in names}
        #: Applied audiences the candidate file drops: members who would leave them.
        self.dropped = {a.name: 0 for a in applied.audiences if a.name not in candidate}

    def add(self, customer_id: str, attributes: Mapping[str, object],
            current: Sequence[str]) -> None:
        """Judge one customer (``current``: the audiences it is in now)."""
        self.customers += 1
        inside = [a.name for a in self.candidate.audiences
                  if a.member_after(a.name in current, attributes)]
        segment = attributes.get("segment")
        for name in inside:
            self.members[name] += 1
            if name not in current:
                self.entering[name] += 1
            self.segments[name]["none" if segment is None else str(segment)] += 1
            self.overlap[name].update(other for other in inside if other != name)
            if len(self.samples[name]) < self.sample_size:
                self.samples[name].append(customer_id)
        for name in current:
            if name in self.exiting and name not in inside:
                self.exiting[name] += 1
            elif name in self.dropped:
                self.dropped[name] += 1

    def document(self) -> dict[str, Any]:
        """This part of the preview as JSON-ready data (what :func:`merge_previews` sums)."""
        return {
            "customers": self.customers,
            "audiences": {
                name: {"members": self.members[name], "would_enter": self.entering[name],
                       "would_exit": self.exiting[name], "segments": dict(self.segments[name]),
                       "overlap": dict(self.overlap[name]), "sample": self.samples[name]}
                for name in self.members},
            "dropped": dict(self.dropped),
        }


def merge_previews(parts: Iterable[Mapping[str, Any]], candidate: AudienceSet,
                   sample_size: int = SAMPLE_SIZE) -> dict[str, Any]:
    """The cluster-wide preview: the sum of every worker's :meth:`AudiencePreview.document`,
    audiences in the candidate file's order, with their definitions.

    >>> c = AudienceSet.from_document({"audiences": [{"name": "a", "condition": "age > 1"}]})
    >>> one = {"customers": 2, "audiences": {"a": {"members": 1, "would_enter": 1,
    ...        "would_exit": 0, "segments": {"3": 1}, "overlap": {}, "sample": ["x"]}},
    ...        "dropped": {"old": 1}}
    >>> merged = merge_previews([one, one], c)
    >>> merged["customers"], merged["audiences"][0]["members"], merged["audiences"][0]["sample"]
    (4, 2, ['x', 'x'])
    >>> merged["dropped"]
    [{'name': 'old', 'would_exit': 2}]
    """
    parts = list(parts)
    audiences = []
    for audience in candidate.audiences:
        totals = {"members": 0, "would_enter": 0, "would_exit": 0}
        segments: Counter[str] = Counter()
        overlap: Counter[str] = Counter()
        sample: list[str] = []
        for part in parts:
            mine = part["audiences"].get(audience.name)
            if mine is None:
                continue
            for figure in totals:
                totals[figure] += mine[figure]
            segments.update(mine["segments"])
            overlap.update(mine["overlap"])
            sample.extend(mine["sample"][:max(0, sample_size - len(sample))])
        audiences.append({
            "name": audience.name, "condition": audience.condition,
            "exit_condition": audience.exit_condition, **totals,
            "segments": dict(sorted(segments.items(), key=lambda kv: (-kv[1], kv[0]))),
            "overlap": dict(sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0]))),
            "sample": sample,
        })
    dropped: Counter[str] = Counter()
    for part in parts:
        dropped.update(part.get("dropped", {}))
    return {
        "version": candidate.version,
        "customers": sum(part["customers"] for part in parts),
        "audiences": audiences,
        "dropped": [{"name": name, "would_exit": n} for name, n in sorted(dropped.items())],
    }


def every_partition_once(reported: Iterable[int], partitions: int) -> bool:
    """Whether the workers' parts of a preview cover partitions ``0 .. partitions - 1``,
    each exactly once (during a rebalance two workers can both report a partition, whose
    customers the sum would then count twice).

    >>> every_partition_once([0, 1, 2, 3], 4), every_partition_once([0, 1, 3], 4)
    (True, False)
    >>> every_partition_once([0, 1, 1, 2, 3], 4)
    False
    """
    return sorted(reported) == list(range(partitions))
