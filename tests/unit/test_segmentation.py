"""Tests of stream_app.model.segmentation (FeatureTransform, SegmentLearner, SegmentModel) and
stream_app.model.labels.segment_labels."""

from __future__ import annotations

import itertools
import math

import numpy as np
import orjson
import pytest

from stream_app.model.labels import segment_labels
from stream_app.model.quality import assign
from stream_app.model.segmentation import (
    UNDEFINED_DEFAULTS,
    FeatureTransform,
    SegmentLearner,
    SegmentModel,
)

# -- FeatureTransform ------------------------------------------------------------------------


def test_transform_parsing():
    t = FeatureTransform("orders_90d:log1p, app_share_30d ,age:identity")
    assert t.names == ("orders_90d", "app_share_30d", "age")
    assert t.transforms == ("log1p", "identity", "identity")
    assert t.spec == "orders_90d:log1p,app_share_30d:identity,age:identity"
    # The canonical spec parses to the same transform.
    again = FeatureTransform(t.spec)
    assert again.names == t.names and again.transforms == t.transforms


@pytest.mark.parametrize(
    "spec",
    [
        "orders_90d:sqrt",
        "orders_90d:log",
        "orders_90d:LOG1P",
        "orders_90d:log1p,views_7d:exp",
        "orders_90d,orders_90d",
        "orders_90d:log1p,orders_90d:identity",
        "orders_90d,views_7d,orders_90d:log1p",
        "",
        "orders_90d,,views_7d",
        ":log1p",
    ],
)
def test_transform_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        FeatureTransform(spec)


def test_vector_applies_transforms():
    t = FeatureTransform("orders_90d:log1p,app_share_30d,views_7d:log1p")
    v = t.vector({"orders_90d": 3, "app_share_30d": 0.25, "views_7d": 0}, {})
    assert v[0] == pytest.approx(math.log(4.0), rel=1e-15)
    assert v[1] == 0.25
    assert v[2] == 0.0
    assert all(isinstance(x, float) for x in v)


def test_vector_profile_attributes_and_unknowns():
    t = FeatureTransform("age,income:log1p,orders_90d")
    assert t.vector({"orders_90d": 2}, {"age": 40, "income": 99}) == [
        40.0, pytest.approx(math.log(100.0), rel=1e-15), 2.0,
    ]
    # Unknown profile attributes are None (imputed later by the model).
    assert t.vector({"orders_90d": 2}, {}) == [None, None, 2.0]
    assert t.vector({"orders_90d": 2}, {"age": None, "income": 10}) == [
        None, pytest.approx(math.log(11.0), rel=1e-15), 2.0,
    ]


def test_vector_undefined_days_since_last_order_uses_default():
    t = FeatureTransform("days_since_last_order:log1p,days_since_last_order_raw")
    v = t.vector({"days_since_last_order": None}, {})
    # A customer who never ordered is not None: the documented default stands in for it.
    assert v[0] == math.log1p(UNDEFINED_DEFAULTS["days_since_last_order"])
    assert v[1] is None
    v2 = t.vector({"days_since_last_order": 2.5}, {})
    assert v2[0] == pytest.approx(math.log(3.5), rel=1e-15)


def test_inverse_undoes_transforms():
    t = FeatureTransform("a:log1p,b,c:log1p")
    raw = [t.vector({"a": a, "b": b, "c": c}, {}) for a, b, c in [(0, -2, 5), (9, 0.5, 1e4)]]
    back = t.inverse(np.array(raw))
    np.testing.assert_allclose(back, [[0, -2, 5], [9, 0.5, 1e4]], rtol=1e-12, atol=1e-12)


# -- SegmentModel: hand-built ----------------------------------------------------------------


