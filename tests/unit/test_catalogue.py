"""The segment catalogue (stream_app.core.catalogue): what a model version changes in
the meaning of segments, and the per-segment history folded from those messages."""

from __future__ import annotations

import fastjsonschema
import numpy as np
import orjson
import pytest

from stream_app.core.catalogue import (
    CATALOGUE_KINDS,
    MOVE_THRESHOLD,
    RECENT,
    CatalogueChange,
    SegmentHistory,
    catalogue_changes,
)
from stream_app.core.changes import deterministic_id, iso_ms
from stream_app.core.schemas import load_schema
from stream_app.model.segmentation import TRANSFORMS, SegmentModel

FEATURES = ("orders_30d", "views_7d")
LABELS = ("frequent buyer", "heavy browser", "rarely buys", "deal seeker", "night owl")
validate = fastjsonschema.compile(load_schema("segment-catalogue.schema.json"))


def model(version: int, centres: list[list[float]], labels: tuple[str, ...] | None = None,
          active: list[bool] | None = None, weights: list[float] | None = None,
          features: tuple[str, ...] = FEATURES) -> SegmentModel:
    d = len(features)
    w = np.ones(d) if weights is None else np.array(weights, dtype=float)
    return SegmentModel(
        version=version, features=features, transforms=("identity",) * d,
        impute=np.zeros(d), mean=np.zeros(d), std=np.ones(d) / w,
        centres=np.array(centres, dtype=float),
        labels=labels if labels is not None else LABELS[:len(centres)],
        samples_seen=100, created_at=0.0,
        active=np.array(active if active is not None else [True] * len(centres)),
        weights=w,
    )


def kinds(events: list[CatalogueChange]) -> list[tuple[int, str, int | None]]:
    return [(e.segment, e.kind, e.related) for e in events]


V1 = model(1, [[0.0, 0.0], [3.0, 0.0], [6.0, 6.0]])


def test_constants():
    assert "identity" in TRANSFORMS and MOVE_THRESHOLD == 0.5
    assert CATALOGUE_KINDS == ("created", "revived", "retired", "merged", "relabelled",
                               "moved")


def test_first_version_every_active_segment_is_created():
    events = catalogue_changes(None, V1, now_ms=0)
    assert kinds(events) == [(0, "created", None), (1, "created", None), (2, "created", None)]
    assert all(e.previous_model_version is None and e.previous_label is None
               and e.moved_by is None and e.active for e in events)
    first = model(1, [[0.0, 0.0], [3.0, 0.0]], active=[True, False])
    assert kinds(catalogue_changes(None, first)) == [(0, "created", None)]


def test_unchanged_version_announces_nothing():
    assert catalogue_changes(V1, model(2, V1.centres.tolist())) == []


def test_relabel_wins_over_move_and_carries_moved_by():
    v2 = model(2, [[0.1, 0.0], [3.0, 2.0], [6.0, 6.0]],
               labels=("frequent buyer · app", "big browser", "rarely buys"))
    events = catalogue_changes(V1, v2, now_ms=0)
    assert kinds(events) == [(0, "relabelled", None), (1, "relabelled", None)]
    assert [e.moved_by for e in events] == [0.1, 2.0]
    assert events[0].previous_label == "frequent buyer"
    assert events[0].label == "frequent buyer · app"
    assert events[0].previous_model_version == 1 and events[0].model_version == 2


@pytest.mark.parametrize(("shift", "moved"), [(0.4, False), (0.5, False), (0.6, True)])
def test_move_beyond_the_threshold_only(shift, moved):
    v2 = model(2, [[0.0, shift], [3.0, 0.0], [6.0, 6.0]])
    events = catalogue_changes(V1, v2)
    assert kinds(events) == ([(0, "moved", None)] if moved else [])
    if moved:
        assert events[0].moved_by == pytest.approx(shift)


def test_moves_are_measured_with_the_weights_taken_out():
    weighted = model(1, [[0.0, 0.0], [6.0, 0.0]], weights=[2.0, 2.0])
    # 0.8 in the weighted space is 0.4 population standard deviations
    assert catalogue_changes(weighted, model(2, [[0.8, 0.0], [6.0, 0.0]],
                                             weights=[2.0, 2.0])) == []
    (event,) = catalogue_changes(weighted, model(2, [[1.2, 0.0], [6.0, 0.0]],
                                                 weights=[2.0, 2.0]))
    assert event.kind == "moved" and event.moved_by == pytest.approx(0.6)


