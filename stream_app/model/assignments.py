"""Where every local customer stood at its last evaluation, in NumPy arrays.

When a new model version arrives, a worker must find the customers it would move. Decoding
every stored state and evaluating it one by one costs tens of microseconds per customer
and floods the agent with re-scoring work (at a million customers, minutes per model
version, with input events queued behind it). :class:`AssignmentIndex` keeps, for each
customer the worker has evaluated, the model-space vector and segment of that evaluation,
so one vectorised pass over the arrays names the few customers the new centres would move;
only those go through the full per-customer re-scoring (which still applies flap damping
and writes their state).

No Faust import: the worker, :class:`~stream_app.tools.local_loop.LocalLoop` and the tests
use it the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from stream_app.model.segmentation import SegmentModel

#: Rows scored at once (bounds the N×K distance matrix of a pass).
CHUNK = 65_536
#: Relative slack of the vectorised margin test, so rounding can only add candidates.
SLACK = 1e-9


class AssignmentIndex:
    """Each evaluated customer's vector (model frame ``spec``), segment and partition.

    >>> import numpy as np
    >>> from stream_app.model.segmentation import SegmentModel
    >>> model = SegmentModel(version=2, features=("a",), transforms=("id",),
    ...     impute=np.zeros(1), mean=np.zeros(1), std=np.ones(1),
    ...     centres=np.array([[0.0], [10.0]]), labels=("low", "high"),
    ...     samples_seen=0, created_at=0.0)
    >>> index = AssignmentIndex()
    >>> index.record(b"near-0", 0, "a:id", [1.0], 0)
    >>> index.record(b"near-10", 1, "a:id", [9.0], 0)   # assigned 0 by an older model
    >>> index.record(b"unknown", 1, "a:id", [None], 0)  # imputed: 0.0
    >>> index.movers(model, margin=0.45, partitions={0, 1})
    [(1, b'near-10')]
    """

    def __init__(self) -> None:
        self.spec: str | None = None
        self._rows: dict[bytes, int] = {}
        self._keys: list[bytes | None] = []
        self._free: list[int] = []
        self._vectors = np.zeros((0, 0))
        self._segments = np.zeros(0, dtype=np.int32)
        self._partitions = np.zeros(0, dtype=np.int32)

    def __len__(self) -> int:
        return len(self._rows)

    def record(self, key: bytes, partition: int, spec: str, vector: list[float | None],
               segment: int) -> None:
        """``key`` was just evaluated in frame ``spec`` (None features are imputed later)."""
        if spec != self.spec:  # another feature frame: what was recorded can't be compared
            self.clear()
            self.spec = spec
        row = self._rows.get(key)
        if row is None:
            row = self._free.pop() if self._free else self._grow(len(vector))
            self._rows[key] = row
            self._keys[row] = key
        self._vectors[row] = [np.nan if v is None else v for v in vector]
        self._segments[row] = segment
        self._partitions[row] = partition

    def forget(self, key: bytes) -> None:
        row = self._rows.pop(key, None)
        if row is not None:
            self._keys[row] = None
            self._partitions[row] = -1
            self._free.append(row)

    def members(self, limit: int) -> dict[int, list[bytes]]:
        """Up to ``limit`` customers of each segment, as last evaluated here (the most
        recently indexed first): examples of who is in a segment now.

        >>> index = AssignmentIndex()
        >>> for n, segment in enumerate([0, 1, 0, 0]):
        ...     index.record(f"c{n}".encode(), 0, "x:identity", [float(n)], segment)
        >>> index.members(2)
        {0: [b'c3', b'c2'], 1: [b'c1']}
        >>> index.forget(b"c3"); index.members(2)[0]
        [b'c2', b'c0']
        """
        rows = len(self._keys)
        segments = self._segments[:rows]
        live = self._partitions[:rows] >= 0
        out: dict[int, list[bytes]] = {}
        for segment in np.unique(segments[live]).tolist():
            found = np.flatnonzero(live & (segments == segment))[::-1][:limit]
            out[int(segment)] = [key for key in (self._keys[i] for i in found) if key]
        return out

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget the customers of ``partitions`` (revoked from this worker)."""
        gone = set(partitions)
        for key in [k for k, row in self._rows.items() if self._partitions[row] in gone]:
            self.forget(key)

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def movers(self, model: SegmentModel, margin: float, partitions: set[int]
               ) -> list[tuple[int, bytes]]:
        """``(partition, key)`` of the customers of ``partitions`` whose segment ``model``
        would change under the margin rule of :meth:`SegmentModel.assign` (a superset of
        those that will move: flap damping may keep some)."""
        if not self._rows or model.spec != self.spec:
            return []
        out: list[tuple[int, bytes]] = []
        centres = model.centres
        centre_norms = np.einsum("ij,ij->i", centres, centres)
        wanted = np.fromiter(partitions, dtype=np.int32)
        for start in range(0, len(self._keys), CHUNK):
            stop = min(start + CHUNK, len(self._keys))
            z = model.scale_rows(self._vectors[start:stop])
            squared = (np.einsum("ij,ij->i", z, z)[:, None] - 2.0 * z @ centres.T
                       + centre_norms)
            d = np.sqrt(np.maximum(squared, 0.0))
            d[:, ~model.active] = np.inf  # retired segments: nobody stays or goes there
            best = np.argmin(d, axis=1)
            segments = self._segments[start:stop]
            rows = np.arange(len(d))
            current = np.clip(segments, 0, model.k - 1)
            known = (segments >= 0) & (segments < model.k)
            closer = d[rows, best] < (1.0 - margin) * d[rows, current] * (1.0 + SLACK)
            moving = ((~known) | ((best != segments) & closer))
            moving &= np.isin(self._partitions[start:stop], wanted)
            for row in np.flatnonzero(moving):
                key = self._keys[start + row]
                if key is not None:
                    out.append((int(self._partitions[start + row]), key))
        return out

    def _grow(self, width: int) -> int:
        row = len(self._keys)
        if row == len(self._segments):
            size = max(1024, 2 * row)
            vectors = np.full((size, width), np.nan)
            vectors[:row] = self._vectors[:row] if row else vectors[:0]
            self._vectors = vectors
            self._segments = np.resize(self._segments, size)
            self._partitions = np.resize(self._partitions, size)
            self._partitions[row:] = -1
        self._keys.append(None)
        return row
