"""Segment labels (stream_app.model.labels): distinct, canonical, stable, in marketer words."""

import numpy as np
import pytest

from stream_app.core.features import FEATURE_NAMES
from stream_app.model.labels import (
    COMPARATIVES,
    MAX_WORDS,
    PRIORITY,
    SEPARATOR,
    TYPICAL,
    WORDS,
    describe,
    feature_phrase,
    segment_labels,
    typical_values,
)

SEVEN = ("orders_90d", "avg_order_value_90d", "discount_share_90d", "views_7d",
         "searches_7d", "night_share_30d", "app_share_30d")
TEN = (*SEVEN, "orders_total", "revenue_total", "days_since_last_order")
COMPARATIVE_WORDS = {w for pair in COMPARATIVES.values() for w in pair}


def words(label: str) -> list[str]:
    return [] if label == TYPICAL else label.split(SEPARATOR)


def contradicts(label: str) -> bool:
    """Whether a label holds both words of one feature (e.g. frequent and rarely)."""
    ws = set(words(label))
    return any(high in ws and low in ws for high, low in WORDS.values())


# -- vocabulary --------------------------------------------------------------------------------


def test_every_feature_and_profile_field_has_words():
    for name in (*FEATURE_NAMES, "age", "income"):
        assert name in WORDS and name in COMPARATIVES and name in PRIORITY, name
    assert WORDS["orders_total"] == ("loyal", "one-time buyer")
    assert WORDS["days_since_last_order"] == ("lapsed", "recent buyer")
    assert WORDS["revenue_total"] == ("high lifetime value", "low lifetime value")


def test_describe_is_unchanged_for_existing_callers():
    rows = describe(("orders_90d", "app_share_30d", "mystery"), [0.3, -1.2, 0.0])
    assert rows == [("app_share_30d", -1.2, "web"), ("orders_90d", 0.3, "frequent buyer"),
                    ("mystery", 0.0, "low mystery")]


# -- distinctness ------------------------------------------------------------------------------


@pytest.mark.parametrize("names", [SEVEN, TEN], ids=["d7", "d10"])
def test_labels_are_distinct_on_random_centres(names):
    comparatives = 0
    for seed in range(200):
        centres = np.random.default_rng(seed).normal(size=(32, len(names)))
        labels = segment_labels(names, centres)
        assert len(set(labels)) == 32, (seed, labels)
        comparatives += sum(bool(COMPARATIVE_WORDS & set(words(label))) for label in labels)
        for label in labels:
            assert not label.endswith(")"), (seed, label)  # no numbers: centres differ
            assert not contradicts(label), (seed, label)
            assert len(set(words(label))) == len(words(label))
    assert comparatives < 0.01 * 200 * 32  # a last resort, rarely needed


def test_same_strong_words_are_told_apart_by_the_feature_that_differs():
    names = ("orders_90d", "avg_order_value_90d", "night_share_30d", "app_share_30d")
    centres = np.zeros((5, 4))
    centres[:, [0, 2, 3]] = 2.0
    centres[:, 1] = [2.0, 1.0, 0.0, -1.0, -2.0]
    labels = segment_labels(names, centres)
    assert len(set(labels)) == 5
    for label in labels:
        assert {"frequent buyer", "night owl", "app"} <= set(words(label))
        assert not label.endswith(")")
    assert labels[2] == "frequent buyer · night owl · app"
    assert "big basket" in labels[0] and "big basket" in labels[1]
    assert "small basket" in labels[3] and "small basket" in labels[4]


def test_pathological_five_with_other_small_differences_get_words_not_numbers():
    centres = np.zeros((5, 7))
    centres[:, [0, 5, 6]] = 2.0
    centres[:, 1] = [0.9, 0.7, 0.8, 0.6, 1.0]  # all "big basket"
    centres[:, 2] = [0.8, -0.8, 0.0, 0.0, 0.0]  # deal seeker / pays full price
    centres[:, 3] = [0.0, 0.0, 1.2, -1.2, 0.0]  # heavy / light browser
    labels = segment_labels(SEVEN, centres)
    # Segment 4's four strongest words are also segment 0's: 0 adds its next word.
    assert labels == (
        "frequent buyer · big basket · deal seeker · night owl · app",
        "frequent buyer · pays full price · night owl · app",
        "frequent buyer · heavy browser · night owl · app",
        "frequent buyer · light browser · night owl · app",
        "frequent buyer · big basket · night owl · app",
    )


