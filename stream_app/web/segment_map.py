"""What the live segment map (``GET /`` on a worker) shows, with no Faust import.

* :func:`project_centres` draws the segment centres on a plane: the first two principal
  components of the standardised centres, with the share of their spread that the picture
  keeps, and words for what each axis means (:func:`axis_words`).
* :class:`SizeHistory` keeps the cluster-wide segment sizes over time (one point every
  10 s for the last hour: a bounded ring).
* :class:`RecentChanges` keeps the last segment changes a worker published, cheap to record
  on the hot path, and gives them with or without customer ids.
* :func:`map_document` is the body of ``GET /map/data`` that the page polls, and
  :func:`map_page` the page itself (``stream_app/web/map.html``) with a Content-Security-
  Policy that admits nothing but its own inline script and style and requests to the worker.

>>> p = project_centres([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
>>> [(round(x, 2), round(y, 2)) for x, y in p.points]
[(-0.54, -0.51), (1.37, 0.07), (-0.83, 0.44)]
>>> round(p.explained, 3)
1.0
>>> recent = RecentChanges(capacity=2)
>>> recent.record(10.0, b"c-1", (None, 3), "event")
>>> recent.record(11.0, b"c-2", (3, 5), "model_update")
>>> recent.record(12.0, b"c-1", (3, -2), "consent")
>>> [(c["customer_id"], c["previous_segment"], c["segment"]) for c in recent.newest_first()]
[('c-1', 3, None), ('c-2', 3, 5)]
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from itertools import islice
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from stream_app.model.labels import WORDS

#: One size point per this many seconds, for this long (361 points).
HISTORY_INTERVAL_S = 10.0
HISTORY_SPAN_S = 3600.0
#: Segment changes kept per worker (and shown by the page, from all workers).
RECENT_CHANGES = 100
#: A Content-Security-Policy source list that allows nothing.
CSP_NONE = "'none'"
#: Features named per end of a map axis.
AXIS_FEATURES = 2
#: Segment-catalogue messages the page shows (the newest).
CATALOGUE_SHOWN = 10


@dataclass(frozen=True)
class Projection:
    """Segment centres on a plane.

    ``points`` holds one ``(x, y)`` per centre in standardised units (distances on the
    plane are distances between centres, as far as two axes can show them); ``explained``
    is the share (0..1) of the centres' spread around their mean that the two axes keep;
    ``components`` the two unit axes in feature space (2 × d; a row of zeros for an axis
    that has nothing to show).
    """

    points: list[tuple[float, float]]
    explained: float
    components: np.ndarray


def project_segments(centres: ArrayLike, active: ArrayLike) -> Projection:
    """:func:`project_centres` of the active segments, with one point per segment id (a
    retired segment's row sits at the origin and shapes no axis).

    >>> p = project_segments([[0.0, 0.0], [50.0, 50.0], [3.0, 4.0]], [True, False, True])
    >>> [(round(x, 3), y) for x, y in p.points]
    [(-2.5, 0.0), (0.0, 0.0), (2.5, 0.0)]
    """
    x = np.asarray(centres, dtype=float)
    live = np.flatnonzero(np.asarray(active, dtype=bool))
    shown = project_centres(x[live].reshape(len(live), x.shape[1]))
    points = [(0.0, 0.0)] * len(x)
    for segment, point in zip(live.tolist(), shown.points):
        points[segment] = point
    return Projection(points, shown.explained, shown.components)


def project_centres(centres: ArrayLike) -> Projection:
    """Principal-component projection of the segment centres (K × d, standardised) to 2-D.

    Unweighted by segment size, so the picture changes only when the centres do. The sign
    of each axis is fixed (its largest loading is positive, as scikit-learn's
    ``svd_flip``), so a new model version with about the same centres gives about the same
    picture. Degenerate cases: no centre gives no point; one centre, or centres that all
    coincide, sit at the origin with ``explained`` 1.0 (nothing is lost); two centres, or
    one feature, lie on the x axis.

    >>> project_centres([[1.0, 5.0]]).points
    [(0.0, 0.0)]
    >>> [(round(x, 3), y) for x, y in project_centres([[0.0, 0.0], [3.0, 4.0]]).points]
    [(-2.5, 0.0), (2.5, 0.0)]
    >>> project_centres(np.zeros((0, 7))).points
    []
    """
    x = np.asarray(centres, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"centres must be K × d, got shape {x.shape}")
    x = np.where(np.isfinite(x), x, 0.0)  # a broken value must not break the picture
    k, d = x.shape
    components = np.zeros((2, d))
    if k == 0:
        return Projection([], 1.0, components)
    centred = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    total = float(np.sum(singular**2))
    rank = int(np.sum(singular > 1e-9 * max(1.0, float(singular.max(initial=0.0)))))
    for j in range(min(2, rank)):
        axis = vt[j]
        if axis[np.argmax(np.abs(axis))] < 0:
            axis = -axis
        components[j] = axis
    coordinates = centred @ components.T
    explained = 1.0 if total <= 0.0 else float(np.sum(singular[:2] ** 2) / total)
    points = [(round(float(a), 6) + 0.0, round(float(b), 6) + 0.0) for a, b in coordinates]
    return Projection(points, min(1.0, explained), components)


def axis_words(features: Sequence[str], axis: ArrayLike, top: int = AXIS_FEATURES
               ) -> tuple[str, str]:
    """What the low and the high end of a map axis mean, in the words of segment labels.

    ``axis`` is a row of :attr:`Projection.components`; the ``top`` features with the
    largest loadings name each end (a centre far to the high end is high on the features
    with positive loadings and low on those with negative ones).

    >>> axis_words(("orders_90d", "app_share_30d", "views_7d"), [0.8, -0.55, 0.1])
    ('rarely buys · app', 'frequent buyer · web')
    >>> axis_words(("orders_90d",), [0.0])
    ('', '')
    """
    loadings = np.asarray(axis, dtype=float)
    order = [int(i) for i in np.argsort(-np.abs(loadings), kind="stable")[:top]
             if abs(loadings[i]) > 1e-9]
    low, high = [], []
    for i in order:
        up, down = WORDS.get(features[i], (f"high {features[i]}", f"low {features[i]}"))
        high.append(up if loadings[i] > 0 else down)
        low.append(down if loadings[i] > 0 else up)
    return " · ".join(low), " · ".join(high)


class SizeHistory:
    """Cluster-wide segment sizes over time: a ring of ``(time, sizes)`` points.

    At most one point per ``interval_s`` is kept (:meth:`due` says when the next one is
    wanted) for ``span_s`` seconds, so ``span_s / interval_s + 1`` points at most (361 with
    the defaults). Each point stores one integer per segment in a tuple indexed by segment
    id: at K = 32 a point is about 1.2 KB (tuple and int objects), the ring at most about
    0.45 MB, whatever the number of customers.

    >>> history = SizeHistory(interval_s=10, span_s=20)
    >>> history.due(100.0)
    True
    >>> history.add(100.0, {0: 5, 2: 1})
    >>> history.due(105.0), history.due(110.0)
    (False, True)
    >>> for t in (110.0, 120.0, 130.0):
    ...     history.add(t, {0: 6, 1: 2})
    >>> [(p["t"], p["sizes"]) for p in history.since(None)]
    [(110.0, [6, 2]), (120.0, [6, 2]), (130.0, [6, 2])]
    >>> [p["t"] for p in history.since(120.0)]
    [130.0]
    """

    def __init__(self, interval_s: float = HISTORY_INTERVAL_S,
                 span_s: float = HISTORY_SPAN_S) -> None:
        self.interval_s = interval_s
        self.span_s = span_s
        self._points: deque[tuple[float, tuple[int, ...]]] = deque(
            maxlen=int(span_s // interval_s) + 1)

    def __len__(self) -> int:
        return len(self._points)

    def due(self, now: float) -> bool:
        """Whether a point should be added at ``now`` (none yet, or one interval passed)."""
        return not self._points or now - self._points[-1][0] >= self.interval_s

    def add(self, at: float, sizes: Mapping[int, int]) -> None:
        """Record the members of each segment (ids ≥ 0; other buckets are ignored)."""
        segments = [s for s in sizes if s >= 0]
        counts = [0] * (max(segments) + 1 if segments else 0)
        for segment in segments:
            counts[segment] = int(sizes[segment])
        self._points.append((round(at, 3), tuple(counts)))  # ms: what the page sends back

    def since(self, after: float | None) -> list[dict[str, Any]]:
        """Points newer than ``after`` (all with None), oldest first: ``{"t", "sizes"}``
        with ``sizes[i]`` the members of segment ``i``."""
        return [{"t": at, "sizes": list(counts)} for at, counts in self._points
                if after is None or at > after]


class RecentChanges:
    """The last ``capacity`` segment changes of this worker, newest last.

    :meth:`record` only appends a tuple (it runs once per published change); the ids are
    decoded and the buckets named when the page asks (:meth:`newest_first`). A segment
    bucket below 0 (not assigned yet, consent withdrawn) and None (first seen, erased) are
    both shown as no segment.
    """

    def __init__(self, capacity: int = RECENT_CHANGES) -> None:
        self._ring: deque[tuple[float, bytes | None, tuple[int | None, int | None] | None,
                                str | None]] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._ring)

    def record(self, at: float, customer: bytes | None,
               moved: tuple[int | None, int | None] | None, trigger: str | None) -> None:
        """A change was published at ``at`` (epoch seconds) for ``customer`` (table key),
        moving it ``(old, new)`` (the outcome's ``moved``) because of ``trigger``."""
        self._ring.append((at, customer, moved, trigger))

    def forget(self, customer: bytes) -> None:
        """Stop naming ``customer`` (erased, or consent withdrawn): its changes stay in the
        list as moves of nobody in particular.

        >>> ring = RecentChanges()
        >>> ring.record(1.0, b"c-1", (None, 2), "event"); ring.forget(b"c-1")
        >>> ring.newest_first()[0]["customer_id"] is None
        True
        """
        if any(entry[1] == customer for entry in self._ring):
            self._ring = deque(((at, None if key == customer else key, moved, trigger)
                                for at, key, moved, trigger in self._ring),
                               maxlen=self._ring.maxlen)

    def newest_first(self, customers: bool = True) -> list[dict[str, Any]]:
        """The changes as ``{"t", "customer_id", "previous_segment", "segment",
        "trigger"}``, newest first; without ``customer_id`` unless ``customers``."""
        out = []
        for at, key, moved, trigger in reversed(self._ring):
            old, new = moved if moved is not None else (None, None)
            change: dict[str, Any] = {
                "t": round(at, 3),
                "previous_segment": old if old is not None and old >= 0 else None,
                "segment": new if new is not None and new >= 0 else None,
                "trigger": trigger,
            }
            if customers:
                change["customer_id"] = (key.decode(errors="replace") if key is not None
                                         else None)
            out.append(change)
        return out


def merge_changes(per_worker: Iterable[Iterable[Mapping[str, Any]]],
                  limit: int = RECENT_CHANGES, customers: bool = True) -> list[dict[str, Any]]:
    """The newest ``limit`` changes of several workers' lists, newest first; customer ids
    dropped unless ``customers``. An entry without a numeric time is skipped.

    >>> a = [{"t": 3.0, "customer_id": "c-1", "segment": 1}]
    >>> b = [{"t": 4.0, "customer_id": "c-2", "segment": 2}, {"t": "x"}]
    >>> merge_changes([a, b], limit=5, customers=False)
    [{'t': 4.0, 'segment': 2}, {'t': 3.0, 'segment': 1}]
    """
    every = [dict(c) for changes in per_worker for c in changes
             if isinstance(c.get("t"), (int, float))]
    every.sort(key=lambda c: -c["t"])
    if not customers:
        for change in every:
            change.pop("customer_id", None)
    return every[:limit]


def map_document(segments: Mapping[str, Any], projection: Projection | None,
                 features: Sequence[str], history: list[dict[str, Any]],
                 changes: list[dict[str, Any]], *, now: float, model_created: float | None,
                 authorised: bool, token_required: bool,
                 catalogue: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The body of ``GET /map/data``.

    ``segments`` is the body of ``GET /segments`` (its centres are left out here: the
    details come from ``GET /segments/{id}``); ``projection`` that of its model's centres
    (None before the first model); ``history`` and ``changes`` as :class:`SizeHistory` and
    :func:`merge_changes` give them (``changes`` without customer ids unless
    ``authorised``); ``catalogue`` the latest segment-catalogue messages, newest first
    (``schemas/segment-catalogue.schema.json``, as
    :meth:`~stream_app.core.catalogue.SegmentHistory.recent` gives them), of which the
    first :data:`CATALOGUE_SHOWN` are passed on (copied; they name no customer, so readers
    without the token see them too).

    >>> doc = map_document({"model_version": 2, "customers": 3, "unassigned": 0,
    ...                     "excluded": 0, "segments": [{"id": 0, "label": "app",
    ...                     "size": 3, "centre": {"app_share_30d": 0.9}}]},
    ...                    project_centres([[1.0]]), ["app_share_30d"], [], [], now=5.0,
    ...                    model_created=4.0, authorised=True, token_required=False)
    >>> doc["segments"]
    [{'id': 0, 'label': 'app', 'size': 3, 'x': 0.0, 'y': 0.0}]
    >>> doc["k"], doc["explained"], doc["axes"]["x"], doc["catalogue"]
    (1, 1.0, {'low': '', 'high': ''}, [])
    """
    rows = []
    points = projection.points if projection is not None else []
    for row in segments.get("segments", []):
        x, y = points[row["id"]] if row["id"] < len(points) else (0.0, 0.0)
        rows.append({"id": row["id"], "label": row["label"], "size": row["size"],
                     "x": x, "y": y})
    axes = {}
    for name, j in (("x", 0), ("y", 1)):
        low, high = (axis_words(features, projection.components[j])
                     if projection is not None and len(features) else ("", ""))
        axes[name] = {"low": low, "high": high}
    return {
        "now": now,
        "model_version": segments.get("model_version", 0),
        "model_created": model_created,
        "k": len(rows),
        "customers": segments.get("customers", 0),
        "unassigned": segments.get("unassigned", 0),
        "excluded": segments.get("excluded", 0),
        "explained": round(projection.explained, 4) if projection is not None else None,
        "axes": axes,
        "segments": rows,
        "history": history,
        "history_interval_s": HISTORY_INTERVAL_S,
        "history_span_s": HISTORY_SPAN_S,
        "changes": changes,
        "authorised": authorised,
        "token_required": token_required,
        "catalogue": [dict(message) for message in islice(catalogue, CATALOGUE_SHOWN)],
    }


@dataclass(frozen=True)
class MapPage:
    """The page's HTML and the Content-Security-Policy header to serve it with."""

    html: str
    content_security_policy: str


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def page_policy(html: str) -> str:
    """A Content-Security-Policy for ``html`` that runs its inline ``<script>`` and applies
    its inline ``<style>`` elements (by their SHA-256 hash) and nothing else: no external
    script, style, font, frame or image (only ``data:`` images, the blank favicon), and
    requests only to the worker itself.

    >>> policy = page_policy("<style>p{}</style><script>go()</script>")
    >>> policy.startswith("default-src 'none'; script-src 'sha256-")
    True
    >>> "connect-src 'self'" in policy and "http" not in policy
    True
    """
    scripts = " ".join(_csp_hash(s) for s in re.findall(r"<script>(.*?)</script>", html, re.S))
    styles = " ".join(_csp_hash(s) for s in re.findall(r"<style>(.*?)</style>", html, re.S))
    return (f"default-src 'none'; script-src {scripts or CSP_NONE}; "
            f"style-src {styles or CSP_NONE}; connect-src 'self'; "
            "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def map_page() -> MapPage:
    """The segment map page shipped with the package (``stream_app/web/map.html``)."""
    html = (resources.files("stream_app.web") / "map.html").read_text(encoding="utf-8")
    return MapPage(html, page_policy(html))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def parse_since(raw: str | None) -> float | None:
    """The ``since`` query parameter of ``GET /map/data``: epoch seconds, or None for the
    whole history (also when it is not a finite number).

    >>> parse_since("1767225600.5"), parse_since(None), parse_since("nan"), parse_since("x")
    (1767225600.5, None, None, None)
    """
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if _is_number(value) else None
