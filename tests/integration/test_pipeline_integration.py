"""End to end on a real broker: generated shop traffic in, segment changes out."""

from __future__ import annotations

import collections
import time

import orjson
from jsonschema import Draft7Validator, FormatChecker

from stream_app.core.changes import iso_ms
from stream_app.core.schemas import load_schema
from stream_app.tools.generator import TYPES, SyntheticShop
from tests.conftest import consume_all, metric_sum, produce, wait_for, wait_until_settled

CUSTOMERS = 300
EVENTS = 8000
STEP_MS = 300_000  # 5 minutes of event time per event: about 28 days of history


def test_generated_traffic_is_segmented_end_to_end(make_worker, broker):
    worker = make_worker(SEGMENTS_K=8).start()
    now = int(time.time() * 1000)
    shop = SyntheticShop(CUSTOMERS, seed=5, start_ms=now - EVENTS * STEP_MS, step_ms=STEP_MS)
    events = list(shop.events(EVENTS))
    produce(broker.bootstrap_servers, [(worker.topics[e.kind], e.key, e.value) for e in events])

    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total") == EVENTS,
             180, "every input event to be consumed")
    customers = {e.key.decode() for e in events}
    assert len(customers) == CUSTOMERS

    def everyone_assigned() -> bool:
        _, body = worker.get("/segments")
        return body["customers"] == CUSTOMERS and body["unassigned"] == 0

    wait_for(everyone_assigned, 120, "every customer to be assigned a segment")
    wait_until_settled(worker)
    total = int(metric_sum(worker.metrics(), "stream_app_segment_changes_total"))
    messages = consume_all(broker.bootstrap_servers, worker.topics["changes"], total)
    changes = [orjson.loads(m.value) for m in messages]

    # Every change is schema-valid, keyed by its customer, with a unique deterministic id.
    validator = Draft7Validator(load_schema("segment-change.schema.json"),
                                format_checker=FormatChecker())
    for message, change in zip(messages, changes):
        errors = list(validator.iter_errors(change))
        assert not errors, (change, errors[0].message)
        assert message.key.decode() == change["customer_id"]
    assert len({c["event_id"] for c in changes}) == len(changes)
    assert {c["customer_id"] for c in changes} == customers

    # Each customer's moves chain: previous_segment is the segment of its last change.
    final: dict[str, int] = {}
    for change in changes:
        assert change["previous_segment"] == final.get(change["customer_id"]), [
            (c["trigger"], c["previous_segment"], c["segment"], c["model_version"], c["ts"],
             c["event_id"]) for c in changes if c["customer_id"] == change["customer_id"]]
        final[change["customer_id"]] = change["segment"]
    # (inactivity: a customer whose partition's event time passed a UTC midnight after
    # the customer's last event is swept, and may move.)
    assert {c["trigger"] for c in changes} <= {"event", "model_update", "profile",
                                               "inactivity"}

    # Planted types land mostly in distinct segments.
    by_segment: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    by_type: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for customer, segment in final.items():
        planted = shop.planted[customer]
        by_segment[segment][planted] += 1
        by_type[planted][segment] += 1
    purity = sum(max(c.values()) for c in by_segment.values()) / CUSTOMERS
    # Measured 0.78-0.95 across runs (a segment learned from the first events can hold two
    # types until the model separates them; the margin keeps some customers in the segment
    # they were first given, docs/segmentation.md *held*). Four equal types at random would
    # give ~0.3.
    assert purity >= 0.7, dict(by_segment)
    # Every planted type is what at least one segment is mostly made of. (With K = 8 a type
    # spreads over two or three segments; which one holds most of it can be shared with a
    # neighbouring type when an immature bargain hunter still looks like a window shopper.)
    majorities = {counts.most_common(1)[0][0] for counts in by_segment.values()}
    assert majorities == set(TYPES), (dict(by_segment), dict(by_type))

    # The API agrees with the stream and with the events that were sent.
    for customer in sorted(customers)[:25]:
        status, body = worker.get(f"/customers/{customer}")
        assert status == 200
        mine = [orjson.loads(e.value) for e in events if e.key.decode() == customer]
        behaviour = [d for d, e in zip(mine, [e for e in events if e.key.decode() == customer])
                     if e.kind != "profile"]
        purchases = [d for d in behaviour if "order_id" in d]
        assert body["segment"] == final[customer]
        assert body["features"]["orders_total"] == len(purchases)
        assert round(body["features"]["revenue_total"] * 100) == sum(
            round(p["amount"] * 100) for p in purchases)
        # The clock is the customer's newest event, or later once a sweep let event time
        # pass midnight (up to the newest event of the whole input).
        newest = max(e.ts for e in events if e.key.decode() == customer and e.kind != "profile")
        assert iso_ms(newest) <= body["as_of"] <= iso_ms(max(e.ts for e in events))
        assert body["profile"]["region"]
    status, _ = worker.get("/customers/nobody-by-this-name")
    assert status == 404

    # Segments are described, and sizes add up to the customers.
    _, segments = worker.get("/segments")
    assert len(segments["segments"]) == 8
    # Members of a retired segment id count until their next evaluation moves them.
    assert sum(s["size"] for s in segments["segments"] + segments["retired"]) == CUSTOMERS
    for s in segments["segments"]:
        assert s["label"] and set(s["centre"]) >= {"orders_90d", "app_share_30d"}

    # Metrics tell the same story.
    m = worker.metrics()
    per_topic = collections.Counter(worker.topics[e.kind] for e in events)
    for topic, count in per_topic.items():
        assert metric_sum(m, "stream_app_events_consumed_total", topic=topic) == count
    assert metric_sum(m, "stream_app_invalid_events_total") == 0
    # Every change counted is on the topic (a sweep or a model update may have added some
    # since the count settled above).
    published = int(metric_sum(m, "stream_app_segment_changes_total"))
    assert published >= len(changes)
    consume_all(broker.bootstrap_servers, worker.topics["changes"], published)
    assert metric_sum(m, "stream_app_customers") == CUSTOMERS
    assert metric_sum(m, "stream_app_model_version") >= 1
    assert metric_sum(m, "stream_app_processing_seconds_count") >= EVENTS
    assert worker.get("/health") == (200, {"status": "ok"})
