"""The live segment map's pure parts: projection, size history, recent changes, page."""

from __future__ import annotations

import re
import sys
from itertools import combinations

import numpy as np
import pytest

from stream_app.core.catalogue import SegmentHistory, catalogue_changes
from stream_app.model.segmentation import SegmentModel
from stream_app.web.segment_map import (
    CATALOGUE_SHOWN,
    HISTORY_INTERVAL_S,
    HISTORY_SPAN_S,
    RECENT_CHANGES,
    RecentChanges,
    SizeHistory,
    axis_words,
    map_document,
    map_page,
    merge_changes,
    page_policy,
    parse_since,
    project_centres,
)


def pairwise(points: np.ndarray) -> list[float]:
    return [float(np.linalg.norm(a - b)) for a, b in combinations(points, 2)]


def test_centres_spanning_a_plane_are_drawn_without_distortion() -> None:
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(7, 2)))[0].T  # a random plane in 7-D
    centres = rng.normal(size=(9, 2)) * [3.0, 1.0] @ basis + rng.normal(size=7)
    projection = project_centres(centres)
    points = np.array(projection.points)
    assert points.shape == (9, 2)
    assert projection.explained == pytest.approx(1.0)
    assert pairwise(points) == pytest.approx(pairwise(centres), abs=1e-5)


def test_explained_share_is_that_of_the_two_largest_principal_components() -> None:
    rng = np.random.default_rng(8)
    centres = rng.normal(size=(32, 7)) * [4.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.2]
    projection = project_centres(centres)
    # Independently: eigenvalues of the centres' covariance matrix.
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(centres, rowvar=False)))[::-1]
    assert projection.explained == pytest.approx(eigenvalues[:2].sum() / eigenvalues.sum())
    assert 0.0 < projection.explained < 1.0
    # The axes are orthonormal, and the points are the centred centres on them.
    axes = projection.components
    assert axes @ axes.T == pytest.approx(np.eye(2))
    expected = (centres - centres.mean(axis=0)) @ axes.T
    assert np.array(projection.points) == pytest.approx(expected, abs=1e-5)


def test_picture_does_not_flip_or_move_for_the_same_or_nearly_the_same_centres() -> None:
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(16, 7)) * [3.0, 1.5, 1.0, 0.7, 0.5, 0.3, 0.2]
    first = np.array(project_centres(centres).points)
    # Shifting every centre (a drifting population mean) or listing them in another order
    # changes nothing; a small nudge moves the points only a little (no mirror image).
    shifted = np.array(project_centres(centres + 5.0).points)
    assert shifted == pytest.approx(first, abs=1e-5)
    order = rng.permutation(16)
    assert np.array(project_centres(centres[order]).points) == pytest.approx(first[order],
                                                                              abs=1e-5)
    nudged = np.array(project_centres(centres + rng.normal(scale=0.01, size=centres.shape)).points)
    assert np.abs(nudged - first).max() < 0.1
    # Each axis's largest loading is positive.
    for axis in project_centres(centres).components:
        assert axis[np.argmax(np.abs(axis))] > 0


@pytest.mark.parametrize(("centres", "points"), [
    (np.zeros((0, 3)), []),
    ([[0.3, -1.0, 2.0]], [(0.0, 0.0)]),
    ([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], [(0.0, 0.0)] * 3),
    ([[0.0], [4.0], [1.0]], [(-5 / 3, 0.0), (7 / 3, 0.0), (-2 / 3, 0.0)]),
])
def test_degenerate_centres_are_drawn(centres: list, points: list) -> None:
    projection = project_centres(centres)
    assert len(projection.points) == len(points)
    np.testing.assert_allclose(np.array(projection.points, dtype=float).reshape(-1, 2),
                               np.array(points, dtype=float).reshape(-1, 2), atol=1e-6)
    assert projection.explained == 1.0
    assert np.isfinite(projection.components).all()


def test_two_centres_lie_on_the_x_axis_at_their_distance() -> None:
    projection = project_centres([[1.0, 2.0, 3.0], [2.0, 4.0, 5.0]])
    (xa, ya), (xb, yb) = projection.points
    assert (ya, yb) == (0.0, 0.0)
    assert abs(xa - xb) == pytest.approx(3.0)
    assert projection.explained == 1.0


def test_unknown_centre_values_do_not_break_the_picture() -> None:
    projection = project_centres([[np.nan, 1.0], [2.0, np.inf], [0.0, 0.0]])
    assert np.isfinite(np.array(projection.points)).all()
    with pytest.raises(ValueError, match="K × d"):
        project_centres([1.0, 2.0])