def hand_model(centres, mean=None, std=None, impute=None, names=("a", "b")) -> SegmentModel:
    d = len(names)
    centres = np.array(centres, dtype=float)
    return SegmentModel(
        version=3,
        features=tuple(names),
        transforms=("identity",) * d,
        impute=np.zeros(d) if impute is None else np.array(impute, dtype=float),
        mean=np.zeros(d) if mean is None else np.array(mean, dtype=float),
        std=np.ones(d) if std is None else np.array(std, dtype=float),
        centres=centres,
        labels=tuple(f"seg{i}" for i in range(len(centres))),
        samples_seen=100,
        created_at=1.5,
    )


def test_assign_nearest_centre_in_scaled_space():
    # mean (10, 0), std (2, 1): raw (12, 1) scales to (1, 1).
    m = hand_model([[0, 0], [1, 1], [-3, 0]], mean=[10, 0], std=[2, 1])
    seg, d = m.assign([12.0, 1.0], None)
    assert seg == 1
    np.testing.assert_allclose(d, [math.sqrt(2), 0.0, math.sqrt(17)], rtol=1e-12)
    assert m.assign([4.0, 0.0], None)[0] == 2  # scales to (-3, 0)


def test_assign_imputes_unknown_values_and_ignores_constant_features():
    m = hand_model([[0, 0], [1, 0]], mean=[10, 5], std=[2, 0], impute=[12, 5])
    # None takes the imputed value 12 -> scaled 1; a zero-std feature scales to 0.
    seg, d = m.assign([None, 1e9], None)
    assert seg == 1
    np.testing.assert_allclose(d, [1.0, 0.0], atol=1e-12)


def test_margin_rule():
    m = hand_model([[0, 0], [10, 0]])
    margin = 0.15
    # d0 = 5.5, d1 = 4.5 < 0.85 * 5.5 = 4.675: moves.
    assert m.assign([5.5, 0], 0, margin)[0] == 1
    # d0 = 5.3, d1 = 4.7 >= 0.85 * 5.3 = 4.505: stays.
    assert m.assign([5.3, 0], 0, margin)[0] == 0
    # Without a current segment, or margin 0, the nearest centre wins.
    assert m.assign([5.3, 0], None, margin)[0] == 1
    assert m.assign([5.3, 0], 0, 0.0)[0] == 1
    # Already in the nearest segment: stays there.
    assert m.assign([9.0, 0], 1, margin)[0] == 1
    # A current segment the model does not have (fewer centres) is ignored.
    assert m.assign([5.3, 0], 7, margin)[0] == 1
    # Distances are returned either way.
    seg, d = m.assign([5.3, 0], 0, margin)
    assert seg == 0
    np.testing.assert_allclose(d, [5.3, 4.7], rtol=1e-12)


def test_margin_boundary_is_strict():
    m = hand_model([[0, 0], [10, 0]])
    # d0 = 8, d1 = 2 = (1 - 0.75) * 8: not closer than the threshold, so it stays.
    assert m.assign([8.0, 0], 0, 0.75)[0] == 0
    assert m.assign([8.0, 0], 0, 0.7499)[0] == 1


def test_centres_in_feature_units():
    m = SegmentModel(
        version=1, features=("a", "b"), transforms=("log1p", "identity"),
        impute=np.zeros(2), mean=np.array([1.0, 2.0]), std=np.array([0.5, 3.0]),
        centres=np.array([[2.0, -1.0], [0.0, 0.0]]), labels=("x", "y"), samples_seen=1,
        created_at=0.0,
    )
    # Scaled (2, -1) -> raw (1 + 2 * 0.5, 2 - 3) = (2, -1) -> features (e^2 - 1, -1).
    np.testing.assert_allclose(
        m.centres_in_feature_units(), [[math.expm1(2.0), -1.0], [math.expm1(1.0), 2.0]],
        rtol=1e-12,
    )


