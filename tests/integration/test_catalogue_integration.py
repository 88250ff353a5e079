"""The segment catalogue on a running worker and a real broker: model versions forced by
the test (published on the model topic as the learner would) are announced on the
catalogue topic, one schema-valid message per affected segment; ``GET /segments`` shows
each segment's history; ``stream-app watch --catalogue`` follows the topic."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import orjson
from jsonschema import Draft7Validator, FormatChecker

from stream_app.core.schemas import load_schema
from stream_app.model.segmentation import SegmentModel
from tests.conftest import consume_all, produce, wait_for

CATALOGUE_SCHEMA = Draft7Validator(load_schema("segment-catalogue.schema.json"),
                                   format_checker=FormatChecker())
FEATURES = ("orders_30d", "views_7d")


def forced_model(version: int, centres: list[list[float]], labels: tuple[str, ...],
               active: list[bool]) -> bytes:
    """A model version as the learner publishes it (identity transforms, unit scale)."""
    return SegmentModel(
        version=version, features=FEATURES, transforms=("identity", "identity"),
        impute=np.zeros(2), mean=np.zeros(2), std=np.ones(2),
        centres=np.array(centres, dtype=float), labels=labels, samples_seen=100,
        created_at=1.0, active=np.array(active)).to_json()


def catalogue(broker, topic: str, count: int) -> list[dict]:
    return [orjson.loads(m.value) for m in consume_all(broker.bootstrap_servers, topic, count)]


def test_relabel_and_merge_are_announced(make_worker, broker):
    # No input events: the learner never becomes ready, so the versions are the test's.
    worker = make_worker(SEGMENTS_K=3).start()
    model_topic = f"{worker.app_id}-segment-model"
    topic = worker.env["SEGMENT_CATALOGUE_TOPIC"]
    labels = ("frequent buyers", "browsers", "night owls")
    first = forced_model(1, [[0, 0], [3, 0], [6, 6]], labels, [True, True, True])
    produce(broker.bootstrap_servers, [(model_topic, None, first)])
    created = catalogue(broker, topic, 3)
    assert sorted((m["segment"], m["kind"]) for m in created) == [
        (0, "created"), (1, "created"), (2, "created")]

    # Version 2 relabels segment 1 only; version 3 retires segment 2, whose last centre
    # segment 1 now stands on: a merge into 1 (and segment 1 moved there).
    relabelled = forced_model(2, [[0, 0], [3, 0], [6, 6]],
                            ("frequent buyers", "window shoppers", "night owls"),
                            [True, True, True])
    merged = forced_model(3, [[0, 0], [6.1, 6.0], [6, 6]],
                        ("frequent buyers", "window shoppers", "night owls"),
                        [True, True, False])
    produce(broker.bootstrap_servers, [(model_topic, None, relabelled)])
    produce(broker.bootstrap_servers, [(model_topic, None, merged)])
    messages = catalogue(broker, topic, 6)
    for message in messages:
        errors = [e.message for e in CATALOGUE_SCHEMA.iter_errors(message)]
        assert not errors, (message, errors)
    assert len({m["event_id"] for m in messages}) == len(messages)
    later = sorted((m["model_version"], m["segment"], m["kind"]) for m in messages[3:])
    assert later == [(2, 1, "relabelled"), (3, 1, "moved"), (3, 2, "merged")], messages
    relabel = next(m for m in messages if m["kind"] == "relabelled")
    assert (relabel["previous_label"], relabel["label"]) == ("browsers", "window shoppers")
    assert relabel["previous_model_version"] == 1 and relabel["active"] is True
    merge = next(m for m in messages if m["kind"] == "merged")
    assert merge["into"] == 1 and merge["active"] is False and merge["label"] == "night owls"

    def history() -> dict | None:
        doc = worker.get("/segments")[1]
        segments = {s["id"]: s for s in doc["segments"] + doc["retired"]}
        ready = segments.get(2, {}).get("history", {}).get("last_event")
        return segments if ready and ready["kind"] == "merged" else None

    segments = wait_for(history, 30, "GET /segments to show the merge in its history")
    assert segments[1]["history"]["first_version"] == 1
    assert segments[1]["history"]["last_relabel_version"] == 2
    assert segments[1]["history"]["previous_label"] == "browsers"
    assert segments[0]["history"]["last_relabel_version"] is None

    watched = subprocess.run(
        [sys.executable, "-m", "stream_app.tools.cli", "watch", "--catalogue",
         "--from-beginning", "--segment", "1", "--count", "4"],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
             "SEGMENT_CATALOGUE_TOPIC": topic},
        capture_output=True, text=True, timeout=60)
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    # Segment 1's messages, and the merge that names it.
    assert len(lines) == 4, lines
    assert any('relabelled: "browsers" → "window shoppers"' in line for line in lines), lines
    assert any("merged into segment 1" in line for line in lines), lines
