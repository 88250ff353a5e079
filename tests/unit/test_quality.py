"""Tests of stream_app.model.quality: hand-computed cases and brute-force cross-checks."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.model.quality import (
    CustomerSample,
    adjusted_rand_index,
    assign,
    batch_kmeans,
    flap_rate,
    homogeneity,
    match_centres,
    quality_report,
    separation,
    silhouette,
    wcss,
    wcss_ratio,
)

BLOB_CENTRES = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 5.0]])


def blobs(n_per: int = 200, sd: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs around BLOB_CENTRES and their true labels."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + sd * rng.standard_normal((n_per, 3)) for c in BLOB_CENTRES])
    return x, np.repeat(np.arange(len(BLOB_CENTRES)), n_per)


def brute_silhouette(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Silhouette of every point straight from the definition, with Python loops."""
    x = np.asarray(x, dtype=float)
    out = []
    for i in range(len(x)):
        dist = [math.dist(x[i], x[j]) for j in range(len(x))]
        own = [dist[j] for j in range(len(x)) if j != i and labels[j] == labels[i]]
        if not own:
            out.append(0.0)
            continue
        a = sum(own) / len(own)
        b = min(
            np.mean([dist[j] for j in range(len(x)) if labels[j] == other])
            for other in set(labels.tolist()) - {labels[i]}
        )
        out.append(0.0 if max(a, b) == 0 else (b - a) / max(a, b))
    return np.array(out)