def test_model_json_round_trip():
    m = hand_model([[0.1, -2.5], [1e-300, 3.0], [7.0, 7.0]], mean=[1.5, -2.0], std=[0.3, 4.0],
                   impute=[1.25, 0.0])
    r = SegmentModel.from_json(m.to_json())
    assert r.version == m.version and r.k == 3
    assert r.features == m.features and r.transforms == m.transforms and r.spec == m.spec
    for name in ("impute", "mean", "std", "centres"):
        assert np.array_equal(getattr(r, name), getattr(m, name)), name
    assert r.labels == m.labels
    assert r.samples_seen == m.samples_seen and r.created_at == m.created_at
    assert r.to_json() == m.to_json()
    x = [3.3, -1.0]
    assert r.assign(x, None)[0] == m.assign(x, None)[0]


def test_model_json_inconsistent_dimensions_rejected():
    raw = orjson.loads(hand_model([[0, 0], [1, 1]]).to_json())
    bad_labels = {**raw, "labels": ["only one"]}
    with pytest.raises(ValueError):
        SegmentModel.from_json(orjson.dumps(bad_labels))
    bad_mean = {**raw, "mean": [0.0, 0.0, 0.0]}
    with pytest.raises(ValueError):
        SegmentModel.from_json(orjson.dumps(bad_mean))


# -- SegmentLearner ------------------------------------------------------------------------------

SPEC3 = "x,y,z"


def samples(rng: np.random.Generator, n: int, d: int = 3) -> list[list[float]]:
    return (rng.normal(size=(n, d)) * [1.0, 5.0, 0.2][:d] + [3.0, -1.0, 0.5][:d]).tolist()


def test_learner_not_ready_before_warmup():
    learner = SegmentLearner(FeatureTransform(SPEC3), k=3, warmup=10, seed=5)
    data = samples(np.random.default_rng(0), 10)
    for x in data[:9]:
        learner.learn_one(x)
        assert not learner.ready
    with pytest.raises(RuntimeError):
        learner.snapshot(version=1)
    learner.learn_one(data[9])
    assert learner.ready
    m = learner.snapshot(version=1)
    assert m.k == 3 and m.centres.shape == (3, 3)
    assert m.samples_seen == 10 and m.version == 1
    assert m.features == ("x", "y", "z") and m.transforms == ("identity",) * 3
    np.testing.assert_allclose(m.mean, np.mean(data, axis=0), rtol=1e-12)
    np.testing.assert_allclose(m.std, np.std(data, axis=0), rtol=1e-9)


def test_default_warmup_is_20_per_segment():
    learner = SegmentLearner(FeatureTransform(SPEC3), k=2, seed=1)
    data = samples(np.random.default_rng(1), 40)
    for x in data[:39]:
        learner.learn_one(x)
    assert not learner.ready
    learner.learn_one(data[39])
    assert learner.ready


def _trained(seed: int, data, k=4, warmup=50, halflife=0.02) -> SegmentLearner:
    learner = SegmentLearner(FeatureTransform(SPEC3), k=k, warmup=warmup, seed=seed,
                             halflife=halflife)
    for x in data:
        learner.learn_one(x)
    return learner