def test_axis_ends_are_named_in_label_words() -> None:
    features = ("orders_90d", "discount_share_90d", "night_share_30d", "shoe_size")
    assert axis_words(features, [0.1, -0.7, 0.6, 0.0]) == (
        "deal seeker · daytime", "pays full price · night owl")
    assert axis_words(features, [0.0, 0.0, 0.2, -0.9], top=1) == ("high shoe_size",
                                                                  "low shoe_size")


def test_size_history_keeps_one_point_per_interval_for_its_span() -> None:
    history = SizeHistory()
    assert history.due(0.0)
    for i in range(1000):  # 10,000 s of points
        history.add(i * HISTORY_INTERVAL_S, {0: i, 3: 2 * i, -1: 7, -2: 1})
    points = history.since(None)
    assert len(points) == len(history) == int(HISTORY_SPAN_S / HISTORY_INTERVAL_S) + 1
    assert points[-1] == {"t": 9990.0, "sizes": [999, 0, 0, 1998]}  # buckets < 0 left out
    assert points[-1]["t"] - points[0]["t"] == HISTORY_SPAN_S
    assert [p["t"] for p in history.since(9970.0)] == [9980.0, 9990.0]
    assert history.since(9990.0) == []
    assert not history.due(9999.0) and history.due(10_000.0)


def test_size_history_memory_is_bounded_as_stated() -> None:
    """The docstring states about 1.3 KB a point and at most 0.47 MB at K = 32."""
    history = SizeHistory()
    for i in range(2000):
        history.add(float(i * 10), {s: 100_000 + s + i for s in range(32)})  # no cached ints
    ring = history._points
    total = sys.getsizeof(ring) + sum(
        sys.getsizeof(point) + sys.getsizeof(point[0]) + sys.getsizeof(point[1])
        + sum(sys.getsizeof(n) for n in point[1]) for point in ring)
    assert len(ring) == 361
    assert total < 0.47 * 2**20, total


def test_recent_changes_are_bounded_and_newest_first() -> None:
    recent = RecentChanges()
    for i in range(250):
        recent.record(1000.0 + i, f"c-{i}".encode(), (i % 5 - 1, i % 7), "event")
    changes = recent.newest_first()
    assert len(changes) == len(recent) == RECENT_CHANGES
    assert [c["customer_id"] for c in changes[:2]] == ["c-249", "c-248"]
    assert changes[0] == {"t": 1249.0, "customer_id": "c-249", "previous_segment": 3,
                          "segment": 4, "trigger": "event"}
    # No segment: first seen (None), not yet assigned (-1), excluded (-2), erased (None).
    recent.record(2000.0, b"c-x", (-1, -2), "consent")
    recent.record(2001.0, b"c-y", (None, None), "erasure")
    recent.record(2002.0, None, None, None)
    top = recent.newest_first()[:3]
    assert [(c["previous_segment"], c["segment"]) for c in top] == [(None, None)] * 3
    assert top[0]["customer_id"] is None


def test_recent_changes_without_customer_ids_for_readers_without_the_token() -> None:
    recent = RecentChanges(capacity=3)
    recent.record(1.0, b"c-secret", (0, 1), "model_update")
    anonymous = recent.newest_first(customers=False)
    assert anonymous == [{"t": 1.0, "previous_segment": 0, "segment": 1,
                          "trigger": "model_update"}]
    assert "c-secret" not in repr(anonymous)


def test_changes_of_several_workers_merge_newest_first() -> None:
    one = RecentChanges()
    two = RecentChanges()
    for i in range(80):
        (one if i % 2 else two).record(float(i), f"c-{i}".encode(), (None, 1), "event")
    merged = merge_changes([one.newest_first(), two.newest_first(), [{"oops": 1}]], limit=50)
    assert [c["t"] for c in merged] == [float(i) for i in range(79, 29, -1)]
    anonymous = merge_changes([one.newest_first()], customers=False)
    assert anonymous and all("customer_id" not in c for c in anonymous)
    assert all("customer_id" in c for c in one.newest_first())  # inputs untouched