def test_retired_near_an_active_centre_is_merged_into_it():
    v1 = model(1, [[0.0, 0.0], [0.4, 0.0], [5.0, 5.0]])
    v2 = model(2, [[0.1, 0.0], [0.4, 0.0], [5.0, 5.0]], active=[True, False, True])
    (event,) = catalogue_changes(v1, v2, now_ms=0)
    assert (event.segment, event.kind, event.related) == (1, "merged", 0)
    assert event.moved_by == pytest.approx(0.3) and not event.active
    message = event.to_dict()
    assert message["into"] == 0 and "successor" not in message and "revives" not in message


def test_retired_far_from_every_active_centre_names_its_successor():
    v2 = model(2, V1.centres.tolist(), active=[True, False, True])
    (event,) = catalogue_changes(V1, v2, now_ms=0)
    assert (event.segment, event.kind, event.related, event.moved_by) == (1, "retired", 0, 3.0)
    message = event.to_dict()
    assert message["successor"] == 0 and "into" not in message


def test_retired_without_any_active_segment_has_no_successor():
    v2 = model(2, V1.centres.tolist(), active=[False, False, False])
    events = catalogue_changes(V1, v2, now_ms=0)
    assert kinds(events) == [(0, "retired", None), (1, "retired", None), (2, "retired", None)]
    assert all(e.moved_by is None and e.to_dict()["successor"] is None for e in events)
    for e in events:
        validate(e.to_dict())


def test_new_segment_near_a_retired_one_revives_it():
    v2 = model(2, V1.centres.tolist(), active=[True, False, True])
    v3 = model(3, [*V1.centres.tolist(), [3.2, 0.1], [-4.0, 4.0]],
               active=[True, False, True, True, True])
    events = catalogue_changes(v2, v3, now_ms=0)
    assert kinds(events) == [(3, "revived", 1), (4, "created", None)]
    assert events[0].moved_by == pytest.approx(np.hypot(0.2, 0.1), abs=1e-4)
    assert events[0].previous_label is None and events[1].moved_by is None
    assert events[0].to_dict()["revives"] == 1


def test_revives_the_nearest_retired_segment():
    v1 = model(1, [[0.0, 0.0], [3.0, 0.0], [3.6, 0.0]], active=[True, False, False])
    v2 = model(2, [[0.0, 0.0], [3.0, 0.0], [3.6, 0.0], [3.4, 0.0]],
               active=[True, False, False, True])
    assert kinds(catalogue_changes(v1, v2)) == [(3, "revived", 2)]


def test_one_event_per_id_in_id_order():
    v2 = model(2, [[0.0, 2.0], [3.0, 0.0], [6.0, 6.0], [3.1, 0.0], [9.0, 0.0]],
               labels=("frequent buyer", "heavy browser", "night owl", "a", "b"),
               active=[True, False, True, True, True])
    events = catalogue_changes(V1, v2)
    segments = [e.segment for e in events]
    assert segments == sorted(set(segments))
    assert kinds(events) == [(0, "moved", None), (1, "merged", 3), (2, "relabelled", None),
                             (3, "revived", 1), (4, "created", None)]
    assert {e.kind for e in events} <= set(CATALOGUE_KINDS)


def test_event_ids_are_deterministic():
    v2 = model(2, [[0.0, 2.0], [3.0, 0.0], [6.0, 6.0]])
    (a,) = catalogue_changes(V1, v2, now_ms=1)
    (b,) = catalogue_changes(V1, v2, sizes={0: 4}, now_ms=2)
    assert a.event_id == b.event_id == deterministic_id("segment-catalogue", 2, 0, "moved")
    assert a.to_dict()["event_id"] == a.event_id
    other = catalogue_changes(V1, model(3, v2.centres.tolist()))
    assert other[0].event_id != a.event_id
    assert a.key == b"0"


def test_message_fields():
    v1 = SegmentModel(
        version=1, features=FEATURES, transforms=("identity", "identity"),
        impute=np.zeros(2), mean=np.array([2.0, 10.0]), std=np.array([1.0, 5.0]),
        centres=np.array([[0.0, 0.0], [1.0, 1.0]]), labels=("a", "b"), samples_seen=10,
        created_at=0.0)
    events = catalogue_changes(None, v1, sizes={0: 7}, now_ms=1767225600000)
    message = events[0].to_dict()
    assert message["size"] == 7 and events[1].size == 0
    assert message["centre"] == {"orders_30d": 2.0, "views_7d": 10.0}
    assert message["typical"] == events[0].typical and isinstance(message["typical"], str)
    assert message["emitted_at"] == iso_ms(1767225600000) == "2026-01-01T00:00:00.000Z"
    assert list(message) == ["event_id", "segment", "kind", "model_version",
                             "previous_model_version", "label", "previous_label", "active",
                             "size", "typical", "centre", "moved_by", "emitted_at"]
    assert orjson.loads(events[0].to_json()) == message
    assert catalogue_changes(None, v1)[0].size is None


