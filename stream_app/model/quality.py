"""Quality measures of a segmentation, with no Faust import.

Every function works on vectors already in a model's standardised space (what
:meth:`stream_app.model.segmentation.SegmentModel.scale` returns): ``x`` is an ``n × d`` array
of vectors and ``centres`` a ``k × d`` array (``SegmentModel.centres``).

* compactness: :func:`wcss`, :func:`homogeneity`;
* distinguishability: :func:`separation`, :func:`silhouette`;
* optimality against the batch reference: :func:`batch_kmeans`, :func:`wcss_ratio`;
* stability between model versions: :func:`adjusted_rand_index`, :func:`match_centres`,
  :func:`flap_rate`;
* a uniform sample of the customers to measure on: :class:`CustomerSample`;
* all of it at once, JSON-ready: :func:`quality_report`.

>>> x = np.array([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
>>> centres = np.array([[0.0, 0.5], [10.0, 0.5]])
>>> assign(x, centres).tolist()
[0, 0, 1, 1]
>>> wcss(x, centres)
1.0
>>> report = quality_report(x, centres)
>>> report["wcss_ratio"], report["segments_used"]
(1.0, 2)
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from stream_app.model.kmeans import kmeans_plus_plus

#: Upper bound on the elements of a distance block in :func:`silhouette` (about 32 MB).
_BLOCK_ELEMENTS = 4_000_000


def _points(x: Any, name: str = "x") -> np.ndarray:
    """``x`` as a float array of shape ``(n, d)``."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (n × d), got shape {arr.shape}")
    return arr


def _squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``n × k`` squared Euclidean distances by ``||x||² − 2 x·c + ||c||²`` (clipped at 0)."""
    # ``(c @ x.T).T`` rather than ``x @ c.T``: same numbers, but OpenBLAS is several times
    # faster with the long dimension last.
    d2 = (centres @ x.T).T
    d2 *= -2.0
    d2 += np.einsum("ij,ij->i", x, x)[:, None]
    d2 += np.einsum("ij,ij->i", centres, centres)[None, :]
    return np.maximum(d2, 0.0, out=d2)


def _labels(x: np.ndarray, centres: np.ndarray, labels: Any | None) -> np.ndarray:
    if labels is None:
        return assign(x, centres)
    lab = np.asarray(labels, dtype=np.intp)
    if lab.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},), got {lab.shape}")
    if len(lab) and (lab.min() < 0 or lab.max() >= len(centres)):
        raise ValueError("labels must index the centres")
    return lab


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` with ``0 / 0 = 1`` and ``x / 0 = inf``."""
    scale = max(abs(numerator), abs(denominator))
    if denominator <= 1e-12 * scale:
        return 1.0 if numerator <= 1e-12 * max(scale, 1.0) else math.inf
    return float(numerator / denominator)


def assign(x: Any, centres: Any) -> np.ndarray:
    """Index of the nearest centre (Euclidean) of every row of ``x``.

    Parameters
    ----------
    x : array_like, shape (n, d)
        Vectors in the standardised space.
    centres : array_like, shape (k, d)
        Centres in the same space.

    Returns
    -------
    numpy.ndarray, shape (n,)
        Integer labels in ``range(k)``; ties go to the lowest index.

    Notes
    -----
    Distances come from the expansion ``||x||² − 2 x·c + ||c||²`` (whose first term does
    not change the argmin): memory is ``O(n k)``, never an ``n × k × d`` temporary.

    Examples
    --------
    >>> assign([[0.0, 0.1], [4.0, 3.9], [0.2, 0.0]], [[0.0, 0.0], [4.0, 4.0]]).tolist()
    [0, 1, 0]
    """
    x = _points(x)
    c = _points(centres, "centres")
    if len(c) == 0:
        raise ValueError("at least one centre is needed")
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"x has {x.shape[1]} columns but centres have {c.shape[1]}")
    if len(x) == 0:
        return np.empty(0, dtype=np.intp)
    # ``||x||²`` is the same for every centre, so the argmin needs only ``||c||² − 2 c·x``
    # (k × n: the long dimension last is the fast layout for the product and the argmin).
    score = c @ x.T
    score *= -2.0
    score += np.einsum("ij,ij->i", c, c)[:, None]
    return score.argmin(axis=0)