# -- assign --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assign_matches_brute_force_argmin(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2000, 5)) * 3
    centres = rng.standard_normal((9, 5)) * 3
    brute = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
    np.testing.assert_array_equal(assign(x, centres), brute)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_assign_is_a_nearest_centre(n, k, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-100, 100, (n, d))
    centres = rng.uniform(-100, 100, (k, d))
    labels = assign(x, centres)
    dist = np.sqrt(((x[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2))
    # The chosen centre is as near as the nearest one (up to rounding on near-ties).
    np.testing.assert_allclose(dist[np.arange(n), labels], dist.min(axis=1), rtol=1e-9,
                               atol=1e-9)


def test_assign_edge_cases():
    assert assign(np.empty((0, 2)), [[0.0, 0.0]]).shape == (0,)
    assert assign([[5.0, 5.0]], [[0.0, 0.0]]).tolist() == [0]
    assert assign([[1.0, 1.0]], [[0.0, 0.0], [2.0, 2.0]]).tolist() == [0]  # tie: lowest
    with pytest.raises(ValueError):
        assign([[1.0, 2.0]], [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError):
        assign([1.0, 2.0], [[1.0, 2.0]])
    with pytest.raises(ValueError):
        assign([[1.0, 2.0]], np.empty((0, 2)))


# -- wcss, homogeneity, separation ------------------------------------------------------------


def test_wcss_and_homogeneity_by_hand():
    x = [[0.0, 0.0], [2.0, 0.0], [0.0, 3.0], [3.0, 7.0]]
    centres = [[1.0, 0.0], [0.0, 3.0]]
    # Nearest centres: 0, 0, 1, 1 with distances 1, 1, 0, 5 (3-4-5 triangle).
    assert assign(x, centres).tolist() == [0, 0, 1, 1]
    assert wcss(x, centres) == pytest.approx(1 + 1 + 0 + 25)
    assert homogeneity(x, centres) == pytest.approx((1 + 1 + 0 + 5) / 4)
    # Explicit labels are used as given, even when not the nearest centre.
    # Point 2 to centre 0: distance sqrt(1 + 9) = sqrt(10).
    labels = [0, 0, 0, 1]
    assert wcss(x, centres, labels) == pytest.approx(1 + 1 + 10 + 25)
    assert homogeneity(x, centres, labels) == pytest.approx((1 + 1 + math.sqrt(10) + 5) / 4)


def test_wcss_edge_cases():
    assert wcss(np.empty((0, 2)), [[0.0, 0.0]]) == 0.0
    assert homogeneity(np.empty((0, 2)), [[0.0, 0.0]]) == 0.0
    with pytest.raises(ValueError):
        wcss([[0.0, 0.0]], [[0.0, 0.0]], labels=[1])
    with pytest.raises(ValueError):
        wcss([[0.0, 0.0]], [[0.0, 0.0]], labels=[0, 0])


def test_separation_by_hand():
    centres = [[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]]  # pairwise distances 3, 4, 5
    assert separation(centres) == {"min": pytest.approx(3.0), "mean": pytest.approx(4.0)}
    # Only centres with members count: centre 1 empty leaves the pair (0, 2) at distance 5.
    assert separation(centres, labels=[0, 2, 2, 0]) == {"min": 5.0, "mean": 5.0}
    assert separation(centres, labels=[1, 1]) == {"min": 0.0, "mean": 0.0}
    assert separation([[1.0, 1.0]]) == {"min": 0.0, "mean": 0.0}
    with pytest.raises(ValueError):
        separation(centres, labels=[3])


# -- silhouette ----------------------------------------------------------------------------


def test_silhouette_matches_brute_force_on_a_tiny_set():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((13, 2))
    # Three clusters and a singleton (which scores 0).
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 7])
    expected = brute_silhouette(x, labels)
    assert expected[-1] == 0.0
    assert silhouette(x, labels) == pytest.approx(expected.mean(), abs=1e-12)
    assert silhouette(x, labels, sample=13) == pytest.approx(expected.mean(), abs=1e-12)


def test_silhouette_sample_is_scored_against_all_points():
    x, labels = blobs(n_per=60, sd=2.0, seed=4)
    per_point = brute_silhouette(x, labels)
    value = silhouette(x, labels, sample=50, rng=np.random.default_rng(11))
    idx = np.sort(np.random.default_rng(11).choice(len(x), size=50, replace=False))
    assert value == pytest.approx(per_point[idx].mean(), abs=1e-12)
    # Seeds make it reproducible.
    assert silhouette(x, labels, sample=50, rng=5) == silhouette(x, labels, sample=50, rng=5)


def test_silhouette_two_blobs_and_noise():
    # Centres 10 apart, sd 0.1 in 3-d: a is about 0.16 and b about 10, so s is about 0.98.
    x, labels = blobs(n_per=300, sd=0.1)
    two = labels < 2
    assert silhouette(x[two], labels[two]) > 0.95
    rng = np.random.default_rng(0)
    noise = rng.uniform(size=(2000, 3))
    random_labels = rng.integers(0, 4, size=2000)
    assert abs(silhouette(noise, random_labels, rng=0)) < 0.05


def test_silhouette_edge_cases():
    assert silhouette([[0.0], [1.0]], [3, 3]) == 0.0
    assert silhouette(np.empty((0, 2)), []) == 0.0
    # All distances zero: a = b = 0 scores 0.
    assert silhouette([[1.0], [1.0], [1.0], [1.0]], [0, 0, 1, 1]) == 0.0
    # Only singletons: each scores 0.
    assert silhouette([[0.0], [5.0]], [0, 1]) == 0.0
    with pytest.raises(ValueError):
        silhouette([[0.0], [1.0]], [0])


# -- batch k-means and the WCSS ratio ------------------------------------------------------


def test_batch_kmeans_recovers_blobs_and_is_deterministic():
    x, _ = blobs()
    centres = batch_kmeans(x, 3, seed=1)
    assert centres.shape == (3, 3)
    order = match_centres(BLOB_CENTRES, centres)
    np.testing.assert_allclose(centres[order], BLOB_CENTRES, atol=0.15)
    np.testing.assert_array_equal(batch_kmeans(x, 3, seed=1), centres)
    # Each centre is the mean of its members (a Lloyd fixed point).
    labels = assign(x, centres)
    for j in range(3):
        np.testing.assert_allclose(centres[j], x[labels == j].mean(axis=0))


def test_batch_kmeans_small_inputs():
    x = np.array([[1.0, 2.0], [1.0, 2.0]])
    assert batch_kmeans(x, 3).shape == (3, 2)  # more centres than distinct points
    assert wcss(x, batch_kmeans(x, 3)) == 0.0
    with pytest.raises(ValueError):
        batch_kmeans(np.empty((0, 2)), 2)
    with pytest.raises(ValueError):
        batch_kmeans(x, 0)


def test_wcss_ratio_good_and_bad_solutions():
    x, labels = blobs(seed=2)
    assert wcss_ratio(x, batch_kmeans(x, 3, seed=9)) <= 1.01
    true_means = np.array([x[labels == j].mean(axis=0) for j in range(3)])
    assert wcss_ratio(x, true_means) <= 1.01
    # All three centres inside the first blob.
    bad = BLOB_CENTRES[0] + np.array([[0.3, 0.0, 0.0], [-0.3, 0.0, 0.0], [0.0, 0.3, 0.0]])
    assert wcss_ratio(x, bad) > 1.15
    # One centre per blob but one of them misplaced by 3 units: still clearly worse.
    shifted = true_means + np.array([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert wcss_ratio(x, shifted) > 1.15


def test_wcss_ratio_guards_zero():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [4.0, 4.0]])
    assert wcss_ratio(x, [[4.0, 4.0], [0.0, 0.0]]) == 1.0  # both zero
    assert wcss_ratio(x, [[4.0, 4.0], [1.0, 0.0]]) == math.inf  # batch exact, model not


# -- adjusted Rand index -------------------------------------------------------------------


def test_ari_identical_and_relabelled():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=300)
    assert adjusted_rand_index(a, a) == 1.0
    renamed = np.array([10, 3, 7, 42, -1])[a]
    assert adjusted_rand_index(a, renamed) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 0, 1, 1], ["x", "x", "y", "y"]) == 1.0