def _same_model(a: SegmentModel, b: SegmentModel) -> None:
    for name in ("impute", "mean", "std", "centres"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.labels == b.labels
    assert a.samples_seen == b.samples_seen
    assert a.features == b.features and a.transforms == b.transforms


def test_learner_is_deterministic_for_a_seed():
    data = samples(np.random.default_rng(2), 400)
    a = _trained(11, data).snapshot(version=1)
    b = _trained(11, data).snapshot(version=1)
    _same_model(a, b)


def test_learner_imputes_missing_values_with_mean_of_seen_values():
    learner = SegmentLearner(FeatureTransform("x,age"), k=2, warmup=4, seed=3)
    for x in ([1.0, 30.0], [2.0, None], [3.0, 50.0], [4.0, None], [5.0, 10.0]):
        learner.learn_one(x)
    m = learner.snapshot(version=1)
    np.testing.assert_allclose(m.impute, [3.0, 30.0], rtol=1e-12)
    # An unknown value is placed where the imputed value is.
    assert np.array_equal(m.distances([2.5, None]), m.distances([2.5, 30.0]))


def test_assign_agrees_with_river_pipeline():
    rng = np.random.default_rng(3)
    learner = _trained(7, samples(rng, 600), k=6, warmup=120)
    model = learner.snapshot(version=4)
    probes = np.concatenate([np.array(samples(rng, 1500)), rng.uniform(-20, 20, (500, 3))])
    segments = set()
    for x in probes.tolist():
        expected = learner.predict_one(x)
        seg, _ = model.assign(x, None)
        assert seg == expected
        # With margin 0 the current segment does not matter.
        current = int(rng.integers(model.k))
        assert model.assign(x, current, 0.0)[0] == expected
        segments.add(seg)
    assert len(segments) >= 3  # the probe covered several segments
    # Predicting did not change the learner.
    _same_model(model, learner.snapshot(version=4))


def test_resume_reproduces_snapshot():
    data = samples(np.random.default_rng(4), 500)
    original = _trained(9, data, halflife=0.05)
    snap = original.snapshot(version=2)
    resumed = SegmentLearner.resume(SegmentModel.from_json(snap.to_json()), halflife=0.05)
    assert resumed.ready
    again = resumed.snapshot(version=2)
    _same_model(snap, again)


def test_resumed_learner_continues_like_the_original():
    rng = np.random.default_rng(5)
    original = _trained(9, samples(rng, 500), halflife=0.05)
    resumed = SegmentLearner.resume(original.snapshot(version=1), halflife=0.05)
    more = samples(rng, 300)
    for x in more:
        original.learn_one(x)
        resumed.learn_one(x)
    a, b = original.snapshot(version=2), resumed.snapshot(version=2)
    assert a.samples_seen == b.samples_seen == 800
    for name in ("mean", "std", "centres"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-12)


BLOB_CENTRES = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])