def wcss(x: Any, centres: Any, labels: Any | None = None) -> float:
    """Within-cluster sum of squares: ``Σ_i ||x_i − c_{label(i)}||²``.

    Parameters
    ----------
    x : array_like, shape (n, d)
        Vectors in the standardised space.
    centres : array_like, shape (k, d)
        Centres in the same space.
    labels : array_like of int, shape (n,), optional
        Centre of each vector; the nearest centre (:func:`assign`) by default.

    Returns
    -------
    float
        ``0.0`` for an empty ``x``.

    Examples
    --------
    >>> wcss([[0.0, 0.0], [2.0, 0.0], [9.0, 9.0]], [[1.0, 0.0], [9.0, 9.0]])
    2.0
    >>> wcss([[0.0, 0.0], [2.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]], labels=[0, 0])
    2.0
    """
    x = _points(x)
    c = _points(centres, "centres")
    lab = _labels(x, c, labels)
    diff = x - c[lab]
    return float(np.einsum("ij,ij->", diff, diff))


def homogeneity(x: Any, centres: Any, labels: Any | None = None) -> float:
    """Mean Euclidean distance of a vector to its centre (lower is more homogeneous).

    Parameters
    ----------
    x : array_like, shape (n, d)
        Vectors in the standardised space.
    centres : array_like, shape (k, d)
        Centres in the same space.
    labels : array_like of int, shape (n,), optional
        Centre of each vector; the nearest centre (:func:`assign`) by default.

    Returns
    -------
    float
        In standardised units; ``0.0`` for an empty ``x``.

    Examples
    --------
    >>> homogeneity([[3.0, 4.0], [0.0, 1.0]], [[0.0, 0.0]])
    3.0
    """
    x = _points(x)
    c = _points(centres, "centres")
    lab = _labels(x, c, labels)
    if len(x) == 0:
        return 0.0
    diff = x - c[lab]
    return float(np.sqrt(np.einsum("ij,ij->i", diff, diff)).mean())


def separation(centres: Any, labels: Any | None = None) -> dict[str, float]:
    """Smallest and mean pairwise distance between centres (distinguishability).

    Parameters
    ----------
    centres : array_like, shape (k, d)
        Centres in the standardised space.
    labels : array_like of int, optional
        When given, only the centres that some label points to (the segments with
        members) are compared.

    Returns
    -------
    dict
        ``{"min": float, "mean": float}``; both ``0.0`` when fewer than two centres count.

    Examples
    --------
    >>> separation([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    {'min': 3.0, 'mean': 4.0}
    >>> separation([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]], labels=[0, 1, 1])
    {'min': 5.0, 'mean': 5.0}
    """
    c = _points(centres, "centres")
    if labels is not None:
        used = np.unique(np.asarray(labels, dtype=np.intp))
        if len(used) and (used[0] < 0 or used[-1] >= len(c)):
            raise ValueError("labels must index the centres")
        c = c[used]
    if len(c) < 2:
        return {"min": 0.0, "mean": 0.0}
    diff = c[:, None, :] - c[None, :, :]
    dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    pairs = dist[np.triu_indices(len(c), k=1)]
    return {"min": float(pairs.min()), "mean": float(pairs.mean())}