def test_ari_hand_computed_contingency_tables():
    # Table [[3, 1], [1, 3]], n = 8: Σ C(n_ij, 2) = 6, Σ C(a_i, 2) = Σ C(b_j, 2) = 12,
    # C(8, 2) = 28, E = 144 / 28 = 36 / 7, max = 12: ARI = (6/7) / (48/7) = 1/8.
    a = [0, 0, 0, 0, 1, 1, 1, 1]
    b = [0, 0, 0, 1, 0, 1, 1, 1]
    assert adjusted_rand_index(a, b) == pytest.approx(1 / 8)
    assert adjusted_rand_index(b, a) == pytest.approx(1 / 8)
    # Table [[2, 1, 0], [0, 1, 2]], n = 6: index 2, rows 3 + 3 = 6, columns 1 + 1 + 1 = 3,
    # C(6, 2) = 15, E = 18 / 15 = 1.2, max = 4.5: ARI = 0.8 / 3.3 = 8/33.
    assert adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(8 / 33)
    # Complete disagreement on pairs can go negative: table [[1, 1], [1, 1]], n = 4:
    # index 0, rows 2, columns 2, E = 4 / 6, max = 2: ARI = (-2/3) / (4/3) = -1/2.
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)


def test_ari_random_labels_near_zero():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 6, size=5000)
    b = rng.integers(0, 6, size=5000)
    assert abs(adjusted_rand_index(a, b)) < 0.05


def test_ari_degenerate_cases():
    assert adjusted_rand_index([1, 1, 1], [4, 4, 4]) == 1.0  # both one cluster
    assert adjusted_rand_index([0, 1, 2], [2, 0, 1]) == 1.0  # both all singletons
    assert adjusted_rand_index([0], [5]) == 1.0
    assert adjusted_rand_index([], []) == 1.0
    assert adjusted_rand_index([0, 0, 0, 0], [0, 0, 1, 1]) == 0.0  # one trivial: chance level
    with pytest.raises(ValueError):
        adjusted_rand_index([0, 1], [0])