def test_versions_with_other_features_compare_on_the_shared_ones():
    v2 = model(2, [[0.0, 0.0, 1.0], [3.0, 0.0, 1.0], [6.0, 6.0, 1.0]],
               features=(*FEATURES, "age"))
    assert catalogue_changes(V1, v2) == []
    v3 = model(3, [[0.0], [1.0], [2.0]], features=("income",))
    assert kinds(catalogue_changes(V1, v3)) == [(0, "created", None), (1, "created", None),
                                                (2, "created", None)]


def scenario() -> list[CatalogueChange]:
    v2 = model(2, [[0.0, 2.0], [3.0, 0.0], [6.0, 6.0], [3.1, 0.0], [9.0, 0.0]],
               labels=("frequent buyer", "heavy browser", "night owl", "a", "b"),
               active=[True, False, True, True, True])
    v3 = model(3, [[0.0, 2.0], [3.0, 0.0], [6.0, 6.0], [3.1, 0.0], [9.0, 0.0]],
               labels=("frequent buyer", "heavy browser", "deal seeker", "a", "b"),
               active=[False, False, True, True, True])
    return (catalogue_changes(None, V1, sizes={0: 1, 1: 2, 2: 3}, now_ms=0)
            + catalogue_changes(V1, v2, sizes={0: 1, 2: 3, 3: 2}, now_ms=1000)
            + catalogue_changes(v2, v3, now_ms=2000))


def test_every_message_validates_against_the_schema():
    events = scenario()
    assert {e.kind for e in events} == set(CATALOGUE_KINDS)
    for event in events:
        validate(event.to_dict())


@pytest.mark.parametrize("change", [
    {"kind": "deleted"}, {"event_id": "not-a-uuid"}, {"extra": 1}, {"into": 1},
    {"size": -1}, {"segment": None},
])
def test_the_schema_rejects_malformed_messages(change):
    (moved,) = catalogue_changes(V1, model(2, [[0.0, 2.0], [3.0, 0.0], [6.0, 6.0]]))
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validate({**moved.to_dict(), **change})


def test_the_schema_requires_the_related_id_of_the_kind():
    v2 = model(2, V1.centres.tolist(), active=[True, False, True])
    message = catalogue_changes(V1, v2)[0].to_dict()
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validate({k: v for k, v in message.items() if k != "successor"})
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validate({**message, "kind": "merged", "into": 0})


def test_history_folds_each_segments_story():
    history = SegmentHistory()
    assert history.announced_version == 0 and len(history) == 0
    assert history.of(0) == {"first_version": None, "last_relabel_version": None,
                             "previous_label": None, "last_event": None}
    events = scenario()
    for event in events:
        history.add(event.to_dict())
    assert history.announced_version == 3 and len(history) == len(events)
    assert history.of(2) == {"first_version": 1, "last_relabel_version": 3,
                             "previous_label": "night owl",
                             "last_event": {"kind": "relabelled", "model_version": 3}}
    assert history.of(3)["first_version"] == 2
    assert history.of(3)["last_event"] == {"kind": "revived", "model_version": 2}
    assert history.of(0)["last_event"] == {"kind": "retired", "model_version": 3}
    assert history.of(1)["last_relabel_version"] is None


def test_history_ignores_duplicates_and_order():
    messages = [e.to_dict() for e in scenario()]
    forward, backward = SegmentHistory(), SegmentHistory()
    for message in messages + messages:
        forward.add(message)
    for message in reversed(messages):
        backward.add(message)
    assert len(forward) == len(backward) == len(messages)
    for segment in range(5):
        assert forward.of(segment) == backward.of(segment)
    assert forward.announced_version == backward.announced_version == 3
    assert forward.recent(len(messages)) == backward.recent(len(messages))


def test_recent_is_bounded_and_newest_first():
    history = SegmentHistory()
    for version in range(1, 151):
        history.add({"event_id": deterministic_id("segment-catalogue", version, 0, "moved"),
                     "segment": 0, "kind": "moved", "model_version": version})
    assert len(history) == 150
    assert len(history.recent(1000)) == RECENT
    assert [m["model_version"] for m in history.recent(3)] == [150, 149, 148]
    assert history.recent(RECENT)[-1]["model_version"] == 51
    assert history.recent(0) == []
