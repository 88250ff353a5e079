"""The segment catalogue: what each new model version changes in the *meaning* of segments.

A new :class:`~stream_app.model.segmentation.SegmentModel` version may add segments,
retire some, rename some or move their centres. :func:`catalogue_changes` compares two
versions and returns one :class:`CatalogueChange` per affected segment id, in id order,
for the ``segment-catalogue`` topic (``schemas/segment-catalogue.schema.json``).

Centres are compared in z-score space (:meth:`SegmentModel.z_scores`: population
standard deviations from the mean, feature weights taken out), each model with its own
scaling: a centre's z-scores say where the segment sits *relative to the population*.
Distances are Euclidean in that space; :data:`MOVE_THRESHOLD` is the one bound. The rules,
for each segment id (at most one event per id and version):

* no previous version: every active segment is ``created``;
* active now, and new (``id >= previous.k``) or inactive before: ``revived`` (``revives``
  the nearest retired segment of the new version) when its centre lies within
  :data:`MOVE_THRESHOLD` of the last centre of a segment that is retired in the new
  version, otherwise ``created``;
* active before, retired now: ``merged`` (``into`` the active segment of the new version
  whose centre is nearest to the retired segment's centre in the previous version) when
  that distance is at most :data:`MOVE_THRESHOLD`, otherwise ``retired`` (``successor``:
  that nearest active segment, where its members go; None when none is active);
* active in both: ``relabelled`` when the label changed, else ``moved`` when the centre
  moved by more than :data:`MOVE_THRESHOLD` (a relabel wins over a move);
* anything else (unchanged, or inactive in both): no event.

Ties between equally near segments go to the lowest id. When the two versions have
different features, centres are compared on the features they share; with none shared
the previous version is ignored (every active segment is ``created``).

:class:`SegmentHistory` folds the messages back (e.g. read from the topic) into each
segment's history.

>>> import numpy as np
>>> from stream_app.model.segmentation import SegmentModel
>>> def snapshot(version, centres, labels, active):
...     return SegmentModel(
...         version=version, features=("orders_90d", "views_7d"),
...         transforms=("identity", "identity"), impute=np.zeros(2),
...         mean=np.array([2.0, 10.0]), std=np.array([1.0, 5.0]),
...         centres=np.array(centres, dtype=float), labels=labels, samples_seen=100,
...         created_at=0.0, active=np.array(active))
>>> v1 = snapshot(1, [[2, 0], [0, 3], [-1, -1]],
...               ("frequent buyer", "heavy browser", "rarely buys"), [True] * 3)
>>> [(e.segment, e.kind) for e in catalogue_changes(None, v1, now_ms=0)]
[(0, 'created'), (1, 'created'), (2, 'created')]
>>> v2 = snapshot(2, [[2, 1], [0, 3], [-1, -1], [4, 4]],
...               ("frequent buyer", "heavy browser · app", "rarely buys",
...                "frequent buyer · heavy browser"), [True, True, False, True])
>>> events = catalogue_changes(v1, v2, sizes={0: 120, 1: 80, 3: 5}, now_ms=0)
>>> [(e.segment, e.kind, e.related, e.moved_by) for e in events]
[(0, 'moved', None, 1.0), (1, 'relabelled', None, 0.0), (2, 'retired', 0, 3.6056),
 (3, 'created', None, None)]
>>> message = events[2].to_dict()
>>> message["successor"], message["size"], message["typical"], message["emitted_at"]
(0, 0, '1 order in 90 days, 5 views in 7 days', '1970-01-01T00:00:00.000Z')
>>> history = SegmentHistory()
>>> for e in catalogue_changes(None, v1, now_ms=0) + events:
...     history.add(e.to_dict())
>>> history.of(1)
{'first_version': 1, 'last_relabel_version': 2, 'previous_label': 'heavy browser',
 'last_event': {'kind': 'relabelled', 'model_version': 2}}
>>> history.announced_version, len(history)
(2, 7)
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from stream_app.core.changes import deterministic_id, iso_ms
from stream_app.model.labels import typical_values
from stream_app.model.segmentation import SegmentModel

#: The kinds of catalogue event (``schemas/segment-catalogue.schema.json``).
CATALOGUE_KINDS = ("created", "revived", "retired", "merged", "relabelled", "moved")

#: A centre that moves by more than this many population standard deviations (Euclidean
#: distance between the two versions' centres in z-score space, :meth:`SegmentModel.z_scores`,
#: weights taken out) is announced as ``moved``. The same bound decides whether a retired
#: segment is ``merged`` into an active one and whether a new one ``revived`` a retired one.
MOVE_THRESHOLD = 0.5

#: The name of the id a kind of event refers to, in its message.
RELATED_KEYS = {"merged": "into", "retired": "successor", "revived": "revives"}

#: How many messages :meth:`SegmentHistory.recent` keeps.
RECENT = 100


@dataclass(frozen=True, slots=True)
class CatalogueChange:
    """One change in the meaning of a segment, announced with a model version.

    Attributes
    ----------
    segment : int
        The segment id.
    kind : str
        One of :data:`CATALOGUE_KINDS`.
    model_version : int
        The version that makes the change.
    previous_model_version : int or None
        The version compared with (None for the first version).
    label : str
        The segment's label in ``model_version``.
    previous_label : str or None
        Its label in the previous version (None when the id is new there).
    active : bool
        Whether customers can be assigned to the segment in ``model_version``.
    size : int or None
        Customers in the segment when announced (None when unknown).
    typical : str
        The segment's typical values in plain words
        (:func:`~stream_app.model.labels.typical_values`).
    centre : dict of str to float
        The segment's centre in feature units (rounded to 4 decimals).
    moved_by : float or None
        How far the segment's meaning moved, in population standard deviations (z-score
        space, rounded to 4 decimals): from its previous centre to its centre now
        (``relabelled``, ``moved``) or to the centre of the segment its members go to
        (``merged``, ``retired``), or from the retired segment it revives to it
        (``revived``). None for ``created`` and for ``retired`` without a successor.
    related : int or None
        The ``into`` (merged), ``successor`` (retired) or ``revives`` (revived) id.
    emitted_at_ms : int
        Wall clock (epoch milliseconds) when the event was made.
    """

    segment: int
    kind: str
    model_version: int
    previous_model_version: int | None
    label: str
    previous_label: str | None
    active: bool
    size: int | None
    typical: str
    centre: dict[str, float]
    moved_by: float | None
    related: int | None
    emitted_at_ms: int

    @property
    def event_id(self) -> str:
        """Deterministic: the same model version, segment and kind give the same id in
        every process (delivery is at least once; subscribers drop duplicates by it)."""
        return deterministic_id("segment-catalogue", self.model_version, self.segment,
                                 self.kind)

    @property
    def key(self) -> bytes:
        """The Kafka key: the segment id."""
        return str(self.segment).encode()

    def to_dict(self) -> dict[str, Any]:
        """The message (``schemas/segment-catalogue.schema.json``).

        Returns
        -------
        dict
            ``into``, ``successor`` or ``revives`` appears only for the kind it belongs
            to (merged, retired, revived).
        """
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "segment": self.segment,
            "kind": self.kind,
            "model_version": self.model_version,
            "previous_model_version": self.previous_model_version,
            "label": self.label,
            "previous_label": self.previous_label,
            "active": self.active,
            "size": self.size,
            "typical": self.typical,
            "centre": dict(self.centre),
            "moved_by": self.moved_by,
        }
        related = RELATED_KEYS.get(self.kind)
        if related is not None:
            out[related] = self.related
        out["emitted_at"] = iso_ms(self.emitted_at_ms)
        return out

    def to_json(self) -> bytes:
        """The message as JSON bytes."""
        return orjson.dumps(self.to_dict())


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.sum((a - b) ** 2)))


def _nearest(point: np.ndarray, centres: np.ndarray, ids: list[int]) -> tuple[int | None, float]:
    """The id among ``ids`` whose row of ``centres`` is nearest to ``point`` (lowest id on
    ties) and its distance; ``(None, inf)`` without ids."""
    best: int | None = None
    best_d = float("inf")
    for i in ids:
        d = _distance(point, centres[i])
        if d < best_d:
            best, best_d = i, d
    return best, best_d


def catalogue_changes(
    previous: SegmentModel | None,
    model: SegmentModel,
    sizes: Mapping[int, int] | None = None,
    now_ms: int | None = None,
) -> list[CatalogueChange]:
    """The changes in the meaning of segments that ``model`` makes over ``previous``.

    Centres are compared in z-score space (each model's :meth:`SegmentModel.z_scores` of
    its own centres; on the features both versions share). For each segment id, at most
    one event:

    * ``previous`` is None: every active segment is ``created``;
    * active in ``model``, and ``id >= previous.k`` or inactive in ``previous``:
      ``revived`` when its centre lies within :data:`MOVE_THRESHOLD` of the (last) centre
      of a segment that is inactive in ``model`` (``related``: the nearest such), else
      ``created``;
    * active in ``previous``, inactive in ``model``: ``merged`` when the active segment
      of ``model`` nearest to its centre in ``previous`` lies within
      :data:`MOVE_THRESHOLD` (``related``: that segment), else ``retired`` (``related``:
      that nearest active segment, the successor of its members; None when ``model`` has
      no active segment);
    * active in both: ``relabelled`` when the label changed, else ``moved`` when the
      centre moved by more than :data:`MOVE_THRESHOLD`.

    Ties go to the lowest id.

    Parameters
    ----------
    previous : SegmentModel or None
        The version announced before (None for the first version).
    model : SegmentModel
        The new version.
    sizes : mapping of int to int, optional
        Customers per segment id (an id not in it has none); sizes are None without it.
    now_ms : int, optional
        The events' time (epoch milliseconds); the wall clock by default.

    Returns
    -------
    list of CatalogueChange
        In segment id order.
    """
    emitted = int(time.time() * 1000) if now_ms is None else int(now_ms)
    compared = _VersionPair.of(previous, model)
    units = model.centres_in_feature_units()
    before = compared.previous if compared is not None else None
    events: list[CatalogueChange] = []
    for i in range(model.k):
        what = compared.what_happened(i) if compared is not None else (
            ("created", None, None) if model.is_active(i) else None)
        if what is None:
            continue
        kind, moved_by, related = what
        events.append(CatalogueChange(
            segment=i, kind=kind, model_version=model.version,
            previous_model_version=None if before is None else before.version,
            label=model.labels[i],
            previous_label=before.labels[i] if before is not None and i < before.k else None,
            active=model.is_active(i),
            size=None if sizes is None else int(sizes.get(i, 0)),
            typical=typical_values(model.features, units[i]),
            centre={n: round(float(v), 4) + 0.0 for n, v in zip(model.features, units[i])},
            moved_by=None if moved_by is None else round(moved_by, 4),
            related=related, emitted_at_ms=emitted,
        ))
    return events


#: What happened to one segment id: kind, distance moved (or to ``related``), related id.
_Happening = tuple[str, float | None, int | None]


@dataclass(frozen=True)
class _VersionPair:
    """Two model versions' centres as z-scores (each model's own scaler) on the features
    both have."""

    previous: SegmentModel
    model: SegmentModel
    z: np.ndarray
    previous_z: np.ndarray
    active_ids: list[int]
    retired_ids: list[int]

    @classmethod
    def of(cls, previous: SegmentModel | None, model: SegmentModel) -> _VersionPair | None:
        """The pair, or None without a previous version or without shared features."""
        if previous is None:
            return None
        shared = [name for name in model.features if name in previous.features]
        if not shared:
            return None
        z = model.z_scores(model.centres)[:, [model.features.index(n) for n in shared]]
        previous_z = previous.z_scores(previous.centres)[
            :, [previous.features.index(n) for n in shared]]
        retired = [i for i in range(model.k) if not model.is_active(i)]
        return cls(previous, model, z, previous_z, model.active_ids, retired)

    def what_happened(self, i: int) -> _Happening | None:
        """The event of segment ``i`` (see :func:`catalogue_changes`), None for none."""
        now_active, was_active = self.model.is_active(i), self.previous.is_active(i)
        if now_active and not was_active:
            revives, d = _nearest(self.z[i], self.z, self.retired_ids)
            if revives is not None and d <= MOVE_THRESHOLD:
                return "revived", d, revives
            return "created", None, None
        if was_active and not now_active:
            into, d = _nearest(self.previous_z[i], self.z, self.active_ids)
            if into is not None and d <= MOVE_THRESHOLD:
                return "merged", d, into
            return "retired", None if into is None else d, into
        if was_active and now_active:
            d = _distance(self.previous_z[i], self.z[i])
            if self.model.labels[i] != self.previous.labels[i]:
                return "relabelled", d, None
            if d > MOVE_THRESHOLD:
                return "moved", d, None
        return None


class SegmentHistory:
    """Each segment's history, folded from catalogue messages (:meth:`CatalogueChange.to_dict`,
    e.g. read back from the ``segment-catalogue`` topic), in any order.

    A message whose ``event_id`` was folded already is ignored. Per segment:
    ``first_version`` is the smallest model version of its ``created``/``revived``
    events, ``last_relabel_version`` the largest of its ``relabelled`` ones (with the
    label it had before, ``previous_label``), and ``last_event`` its event of the largest
    model version.
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._segments: dict[int, dict[str, Any]] = {}
        self._recent: list[tuple[tuple[int, int], dict[str, Any]]] = []  # oldest first
        self._folded = 0
        self._announced = 0

    def add(self, message: Mapping[str, Any]) -> None:
        """Fold one catalogue message (a duplicate ``event_id`` is ignored).

        Parameters
        ----------
        message : mapping
            A message as :meth:`CatalogueChange.to_dict` makes it.
        """
        segment = int(message["segment"])
        kind = str(message["kind"])
        version = int(message["model_version"])
        event_id = str(message.get("event_id")
                       or deterministic_id("segment-catalogue", version, segment, kind))
        if event_id in self._seen:
            return
        self._seen.add(event_id)
        self._folded += 1
        self._announced = max(self._announced, version)
        state = self._segments.setdefault(segment, {
            "first_version": None, "last_relabel_version": None, "previous_label": None,
            "last_event": None,
        })
        if kind in ("created", "revived") and (
                state["first_version"] is None or version < state["first_version"]):
            state["first_version"] = version
        if kind == "relabelled" and (state["last_relabel_version"] is None
                                     or version >= state["last_relabel_version"]):
            state["last_relabel_version"] = version
            state["previous_label"] = message.get("previous_label")
        last = state["last_event"]
        if last is None or version >= last["model_version"]:
            state["last_event"] = {"kind": kind, "model_version": version}
        order = (version, -segment)
        bisect.insort(self._recent, (order, dict(message)), key=lambda item: item[0])
        if len(self._recent) > RECENT:
            del self._recent[0]

    def of(self, segment: int) -> dict[str, Any]:
        """The history of ``segment``.

        Returns
        -------
        dict
            ``first_version``, ``last_relabel_version``, ``previous_label`` (the label
            before the last relabel) and ``last_event`` (``{"kind", "model_version"}``);
            all None for a segment never announced.
        """
        state = self._segments.get(segment)
        if state is None:
            return {"first_version": None, "last_relabel_version": None,
                    "previous_label": None, "last_event": None}
        out = dict(state)
        out["last_event"] = None if state["last_event"] is None else dict(state["last_event"])
        return out

    @property
    def announced_version(self) -> int:
        """The highest model version folded (0 before any)."""
        return self._announced

    def recent(self, n: int) -> list[dict[str, Any]]:
        """Up to ``n`` of the latest messages (at most :data:`RECENT` are kept), newest
        model version first, in segment id order within a version (whatever the order
        they were folded in)."""
        if n <= 0:
            return []
        return [dict(message) for _, message in reversed(self._recent[-n:])]

    def __len__(self) -> int:
        """How many distinct messages were folded."""
        return self._folded
