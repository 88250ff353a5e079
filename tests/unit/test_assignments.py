"""AssignmentIndex: the vectorised pass names exactly the customers a new model would move."""

from __future__ import annotations

import numpy as np
import pytest

from stream_app.model.assignments import AssignmentIndex
from stream_app.model.segmentation import SegmentModel

SPEC = "a:id,b:id,c:id"


def model(centres: np.ndarray, version: int = 2, spec: str = SPEC) -> SegmentModel:
    names = tuple(part.split(":")[0] for part in spec.split(","))
    width = len(names)
    return SegmentModel(version=version, features=names, transforms=("id",) * width,
                        impute=np.full(width, 0.5), mean=np.full(width, 1.0),
                        std=np.array([2.0] + [1.0] * (width - 2) + [0.0]), centres=centres,
                        labels=tuple(f"s{i}" for i in range(len(centres))),
                        samples_seen=0, created_at=0.0)


def filled(rng: np.random.Generator, n: int, k: int) -> tuple[AssignmentIndex, dict]:
    index = AssignmentIndex()
    truth = {}
    for i in range(n):
        vector = [None if rng.random() < 0.1 else float(v) for v in rng.normal(0, 3, 3)]
        segment = int(rng.integers(-1, k + 2))  # unassigned and beyond K included
        key = f"c{i}".encode()
        index.record(key, i % 4, SPEC, vector, segment)
        truth[key] = (i % 4, vector, segment)
    return index, truth


@pytest.mark.parametrize("margin", [0.0, 0.45])
def test_movers_are_exactly_the_customers_assign_would_move(margin: float) -> None:
    rng = np.random.default_rng(3)
    k = 8
    index, truth = filled(rng, 3000, k)
    new = model(rng.normal(0, 2, (k, 3)))
    expected = set()
    for key, (partition, vector, segment) in truth.items():
        if partition == 3:
            continue
        moved, _ = new.assign(vector, segment, margin)
        if moved != segment:
            expected.add((partition, key))
    got = index.movers(new, margin, partitions={0, 1, 2})
    assert len(got) == len(set(got))
    assert set(got) == expected
    assert 0 < len(expected) < 3000 * 3 // 4


def test_rerecording_forgetting_and_dropping_partitions() -> None:
    index = AssignmentIndex()
    far = model(np.array([[0.0, 0.0, 0.0], [50.0, 50.0, 0.0]]))
    index.record(b"x", 0, SPEC, [1.0, 1.0, 1.0], 1)  # far from centre 1: would move
    index.record(b"y", 1, SPEC, [1.0, 1.0, 1.0], 1)
    assert sorted(index.movers(far, 0.45, {0, 1})) == [(0, b"x"), (1, b"y")]
    index.record(b"x", 2, SPEC, [1.0, 1.0, 1.0], 0)  # re-evaluated: now in place, moved
    assert index.movers(far, 0.45, {0, 1, 2}) == [(1, b"y")]
    index.drop_partitions({1})
    assert len(index) == 1 and index.movers(far, 0.45, {0, 1, 2}) == []
    index.forget(b"x")
    index.record(b"z", 0, SPEC, [1.0, 1.0, 1.0], 1)  # reuses the freed row
    assert len(index) == 1 and index.movers(far, 0.45, {0}) == [(0, b"z")]


def test_another_feature_frame_clears_the_index() -> None:
    index = AssignmentIndex()
    index.record(b"x", 0, SPEC, [1.0, 1.0, 1.0], 1)
    two = model(np.zeros((2, 2)), spec="a:id,b:id")
    assert index.movers(two, 0.45, {0}) == []  # not comparable: the caller re-scores all
    index.record(b"y", 0, "a:id,b:id", [1.0, 1.0], 1)
    assert len(index) == 1 and index.spec == "a:id,b:id"


def test_grows_past_its_first_allocation() -> None:
    rng = np.random.default_rng(5)
    index, truth = filled(rng, 5000, 4)
    new = model(rng.normal(0, 2, (4, 3)))
    expected = {(p, key) for key, (p, vector, segment) in truth.items()
                if new.assign(vector, segment, 0.2)[0] != segment}
    assert set(index.movers(new, 0.2, {0, 1, 2, 3})) == expected