def test_ari_large_n_without_overflow():
    n = 3_000_000
    a = np.zeros(n, dtype=np.int64)
    b = (np.arange(n) < n // 2).astype(np.int64)
    assert adjusted_rand_index(a, a) == 1.0
    assert adjusted_rand_index(b, 1 - b) == 1.0
    assert adjusted_rand_index(a, b) == 0.0


# -- matching centres, flap rate -----------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_match_centres_recovers_a_permutation(seed):
    rng = np.random.default_rng(seed)
    old = rng.standard_normal((8, 4)) * 5
    p = rng.permutation(8)
    new = old[p] + 0.01 * rng.standard_normal((8, 4))
    perm = match_centres(old, new)
    np.testing.assert_array_equal(perm, np.argsort(p))
    np.testing.assert_allclose(new[perm], old, atol=0.1)
    assert sorted(perm.tolist()) == list(range(8))


def test_match_centres_minimises_total_distance():
    # Greedy matching (closest pair first) pairs old[0] with new[0] at 0.9 and is left with
    # 3.1 (total 4.0); the optimum swaps them: 1.1 + 1.1 = 2.2.
    old = np.array([[0.0], [2.0]])
    new = np.array([[0.9], [-1.1]])
    assert match_centres(old, new).tolist() == [1, 0]
    with pytest.raises(ValueError):
        match_centres(np.zeros((3, 2)), np.zeros((2, 2)))


def test_flap_rate():
    assert flap_rate(0, 0) == 0.0
    assert flap_rate(5, 0) == 0.0
    assert flap_rate(3, 12) == 0.25
    assert isinstance(flap_rate(1, 2), float)


# -- customer sample ------------------------------------------------------------------------


def test_customer_sample_keeps_newest_vector_per_customer_up_to_capacity():
    s = CustomerSample(capacity=5)
    assert len(s) == 0 and s.seen == 0 and s.array().shape == (0, 0)
    for i in range(3):
        s.add("a", [float(i), 1.0])  # one customer, three states: one row, the newest
    assert len(s) == 1 and s.seen == 3 and s.array().tolist() == [[2.0, 1.0]]
    for i in range(1000):
        s.add(f"c{i}", np.array([i, 1.0]))
        assert len(s) == min(i + 2, 5)
    assert s.seen == 1003 and s.array().shape == (5, 2)
    with pytest.raises(ValueError):
        s.add("x", [1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        CustomerSample(0)


def test_customer_sample_keeps_the_smallest_hashes_whatever_the_order():
    keys = [f"customer-{i}" for i in range(2000)]
    expected = set(sorted(keys, key=CustomerSample.priority)[:50])
    for order in (keys, keys[::-1], sorted(keys, key=hash)):
        s = CustomerSample(capacity=50)
        for key in order:
            s.add(key, [float(int(key.split("-")[1]))])
        assert {f"customer-{int(v)}" for v in s.array()[:, 0]} == expected


def test_customer_sample_is_uniform_over_customers_not_events():
    # Busy customers (ids < 1000) send 20 vectors each, quiet ones one: the sample still
    # holds them in proportion to their number (half), not their events (20/21).
    s = CustomerSample(capacity=400)
    for round_ in range(20):
        for i in range(2000):
            if i < 1000 or round_ == 0:
                s.add(f"c{i}", [float(i < 1000), float(round_)])
    busy = s.array()[:, 0].mean()
    assert abs(busy - 0.5) < 0.1  # binomial sd of 400 draws: 0.025
    rows = s.array()
    assert (rows[rows[:, 0] == 1.0][:, 1] == 19.0).all()  # busy customers: newest state


# -- quality report ------------------------------------------------------------------------


def test_quality_report_is_consistent_and_json_ready():
    x, labels = blobs(n_per=150, seed=5)
    true_means = np.array([x[labels == j].mean(axis=0) for j in range(3)])
    # A fourth centre far away attracts nobody.
    centres = np.vstack([true_means, [[100.0, 100.0, 100.0]]])
    report = quality_report(x, centres, seed=1)
    assert set(report) == {"n", "k", "wcss", "batch_wcss", "wcss_ratio", "homogeneity",
                           "separation_min", "separation_mean", "silhouette",
                           "segments_used"}
    assert report["n"] == 450 and report["k"] == 4 and report["segments_used"] == 3
    assert all(type(v) in (int, float) for v in report.values())
    assert report["wcss"] == pytest.approx(wcss(x, centres))
    assert report["homogeneity"] == pytest.approx(homogeneity(x, centres))
    sep = separation(true_means)  # the empty centre does not count
    assert report["separation_min"] == pytest.approx(sep["min"])
    assert report["separation_mean"] == pytest.approx(sep["mean"])
    assert report["silhouette"] == pytest.approx(silhouette(x, labels, rng=1))
    assert report["silhouette"] > 0.85
    # With k = 4 the batch reference can split a blob, so the model is worse than it.
    assert report["batch_wcss"] < report["wcss"]
    assert report["wcss_ratio"] == pytest.approx(report["wcss"] / report["batch_wcss"])
    assert orjson.loads(orjson.dumps(report)) == report
    with pytest.raises(ValueError):
        quality_report(np.empty((0, 3)), centres)
