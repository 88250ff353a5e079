"""How many of a worker's customers are in each segment, per input partition.

The counts are derived from the customers table, not kept beside it: after every rebalance
(tables recovered, streams not yet resumed) the worker counts its partitions' stored
customers again, and between rebalances each move adjusts them. A separately changelogged
counter could disagree with the customers table after a crash (the two records are written
one after the other; tests/system/test_recovery.py saw a survivor count 199 of 200 customers).

Buckets are segment ids, :data:`~stream_app.core.pipeline.UNASSIGNED` (not assigned yet) and
:data:`~stream_app.core.pipeline.EXCLUDED` (consent withdrawn).

>>> import orjson
>>> stored = [orjson.dumps({"s": 3, "pp": 0}), orjson.dumps({"s": None, "pp": 0}),
...           orjson.dumps({"x": True, "pp": 1})]
>>> [home_and_bucket(b"c", s, 4) for s in stored]
[(0, 3), (0, -1), (1, -2)]
>>> sizes = SegmentSizes()
>>> sizes.recount([home_and_bucket(b"c", s, 4) for s in stored], {0, 1})
>>> sizes.local({0, 1})
{0: {3: 1, -1: 1}, 1: {-2: 1}}
>>> sizes.move(0, -1, 5)
>>> sizes.local({0})
{0: {3: 1, 5: 1}}
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Generic, TypeVar

from aiokafka.partitioner import murmur2

from stream_app.core.pipeline import EXCLUDED, UNASSIGNED
from stream_app.core.state import CustomerState

B = TypeVar("B", bound=Hashable)


def home_and_bucket(key: bytes, stored: bytes, partitions: int) -> tuple[int, int]:
    """The input partition and segment bucket of a stored customer state.

    The partition is the one the state records; states written before it was recorded
    fall back to the key's hash (right unless the key is a pseudonym)."""
    home, bucket, _ = summary(key, stored, partitions)
    return home, bucket


def summary(key: bytes, stored: bytes, partitions: int) -> tuple[int, int, list[str]]:
    """:func:`home_and_bucket` and the names of the customer's audiences.

    >>> import orjson
    >>> summary(b"c", orjson.dumps({"s": 2, "pp": 1, "a": ["vip"], "av": "0a"}), 4)
    (1, 2, ['vip'])
    """
    raw = CustomerState.document(stored)
    home = raw.get("pp")
    if home is None:
        home = (murmur2(key) & 0x7FFFFFFF) % partitions
    if raw.get("x"):
        return home, EXCLUDED, []
    segment = raw.get("s")
    return home, UNASSIGNED if segment is None else segment, raw.get("a", [])


def summed(per_partition: Mapping[int, Mapping[B, int]]) -> dict[B, int]:
    """Counts per bucket over all partitions.

    >>> summed({0: {3: 1, -1: 2}, 1: {3: 4}})
    {3: 5, -1: 2}
    """
    totals: dict[B, int] = {}
    for per_bucket in per_partition.values():
        for bucket, count in per_bucket.items():
            totals[bucket] = totals.get(bucket, 0) + count
    return totals


class SegmentSizes(Generic[B]):
    """Customers per bucket per partition, for the partitions this worker owns (buckets:
    segment ids, or audience names)."""

    def __init__(self) -> None:
        self._counts: dict[int, dict[B, int]] = {}

    def move(self, partition: int, old: B | None, new: B | None) -> None:
        """A customer of ``partition`` left bucket ``old`` for ``new`` (None: no bucket,
        i.e. a new customer, or one erased)."""
        counts = self._counts.setdefault(partition, {})
        if old is not None:
            counts[old] = counts.get(old, 0) - 1
        if new is not None:
            counts[new] = counts.get(new, 0) + 1

    def recount(self, customers: Iterable[tuple[int, B]], partitions: set[int]) -> None:
        """Replace the counts by those of ``customers`` (``(partition, bucket)`` each, see
        :func:`home_and_bucket`), keeping ``partitions`` only."""
        counts: dict[int, dict[B, int]] = {p: {} for p in partitions}
        for partition, bucket in customers:
            per = counts.get(partition)
            if per is not None:
                per[bucket] = per.get(bucket, 0) + 1
        self._counts = counts

    def local(self, partitions: set[int]) -> dict[int, dict[B, int]]:
        """Non-zero counts of ``partitions`` (a partition without customers is left out)."""
        out: dict[int, dict[B, int]] = {}
        for partition in sorted(partitions):
            per = {b: n for b, n in self._counts.get(partition, {}).items() if n}
            if per:
                out[partition] = per
        return out