def silhouette(x: Any, labels: Any, sample: int = 1000,
               rng: np.random.Generator | int | None = None) -> float:
    """Mean silhouette coefficient over a random sample of the vectors.

    For a vector ``i`` with mean distance ``a`` to the other members of its cluster and
    smallest mean distance ``b`` to the members of another cluster,
    ``s(i) = (b − a) / max(a, b)``; ``s(i) = 0`` when ``i`` is alone in its cluster (or
    when ``a = b = 0``).

    Parameters
    ----------
    x : array_like, shape (n, d)
        Vectors in the standardised space.
    labels : array_like, shape (n,)
        Cluster of each vector (any hashable integers; need not be contiguous).
    sample : int, default 1000
        At most this many vectors, drawn without replacement, are scored; each against
        all ``n`` vectors, so the cost is ``O(sample × n)``.
    rng : numpy.random.Generator or int, optional
        Source (or seed) of the sample; unused when ``n <= sample``.

    Returns
    -------
    float
        In ``[-1, 1]``; ``0.0`` when fewer than two clusters have members.

    Examples
    --------
    >>> x = [[0.0], [1.0], [10.0], [11.0]]
    >>> round(silhouette(x, [0, 0, 1, 1]), 4)
    0.8997
    >>> silhouette(x, [0, 0, 0, 0])
    0.0
    """
    x = _points(x)
    lab = np.asarray(labels)
    if lab.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},), got {lab.shape}")
    if sample < 1:
        raise ValueError("sample must be at least 1")
    groups, inverse = np.unique(lab, return_inverse=True)
    m = len(groups)
    if m < 2:
        return 0.0
    n = len(x)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse, minlength=m).astype(float)
    if n > sample:
        idx = np.sort(np.random.default_rng(rng).choice(n, size=sample, replace=False))
    else:
        idx = np.arange(n)
    onehot = np.zeros((n, m))
    onehot[np.arange(n), inverse] = 1.0
    norms = np.einsum("ij,ij->i", x, x)
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    scores = np.empty(len(idx))
    for start in range(0, len(idx), block):
        rows = idx[start:start + block]
        d2 = norms[rows, None] - 2.0 * (x[rows] @ x.T) + norms[None, :]
        dist = np.sqrt(np.maximum(d2, 0.0, out=d2), out=d2)
        dist[np.arange(len(rows)), rows] = 0.0  # exact self-distance
        sums = dist @ onehot  # rows × m: total distance to each cluster
        own = inverse[rows]
        r = np.arange(len(rows))
        own_size = counts[own]
        a = np.divide(sums[r, own], own_size - 1.0, out=np.zeros(len(rows)),
                      where=own_size > 1.0)
        means = sums / counts[None, :]
        means[r, own] = np.inf
        b = means.min(axis=1)
        top = np.maximum(a, b)
        s = np.divide(b - a, top, out=np.zeros(len(rows)), where=top > 0)
        s[own_size <= 1.0] = 0.0
        scores[start:start + len(rows)] = s
    return float(scores.mean())


def batch_kmeans(x: Any, k: int, seed: int = 0, restarts: int = 3,
                 max_iter: int = 100, tol: float = 1e-4) -> np.ndarray:
    """Reference batch k-means: k-means++ seeding and Lloyd iterations, best of restarts.

    Each restart seeds with :func:`stream_app.model.kmeans.kmeans_plus_plus` and runs
    Lloyd iterations until the assignment stops changing or the centres move less than
    ``tol`` (at most ``max_iter``); a centre that loses all its members stays where it
    is, as in ``kmeans_plus_plus``.
    The restart with the lowest :func:`wcss` wins.

    Parameters
    ----------
    x : array_like, shape (n, d)
        Vectors in the standardised space (``n >= 1``).
    k : int
        Number of centres.
    seed : int, default 0
        Seed of the NumPy generator shared by all restarts (deterministic).
    restarts : int, default 3
        Number of independent seedings.
    max_iter : int, default 100
        Upper bound on Lloyd iterations per restart.
    tol : float, default 1e-4
        Stop when the summed squared centre movement of an iteration is at most ``tol``
        times the mean per-column variance of ``x`` (the scikit-learn convention).

    Returns
    -------
    numpy.ndarray, shape (k, d)

    Examples
    --------
    >>> x = np.array([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
    >>> np.sort(batch_kmeans(x, 2), axis=0).tolist()
    [[0.0, 0.5], [10.0, 0.5]]
    """
    x = _points(x)
    if len(x) == 0:
        raise ValueError("batch k-means needs at least one vector")
    if k < 1 or restarts < 1:
        raise ValueError("k and restarts must be at least 1")
    rng = np.random.default_rng(seed)
    threshold = tol * float(x.var(axis=0).mean())
    best: np.ndarray | None = None
    best_cost = math.inf
    for _ in range(restarts):
        centres = kmeans_plus_plus(x, k, rng, iterations=0)
        labels = assign(x, centres)
        for _ in range(max_iter):
            sums = np.column_stack([np.bincount(labels, weights=col, minlength=k)
                                    for col in x.T])
            counts = np.bincount(labels, minlength=k)
            filled = counts > 0
            moved = sums[filled] / counts[filled, None]
            shift = float(((moved - centres[filled]) ** 2).sum())
            centres[filled] = moved
            new = assign(x, centres)
            converged = shift <= threshold or np.array_equal(new, labels)
            labels = new
            if converged:
                break
        cost = wcss(x, centres, labels)
        if cost < best_cost:
            best, best_cost = centres, cost
    assert best is not None
    return best