def test_map_document_places_each_segment_and_leaves_centres_out() -> None:
    segments = {"model_version": 4, "customers": 12, "unassigned": 1, "excluded": 1,
                "segments": [{"id": i, "label": f"s{i}", "size": i + 4,
                              "centre": {"orders_90d": i}} for i in range(3)]}
    projection = project_centres([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    doc = map_document(segments, projection, ["orders_90d", "app_share_30d"],
                       [{"t": 1.0, "sizes": [4, 5, 6]}], [], now=2.0, model_created=1.5,
                       authorised=False, token_required=True)
    assert [(s["x"], s["y"]) for s in doc["segments"]] == projection.points
    assert all("centre" not in s for s in doc["segments"])
    assert (doc["k"], doc["customers"], doc["unassigned"], doc["excluded"]) == (3, 12, 1, 1)
    assert doc["explained"] == 1.0
    assert doc["axes"]["x"]["high"] and doc["axes"]["y"]["low"]
    assert (doc["authorised"], doc["token_required"]) == (False, True)
    empty = map_document({"model_version": 0, "customers": 0, "segments": []}, None, (), [],
                         [], now=2.0, model_created=None, authorised=True,
                         token_required=False)
    assert empty["segments"] == [] and empty["explained"] is None
    assert doc["catalogue"] == [] == empty["catalogue"]  # none given: an empty list


def snapshot(version: int, centres: list[list[float]], labels: tuple[str, ...],
             active: list[bool]) -> SegmentModel:
    return SegmentModel(
        version=version, features=("orders_90d", "views_7d"),
        transforms=("identity", "identity"), impute=np.zeros(2), mean=np.array([2.0, 10.0]),
        std=np.array([1.0, 5.0]), centres=np.array(centres, dtype=float), labels=labels,
        samples_seen=100, created_at=0.0, active=np.array(active))


def test_map_document_passes_the_newest_catalogue_messages_on() -> None:
    history = SegmentHistory()
    v1 = snapshot(1, [[2, 0], [0, 3], [-1, -1]], ("frequent buyer", "heavy browser",
                                                  "rarely buys"), [True] * 3)
    v2 = snapshot(2, [[2, 1], [0, 3], [-1, -1], [4, 4]],
                  ("frequent buyer", "heavy browser · app", "rarely buys", "big spender"),
                  [True, True, False, True])
    for event in catalogue_changes(None, v1, now_ms=0) + catalogue_changes(v1, v2, now_ms=1):
        history.add(event.to_dict())
    messages = history.recent(100)
    doc = map_document({"model_version": 2, "segments": []}, None, (), [], [], now=2.0,
                       model_created=1.0, authorised=False, token_required=True,
                       catalogue=messages)
    # Newest version first, as given; every field of the message kept, for everyone.
    assert [(m["model_version"], m["segment"], m["kind"]) for m in doc["catalogue"]] == [
        (2, 0, "moved"), (2, 1, "relabelled"), (2, 2, "retired"), (2, 3, "created"),
        (1, 0, "created"), (1, 1, "created"), (1, 2, "created")]
    relabelled = doc["catalogue"][1]
    assert (relabelled["previous_label"], relabelled["label"]) == ("heavy browser",
                                                                   "heavy browser · app")
    assert doc["catalogue"][2]["successor"] == 0
    assert doc["catalogue"] == messages and doc["catalogue"][0] is not messages[0]
    # At most CATALOGUE_SHOWN, the first ones, also from a generator (read no further).
    many = ({"event_id": str(i), "segment": i, "kind": "created"} for i in range(50))
    doc = map_document({"segments": []}, None, (), [], [], now=2.0, model_created=None,
                       authorised=True, token_required=False, catalogue=many)
    assert [m["segment"] for m in doc["catalogue"]] == list(range(CATALOGUE_SHOWN))
    assert next(many)["segment"] == CATALOGUE_SHOWN


def test_page_is_self_contained_and_its_policy_admits_only_its_own_code() -> None:
    page = map_page()
    html = page.html
    # Nothing loaded from anywhere: no src, no external href (the favicon is an empty data:
    # URL), no @import or url() in the style; the SVG namespace is a name, not a download.
    assert re.findall(r"\bsrc\s*=", html) == []
    assert re.findall(r'href="([^"]*)"', html) == ["data:,"]
    assert "@import" not in html and "url(" not in html
    assert set(re.findall(r"https?://[^\s\"'`]+", html)) == {"http://www.w3.org/2000/svg"}
    policy = page.content_security_policy
    assert policy == page_policy(html)
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert "unsafe" not in policy and "http" not in policy
    assert len(directives["script-src"].split()) == 1  # the one inline script, by hash
    assert len(directives["style-src"].split()) == 1
    # The hooks the browser test and users rely on are in the page.
    for hook in ('id="map"', 'id="history"', 'id="changes"', 'id="details"', 'id="legend"',
                 'id="token-form"', "sessionStorage", "data-segment", 'id="catalogue"',
                 'id="customer-form"', 'id="explain"'):
        assert hook in html, hook
    # Data reaches the page only as text: no HTML parsed from strings, no inline handlers
    # or style attributes (the policy would block them), and the customer id is encoded.
    for parsed in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                   "DOMParser", "eval(", "new Function", 'setAttribute("style"', " style=",
                   " onclick="):
        assert parsed not in html, parsed
    assert "customers/${encodeURIComponent(id)}/explain" in html


def test_since_parameter() -> None:
    assert parse_since("12.5") == 12.5
    assert [parse_since(v) for v in (None, "", "inf", "-nan", "1e999", "abc")] == [None] * 6