def test_typical_customer_only_once_and_numbers_only_for_identical_centres():
    names = ("orders_90d", "app_share_30d", "views_7d")
    assert segment_labels(names, [[0.49, -0.49, 0.0], [0.0, 0.0, 0.0]]) == (
        "frequent buyer", TYPICAL)
    assert segment_labels(names, [[0.1, 0.0, 0.0], [0.0, 0.0, 0.0]]) == (
        "buys more often", TYPICAL)
    assert segment_labels(names, [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]) == (
        TYPICAL, f"{TYPICAL} (2)")


def test_empty_segments_do_not_block_distinctness():
    names = ("orders_90d", "app_share_30d")
    centres = [[1.0, 0.0], [1.0, 0.0], [1.0, 0.6], [1.0, 0.0]]
    # Without sizes the two twins of segment 0 must differ from it.
    assert len(set(segment_labels(names, centres))) == 4
    labels = segment_labels(names, centres, sizes=[10, 0, 5, 0])
    assert labels[0] == "frequent buyer" and labels[2] == "frequent buyer · app"
    assert labels[1] == labels[3] == "frequent buyer"  # empty: may repeat
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(32, 7))
    sizes = rng.integers(0, 3, size=32)
    labels = segment_labels(SEVEN, centres, sizes=sizes)
    used = [label for label, n in zip(labels, sizes) if n > 0]
    assert len(used) == len(set(used)) and len(labels) == 32


# -- canonical order ---------------------------------------------------------------------------


def test_word_order_is_canonical_not_by_strength():
    names = ("orders_90d", "app_share_30d", "night_share_30d", "discount_share_90d")
    (label,) = segment_labels(names, [[-0.9, 3.0, 2.0, -1.5]])
    assert label == "rarely buys · pays full price · night owl · app"
    (label,) = segment_labels(names, [[-3.0, 0.9, 2.0, -1.5]])
    assert label == "rarely buys · pays full price · night owl · app"


def test_at_most_four_words_normally():
    centres = np.random.default_rng(4).normal(scale=3.0, size=(1, 10))
    (label,) = segment_labels(TEN, centres)
    assert len(words(label)) == MAX_WORDS


@pytest.mark.parametrize("seed", range(20))
def test_column_order_does_not_change_labels(seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(32, len(TEN)))
    units = np.abs(rng.normal(scale=100.0, size=(32, len(TEN))))
    labels = segment_labels(TEN, centres, units=units)
    perm = rng.permutation(len(TEN))
    names = tuple(TEN[i] for i in perm)
    assert segment_labels(names, centres[:, perm], units=units[:, perm]) == labels


# -- stability ---------------------------------------------------------------------------------


@pytest.mark.parametrize("names", [SEVEN, TEN], ids=["d7", "d10"])
def test_labels_survive_small_moves_given_the_previous_labels(names):
    for seed in range(50):
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(32, len(names)))
        first = segment_labels(names, centres)
        moved = centres + rng.normal(scale=0.02, size=centres.shape)
        again = segment_labels(names, moved, previous=dict(enumerate(first)))
        assert again == first, seed


def test_hysteresis_keeps_a_word_until_it_fades():
    names = ("orders_90d", "app_share_30d")
    first = segment_labels(names, [[0.6, 0.0], [-1.0, 1.0]])
    assert first == ("frequent buyer", "rarely buys · app")
    previous = dict(enumerate(first))
    # 0.4 would not enter a fresh label, but keeps an old one …
    assert segment_labels(names, [[0.4, 0.0], [-1.0, 1.0]], previous=previous) == first
    assert segment_labels(names, [[0.4, 0.0], [-1.0, 1.0]]) == (TYPICAL, "rarely buys · app")
    # … 0.3 does not.
    assert segment_labels(names, [[0.3, 0.0], [-1.0, 1.0]], previous=previous)[0] == TYPICAL


def test_old_word_order_is_kept_exactly_and_stale_words_are_dropped():
    names = ("orders_90d", "app_share_30d", "night_share_30d")
    centres = [[1.0, 1.0, 1.0], [-1.0, 0.0, 1.0]]
    previous = {0: "app · night owl · frequent buyer", 1: "no recent order · night owl"}
    assert segment_labels(names, centres, previous=previous) == (
        "app · night owl · frequent buyer", "rarely buys · night owl")