def blobs(rng: np.random.Generator, per_blob: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([c + rng.normal(scale=0.7, size=(per_blob, 3)) for c in BLOB_CENTRES])
    y = np.repeat(np.arange(len(BLOB_CENTRES)), per_blob)
    order = rng.permutation(len(x))
    return x[order], y[order]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_planted_clusters_are_recovered(seed):
    rng = np.random.default_rng(100 + seed)
    x, _ = blobs(rng, 500)
    learner = SegmentLearner(FeatureTransform(SPEC3), k=4, seed=seed)
    for row in x.tolist():
        learner.learn_one(row)
    model = learner.snapshot(version=1)
    test_x, test_y = blobs(rng, 300)
    assigned = np.array([model.assign(row, None)[0] for row in test_x.tolist()])
    majority = []
    for blob in range(4):
        segs = assigned[test_y == blob]
        counts = np.bincount(segs, minlength=4)
        best = int(counts.argmax())
        assert counts[best] / len(segs) > 0.95, (blob, counts)
        majority.append(best)
    assert sorted(majority) == [0, 1, 2, 3]
    # The centres, mapped back to feature units, sit near the planted centres.
    found = model.centres_in_feature_units()
    for blob, seg in enumerate(majority):
        assert np.linalg.norm(found[seg] - BLOB_CENTRES[blob]) < 1.5


def test_snapshot_labels_come_from_centres():
    data = samples(np.random.default_rng(6), 200)
    learner = _trained(1, data)
    model = learner.snapshot(version=1)
    units = model.centres_in_feature_units()
    sizes = np.bincount(assign(learner.scaled_sample(), model.centres), minlength=model.k)
    assert model.labels == segment_labels(model.features, model.centres, units=units,
                                          sizes=sizes)
    assert len(model.labels) == model.k
    used = [label for label, size in zip(model.labels, sizes) if size]
    assert len(set(used)) == len(used)  # every segment with members is named apart


# -- labels --------------------------------------------------------------------------------------


def test_labels_name_strongest_deviations_first():
    names = ("orders_90d", "app_share_30d", "night_share_30d", "discount_share_90d")
    labels = segment_labels(names, [[2.0, -0.6, 0.1, 1.0]])
    assert labels == ("frequent buyer · deal seeker · web",)


def test_labels_name_at_most_four_words_in_canonical_order():
    names = ("orders_90d", "app_share_30d", "night_share_30d", "discount_share_90d")
    (label,) = segment_labels(names, [[-0.9, 3.0, 2.0, -1.5]])
    assert label == "rarely buys · pays full price · night owl · app"
    # The same deviations in another column order give the same words in the same order.
    (again,) = segment_labels(names[::-1], [[-1.5, 2.0, 3.0, -0.9]])
    assert again == label


def test_labels_typical_customer_when_all_small_and_distinct_otherwise():
    names = ("orders_90d", "app_share_30d", "views_7d")
    assert segment_labels(names, [[0.2, -0.2, 0.0], [0.0, 0.0, 0.0]], sizes=[10, 0]) == (
        "typical customer", "typical customer",  # the empty one may repeat a label
    )
    labels = segment_labels(names, [[0.49, -0.49, 0.0], [0.0, 0.0, 0.0]])
    assert len(set(labels)) == 2 and "typical customer" in labels
    # The threshold is inclusive: |z| = 0.5 is named.
    assert segment_labels(names, [[0.0, -0.5, 0.2]]) == ("web",)


def test_labels_skip_repeated_words_and_name_unknown_features():
    names = ("orders_30d", "orders_90d", "mystery", "views_7d")
    (label,) = segment_labels(names, [[1.5, 1.4, -1.0, 0.7]])
    assert label == "frequent buyer · heavy browser · low mystery"
    assert segment_labels(("mystery",), [[0.8]]) == ("high mystery",)


def test_labels_one_per_centre():
    names = ("orders_90d",)
    assert segment_labels(names, [[1.0], [-1.0], [0.0]]) == (
        "frequent buyer", "rarely buys", "typical customer",
    )


@pytest.mark.parametrize("clusterer", ["streamkmeans", "clustream"])
def test_other_river_clusterers_learn_and_keep_ids_between_snapshots(clusterer):
    rng = np.random.default_rng(21)
    x, _ = blobs(rng, 600)
    learner = SegmentLearner(FeatureTransform(SPEC3), k=4, seed=3, clusterer=clusterer)
    for row in x.tolist():
        learner.learn_one(row)
    first = learner.snapshot(version=1)
    assert first.k == 4 and np.isfinite(first.centres).all()
    test_x, _ = blobs(rng, 100)
    before = [first.assign(row, None)[0] for row in test_x.tolist()]
    for row in blobs(rng, 300)[0].tolist():  # more of the same population
        learner.learn_one(row)
    second = learner.snapshot(version=2)
    after = [second.assign(row, None)[0] for row in test_x.tolist()]
    # Whatever order River's clusterer keeps its centres in, ids are matched: customers
    # keep their segment as often as the best renumbering of the new partition allows (the
    # partition itself may change: River's clusterers re-cluster and may split or merge
    # blobs, depending on PYTHONHASHSEED).
    before_, after_ = np.array(before), np.array(after)
    best = max(np.mean(np.array(p)[after_] == before_) for p in itertools.permutations(range(4)))
    assert best >= 0.7 and np.mean(before_ == after_) >= best - 0.01
    assert learner.quality["n"] > 0


def test_unknown_clusterer_is_rejected():
    with pytest.raises(ValueError, match="SEGMENT_CLUSTERER"):
        SegmentLearner(FeatureTransform(SPEC3), k=4, clusterer="dbstream")


def test_sample_holds_each_member_once_with_its_newest_vector():
    learner = SegmentLearner(FeatureTransform(SPEC3), k=2, warmup=4, seed=1)
    for step in range(10):
        for member in ("a", "b", "c"):
            learner.learn_one([float(step), 0.0, 1.0], member)
    rows = learner.sample.array()
    assert learner.samples_seen == 30 and rows.shape == (3, 3)
    assert (rows[:, 0] == 9.0).all()