def wcss_ratio(x: Any, centres: Any, seed: int = 0) -> float:
    """WCSS of ``centres`` over the WCSS of :func:`batch_kmeans` with the same ``k``.

    About ``1.0`` when the (streaming) centres are as good as batch k-means on ``x``;
    larger is worse. It can dip slightly below 1 since batch k-means is a local optimum.

    Parameters
    ----------
    x : array_like, shape (n, d)
        Vectors in the standardised space (``n >= 1``).
    centres : array_like, shape (k, d)
        The centres to judge.
    seed : int, default 0
        Seed of :func:`batch_kmeans`.

    Returns
    -------
    float
        ``1.0`` when both sums are zero, ``inf`` when only the batch sum is zero.

    Examples
    --------
    >>> x = np.array([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
    >>> wcss_ratio(x, [[10.0, 0.5], [0.0, 0.5]])
    1.0
    >>> wcss_ratio(x, [[0.0, 0.0], [0.0, 1.0]])
    200.0
    """
    x = _points(x)
    c = _points(centres, "centres")
    return _ratio(wcss(x, c), wcss(x, batch_kmeans(x, len(c), seed=seed)))


def adjusted_rand_index(labels_a: Any, labels_b: Any) -> float:
    """Adjusted Rand index (Hubert & Arabie, 1985) of two partitions of the same items.

    From the contingency table ``n_ij`` with row sums ``a_i``, column sums ``b_j`` and
    ``n`` items::

        ARI = (Σ C(n_ij, 2) − E) / (½ [Σ C(a_i, 2) + Σ C(b_j, 2)] − E),
        E = Σ C(a_i, 2) · Σ C(b_j, 2) / C(n, 2)

    Parameters
    ----------
    labels_a, labels_b : array_like, shape (n,)
        Cluster labels; only the partition matters, not the label values.

    Returns
    -------
    float
        ``1.0`` for identical partitions up to renaming, about ``0`` for independent ones
        (it can be negative). The degenerate cases where the denominator vanishes (both
        partitions a single cluster, or both all singletons, or ``n < 2``) are identical
        partitions and give ``1.0``.

    Examples
    --------
    >>> adjusted_rand_index([0, 0, 1, 1], [5, 5, 3, 3])
    1.0
    >>> round(adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]), 6)
    0.242424
    """
    a = np.asarray(labels_a).reshape(-1)
    b = np.asarray(labels_b).reshape(-1)
    if len(a) != len(b):
        raise ValueError(f"label arrays differ in length: {len(a)} and {len(b)}")
    n = len(a)
    if n < 2:
        return 1.0
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    ia, ib = ia.reshape(-1), ib.reshape(-1)
    cols = int(ib.max()) + 1
    table = np.bincount(ia * cols + ib).astype(np.int64)

    def pairs(counts: np.ndarray) -> int:
        counts = counts.astype(np.int64)
        return int((counts * (counts - 1) // 2).sum())

    index = pairs(table)
    sum_a = pairs(np.bincount(ia))
    sum_b = pairs(np.bincount(ib))
    total = n * (n - 1) // 2
    # Exact integer numerator and denominator (scaled by 2 C(n, 2)) before one division.
    numerator = 2 * (index * total - sum_a * sum_b)
    denominator = (sum_a + sum_b) * total - 2 * sum_a * sum_b
    if denominator == 0:
        return 1.0
    return float(numerator / denominator)


def match_centres(old: Any, new: Any) -> np.ndarray:
    """Permutation ``perm`` such that ``new[perm]`` best matches ``old`` row by row.

    Minimises the total Euclidean distance ``Σ_i ||old[i] − new[perm[i]]||`` with the
    Hungarian algorithm (:func:`scipy.optimize.linear_sum_assignment`).

    Parameters
    ----------
    old, new : array_like, shape (k, d)
        Two sets of centres of equal shape.

    Returns
    -------
    numpy.ndarray of int, shape (k,)

    Examples
    --------
    >>> old = [[0.0, 0.0], [5.0, 5.0], [9.0, 0.0]]
    >>> new = [[9.1, 0.0], [0.1, 0.0], [5.0, 4.9]]
    >>> match_centres(old, new).tolist()
    [1, 2, 0]
    """
    from scipy.optimize import linear_sum_assignment

    o = _points(old, "old")
    w = _points(new, "new")
    if o.shape != w.shape:
        raise ValueError(f"old and new must have equal shapes, got {o.shape} and {w.shape}")
    cost = np.sqrt(_squared_distances(o, w))
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(o), dtype=np.intp)
    perm[rows] = cols
    return perm


def flap_rate(flaps: int, changes: int) -> float:
    """Share of segment changes that are flaps: ``flaps / changes``, ``0.0`` without changes.

    Examples
    --------
    >>> flap_rate(3, 12), flap_rate(0, 0)
    (0.25, 0.0)
    """
    return float(flaps) / changes if changes > 0 else 0.0


class CustomerSample:
    """The latest vector of a uniform sample of up to ``capacity`` customers.

    Bottom-k sampling: a customer is in the sample when its key's hash is among the
    ``capacity`` smallest seen so far, so every customer has the same chance whatever
    its event rate, and the choice does not depend on arrival order. A sampled customer's
    row is replaced by its newest vector: the sample describes the population as it is
    now, not every state it passed through (an early, immature state of a customer says
    nothing about the segments it should be in today).

    Parameters
    ----------
    capacity : int
        Largest number of customers kept.

    Examples
    --------
    >>> s = CustomerSample(capacity=2)
    >>> for key, value in [("a", 1.0), ("b", 2.0), ("c", 3.0), ("a", 4.0), ("d", 5.0)]:
    ...     s.add(key, [value])
    >>> len(s), s.seen
    (2, 5)
    >>> again = CustomerSample(capacity=2)
    >>> for key, value in [("d", 5.0), ("a", 4.0), ("c", 3.0), ("b", 2.0)]:
    ...     again.add(key, [value])
    >>> sorted(again.array().ravel().tolist()) == sorted(s.array().ravel().tolist())
    True
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = int(capacity)
        self.seen = 0
        self._rows: dict[str, list[float]] = {}
        self._heap: list[tuple[int, str]] = []  # (-priority, key): the largest kept on top

    def __len__(self) -> int:
        return len(self._rows)

    @staticmethod
    def priority(key: str) -> int:
        """A key's place in the sample order (a 64-bit hash, the same in every process)."""
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")

    def add(self, key: str, vector: Iterable[float]) -> None:
        """Offer customer ``key``'s newest vector."""
        row = [float(v) for v in vector]
        if self._rows:
            width = len(next(iter(self._rows.values())))
            if len(row) != width:
                raise ValueError(f"vector has {len(row)} values, the sample holds {width}")
        self.seen += 1
        if key in self._rows:
            self._rows[key] = row
            return
        priority = self.priority(key)
        if len(self._rows) < self.capacity:
            heapq.heappush(self._heap, (-priority, key))
            self._rows[key] = row
        elif priority < -self._heap[0][0]:
            _, evicted = heapq.heapreplace(self._heap, (-priority, key))
            del self._rows[evicted]
            self._rows[key] = row

    def discard(self, key: str) -> bool:
        """Drop customer ``key`` (erased, or consent withdrawn); True if it was sampled.

        >>> s = CustomerSample(capacity=3)
        >>> s.add("a", [1.0]); s.add("b", [2.0])
        >>> s.discard("a"), s.discard("a"), len(s)
        (True, False, 1)
        """
        if self._rows.pop(key, None) is None:
            return False
        self._heap = [entry for entry in self._heap if entry[1] != key]
        heapq.heapify(self._heap)
        return True

    def array(self) -> np.ndarray:
        """The sample as an ``m × d`` float array (``0 × 0`` when empty)."""
        if not self._rows:
            return np.empty((0, 0))
        return np.array(list(self._rows.values()), dtype=float)


def quality_report(x: Any, model_centres: Any, seed: int = 0,
                   batch_wcss: float | None = None) -> dict[str, Any]:
    """All quality measures of ``model_centres`` on the vectors ``x``, JSON-ready.

    Parameters
    ----------
    x : array_like, shape (n, d)
        Vectors in the model's standardised space (e.g. :meth:`CustomerSample.array` of
        scaled vectors); ``n >= 1``.
    model_centres : array_like, shape (k, d)
        The model's centres (``SegmentModel.centres``).
    seed : int, default 0
        Seed of the batch reference and of the silhouette sample.
    batch_wcss : float, optional
        The within-cluster sum of squares of a batch k-means solution of ``x`` with as
        many centres, when the caller has one (a refinement computes it anyway); computed
        here otherwise.

    Returns
    -------
    dict
        ``n``, ``k`` and ``segments_used`` (ints); ``wcss``, ``batch_wcss``,
        ``wcss_ratio``, ``homogeneity``, ``separation_min``, ``separation_mean`` and
        ``silhouette`` (floats). ``separation_*`` count only segments with members.
        ``wcss_ratio`` is ``inf`` only when the batch reference fits ``x`` exactly but
        the model does not.

    Examples
    --------
    >>> x = np.array([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
    >>> r = quality_report(x, [[0.0, 0.5], [10.0, 0.5], [50.0, 50.0]])
    >>> r["k"], r["segments_used"], r["separation_min"], r["wcss_ratio"] > 1
    (3, 2, 10.0, True)
    """
    x = _points(x)
    centres = _points(model_centres, "model_centres")
    if len(x) == 0:
        raise ValueError("a quality report needs at least one vector")
    labels = assign(x, centres)
    model_wcss = wcss(x, centres, labels)
    if batch_wcss is None:
        batch_wcss = wcss(x, batch_kmeans(x, len(centres), seed=seed))
    sep = separation(centres, labels)
    return {
        "n": len(x),
        "k": len(centres),
        "wcss": model_wcss,
        "batch_wcss": batch_wcss,
        "wcss_ratio": _ratio(model_wcss, batch_wcss),
        "homogeneity": homogeneity(x, centres, labels),
        "separation_min": sep["min"],
        "separation_mean": sep["mean"],
        "silhouette": silhouette(x, labels, rng=seed),
        "segments_used": len(np.unique(labels)),
    }


# -- a partition judged against batch k-means (scikit-learn), in any space -----------------------
#: Features of the plain retail RFM space (recency, frequency, monetary value), each
#: ``log1p``-transformed and standardised: the baseline a retail analyst would cluster on.
RFM_FEATURES = ("days_since_last_order", "orders_total", "revenue_total", "orders_90d",
                "revenue_90d")


def partition_wcss(x: Any, labels: Any) -> float:
    """Within-segment sum of squares of a partition: ``Σ_i ||x_i − mean(segment(i))||²``
    (each segment around its own mean, whatever centres produced it).

    >>> partition_wcss([[0.0], [2.0], [10.0]], [0, 0, 1])
    2.0
    """
    x = _points(x)
    lab = np.asarray(labels).reshape(-1)
    if lab.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},), got {lab.shape}")
    total = 0.0
    for segment in np.unique(lab):
        members = x[lab == segment]
        total += float(((members - members.mean(axis=0)) ** 2).sum())
    return total