def test_a_real_change_changes_the_label():
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(16, 7))
    centres[3, 1] = 2.0  # a big basket
    first = segment_labels(SEVEN, centres)
    assert "big basket" in first[3]
    changed = centres.copy()
    changed[3, 1] = -2.0
    again = segment_labels(SEVEN, changed, previous=dict(enumerate(first)))
    assert again[3] != first[3] and "small basket" in again[3]
    assert [a for i, a in enumerate(again) if i != 3] == [
        f for i, f in enumerate(first) if i != 3]


def test_kept_labels_stay_distinct():
    names = ("orders_90d", "app_share_30d")
    previous = {0: "frequent buyer", 1: "frequent buyer"}  # e.g. from the old labeller
    labels = segment_labels(names, [[1.0, 0.0], [1.0, 0.6]], previous=previous)
    assert labels == ("frequent buyer", "frequent buyer · app")


# -- absolute words ----------------------------------------------------------------------------


def test_units_give_absolute_words_where_z_misleads():
    names = ("orders_total", "days_since_last_order", "orders_90d")
    z = [[0.8, 0.1, 0.0],   # above average orders, but only one
         [-0.2, 0.3, 0.0],   # an average z-score, but 300 days ago
         [1.2, -1.0, 0.9],
         [0.0, 0.0, -0.3]]
    units = [[1.0, 60.0, 1.0], [3.0, 300.0, 0.0], [8.0, 5.0, 3.0], [3.0, 90.0, 0.0]]
    labels = segment_labels(names, z, units=units)
    assert labels == ("one-time buyer", "lapsed", "recent buyer · loyal · frequent buyer",
                      "no recent orders")
    # Without units only the z-scores speak (and twins are told apart by comparatives).
    assert segment_labels(names, z) == (
        "loyal", "bought longer ago", "recent buyer · loyal · frequent buyer", TYPICAL)


def test_absolute_words_beat_artifacts_of_no_orders():
    names = ("orders_total", "days_since_last_order", "orders_90d", "avg_order_value_90d",
             "app_share_30d")
    z = [[-1.5, 2.5, -1.2, -1.8, 1.0], [0.5, -0.5, 0.5, 0.5, 0.0]]
    units = [[0.0, 365.0, 0.0, 0.0, 0.9], [3.0, 10.0, 2.0, 50.0, 0.3]]
    labels = segment_labels(names, z, units=units)
    assert labels[0] == "never ordered · app"
    assert "recent buyer" in labels[1]


def test_no_contradictory_words_together():
    names = ("days_since_last_order", "orders_90d", "orders_30d")
    (label,) = segment_labels(names, [[1.0, 2.0, -1.5]], units=[[200.0, 3.0, 0.0]])
    assert label == "lapsed · rarely buys"
    (label,) = segment_labels(("orders_90d", "orders_30d"), [[2.0, -1.5]])
    assert label == "frequent buyer"


# -- typical values ----------------------------------------------------------------------------


def test_typical_values_in_plain_units():
    names = ("orders_90d", "avg_order_value_90d", "days_since_last_order", "orders_total",
             "revenue_total", "discount_share_90d", "views_7d", "night_share_30d",
             "app_share_30d", "mystery")
    row = [2.04, 45.0, 119.7, 5.0, 310.0, 0.3, 12.4, 0.4, 0.8, 3.25]
    assert typical_values(names, row) == (
        "last order 120 days ago, 5 orders in all, 2 orders in 90 days, "
        "lifetime revenue 310.00, average basket 45.00, 30 % of orders discounted, "
        "12 views in 7 days, 40 % at night, 80 % in the app, mystery 3.2")
    assert typical_values(("orders_30d",), [1.0]) == "1 order in 30 days"
    with pytest.raises(ValueError):
        typical_values(("orders_30d",), [1.0, 2.0])


def test_feature_phrase_rounding():
    assert feature_phrase("orders_total", 1.26) == "1.3 orders in all"
    assert feature_phrase("orders_total", 1234.4) == "1,234 orders in all"
    assert feature_phrase("revenue_90d", 1234.5) == "revenue 1,234.50 in 90 days"
    assert feature_phrase("cart_abandon_rate_7d", 0.125) == "12 % of carts abandoned"
    assert feature_phrase("days_since_last_order", 1.2) == "last order 1 day ago"
    assert feature_phrase("days_since_last_order", 0.2) == "last order today"
    assert feature_phrase("days_since_last_order", float("nan")) == "no order yet"
    assert feature_phrase("age", 41.6) == "aged 42"
    assert feature_phrase("income", 52000.0) == "income 52,000"
    assert feature_phrase("searches_7d", -0.0) == "0 searches in 7 days"
    for name in FEATURE_NAMES:
        assert feature_phrase(name, 1.0)