def kmeans_reference_wcss(x: Any, k: int, seed: int = 0, n_init: int = 10) -> float:
    """The within-cluster sum of squares of scikit-learn's batch k-means (k-means++,
    ``n_init`` restarts) with ``k`` clusters on ``x``: the reference a partition of the
    same vectors into ``k`` segments is judged against (:func:`partition_ratio`)."""
    from sklearn.cluster import KMeans

    x = _points(x)
    k = max(1, min(k, len(np.unique(x, axis=0))))
    fitted = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed).fit(x)
    return float(fitted.inertia_)


def partition_ratio(x: Any, labels: Any, seed: int = 0) -> float:
    """:func:`partition_wcss` of ``labels`` over that of batch k-means with as many
    clusters as ``labels`` has segments (1.0: as compact as batch k-means).

    >>> x = [[0.0], [0.1], [5.0], [5.1]]
    >>> round(partition_ratio(x, [0, 0, 1, 1]), 6), partition_ratio(x, [0, 1, 0, 1]) > 100
    (1.0, True)
    """
    lab = np.asarray(labels).reshape(-1)
    return _ratio(partition_wcss(x, lab),
                  kmeans_reference_wcss(x, len(np.unique(lab)), seed=seed))


def rfm_space(features: Iterable[dict[str, Any]]) -> np.ndarray:
    """Customers' :data:`RFM_FEATURES` as ``log1p``-standardised rows (a customer who
    never ordered counts 365 days since its last order).

    >>> rfm_space([{"days_since_last_order": None, "orders_total": 0, "revenue_total": 0,
    ...             "orders_90d": 0, "revenue_90d": 0}] * 2).tolist()
    [[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]
    """
    rows = [[365.0 if f.get(n) is None else max(float(f[n]), 0.0) for n in RFM_FEATURES]
            for f in features]
    x = np.log1p(np.array(rows, dtype=float).reshape(-1, len(RFM_FEATURES)))
    std = x.std(axis=0)
    return np.divide(x - x.mean(axis=0), std, out=np.zeros_like(x), where=std > 0)
