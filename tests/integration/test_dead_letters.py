"""Bad input goes to the DLQ with a reason; the worker keeps processing good events."""

from __future__ import annotations

import base64
import collections
import time

import orjson
from jsonschema import Draft7Validator

from stream_app.core.schemas import load_schema
from tests.conftest import consume_all, metric_sum, produce, wait_for

NOW = int(time.time() * 1000)


def click(event_id: str, customer: str = "good-1", **extra: object) -> bytes:
    doc = {"event_id": event_id, "customer_id": customer, "ts": NOW - 60_000,
           "event_type": "product_view", "session_id": "s1", **extra}
    return orjson.dumps(doc)


def purchase(event_id: str, customer: str = "good-1", **extra: object) -> bytes:
    doc = {"event_id": event_id, "customer_id": customer, "ts": NOW - 30_000,
           "order_id": "o-" + event_id, "amount": 42.5, **extra}
    return orjson.dumps(doc)


def test_bad_input_goes_to_the_dlq_with_reasons(make_worker, broker):
    worker = make_worker(MAX_MESSAGE_BYTES="20000").start()
    c, p = worker.topics["click"], worker.topics["purchase"]
    nested = b'{"event_id":"n","customer_id":"bad","ts":1767225600000,"event_type":"search","x":' \
        + b"[" * 5000 + b"]" * 5000 + b"}"
    bad = [
        (c, b"bad", b"{not json", "invalid_json"),
        (c, b"bad", b"\xff\xfe\x00garbage", "invalid_json"),
        (c, b"bad", b"[]", "empty_array"),
        (c, b"bad", b'"just a string"', "not_an_object"),
        (c, b"bad", orjson.dumps({"event_id": "m1", "customer_id": "bad", "ts": NOW}),
         "schema_violation"),
        (c, b"bad", click("t1", "bad", event_type="teleport"), "schema_violation"),
        (c, b"bad", click("t2", "bad", price=-5), "schema_violation"),
        (p, b"bad", purchase("t3", "bad", amount="12.00"), "schema_violation"),
        (p, b"bad", purchase("t4", "bad", amount=True), "schema_violation"),
        (p, b"bad", purchase("t5", "bad", amount=1e15), "schema_violation"),
        (p, b"bad", b'{"event_id":"t6","customer_id":"bad","ts":1767225600000,'
                    b'"order_id":"o","amount":NaN}', "invalid_json"),
        (p, b"bad", b'{"event_id":"t7","customer_id":"bad","ts":1767225600000,'
                    b'"order_id":"o","amount":Infinity}', "invalid_json"),
        (c, b"bad", click("t8", "bad", ts="yesterday"), "invalid_timestamp"),
        (c, b"bad", click("t9", "bad", ts="2026-01-01T10:00:00"), "invalid_timestamp"),
        (c, b"bad", click("t10", "bad", ts="2199-01-01T00:00:00Z"), "timestamp_out_of_range"),
        (c, b"bad", click("t11", "bad", ts=1000), "timestamp_out_of_range"),  # 1970
        (c, b"someone-else", click("t12", "bad"), "key_mismatch"),
        (c, None, click("t13", "bad"), "key_mismatch"),
        (c, b"bad", click("x" * 5000, "bad"), "schema_violation"),
        (c, b"bad", click("t14", "bad", query="q" * 30_000), "oversized"),
        (c, b"bad", nested, "invalid_json"),
        # The event_id of g3 (below, sent before it) with other content: a producer bug.
        (p, b"good-1", purchase("g3", discount=5.0, amount=9999.0), "conflicting_duplicate"),
    ]
    good = [
        (c, b"good-1", click("g1"), None),
        (c, b"good-1", click("g2", event_type="search"), None),
        (p, b"good-1", purchase("g3", discount=5.0), None),
        (c, b"good-1", click("g4", channel="app"), None),
    ]
    # Interleave: every good event is surrounded by bad ones.
    messages = []
    for i, item in enumerate(bad):
        messages.append(item)
        if i % 5 == 2 and good:
            messages.append(good.pop(0))
    messages.extend(good)
    produce(broker.bootstrap_servers, [(t, k, v) for t, k, v, _ in messages])

    total = len(messages)
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total") == total,
             90, "every message to be consumed")
    n_bad = len(bad)
    letters = [orjson.loads(m.value) for m in
               consume_all(broker.bootstrap_servers, worker.topics["dlq"], n_bad)]

    validator = Draft7Validator(load_schema("dead-letter.schema.json"))
    expected = {v: reason for _, _, v, reason in bad}
    for letter in letters:
        assert not list(validator.iter_errors(letter)), letter
        original = base64.b64decode(letter["value_base64"])
        assert letter["reason"] == expected[original], (letter["reason"], letter["detail"])
        assert letter["detail"]
        assert letter["topic"] in (c, p) and letter["offset"] >= 0
    assert sorted(base64.b64decode(x["value_base64"]) for x in letters) == sorted(expected)

    m = worker.metrics()
    for reason, count in collections.Counter(r for *_, r in bad).items():
        assert metric_sum(m, "stream_app_invalid_events_total", reason=reason) == count, reason
    assert metric_sum(m, "stream_app_dlq_messages_total") == n_bad

    status, body = worker.get("/customers/good-1")
    assert status == 200
    f = body["features"]
    assert (f["orders_total"], f["revenue_total"], f["discount_share_90d"]) == (1, 42.5, 1.0)
    assert (f["views_24h"], f["searches_7d"], f["sessions_7d"]) == (2, 1, 1)
    assert f["app_share_30d"] == 0.25
    assert worker.get("/customers/bad")[0] == 404
    assert worker.process is not None and worker.process.poll() is None


def test_a_json_array_message_is_processed_element_by_element(make_worker, broker):
    """A collector's batch: good elements are applied in order, each bad one goes to the
    DLQ on its own (its bytes, its reason), the events counter counts elements."""
    worker = make_worker().start()
    c = worker.topics["click"]
    stranger = click("b3", "someone-else")
    batch = b"[" + b",".join([click("b1", "batch-1"), click("b2", "batch-1", event_type="search"),
                              stranger, b'"text"', click("b1", "batch-1"),
                              click("b4", "batch-1", channel="app")]) + b"]"
    produce(broker.bootstrap_servers, [(c, b"batch-1", batch), (c, b"batch-1", b"[]"),
                                       (c, b"batch-1", click("b5", "batch-1"))])
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total") == 8,
             90, "every element to be consumed")
    letters = sorted((orjson.loads(m.value) for m in
                      consume_all(broker.bootstrap_servers, worker.topics["dlq"], 3)),
                     key=lambda x: x["reason"])
    assert [x["reason"] for x in letters] == ["empty_array", "key_mismatch", "not_an_object"]
    assert orjson.loads(letters[1]["value"]) == orjson.loads(stranger)
    assert letters[2]["value"] == '"text"' and letters[0]["value"] == "[]"
    m = worker.metrics()
    assert metric_sum(m, "stream_app_duplicate_events_total") == 1
    assert metric_sum(m, "stream_app_dlq_messages_total") == 3
    status, body = worker.get("/customers/batch-1")
    assert status == 200
    f = body["features"]
    assert (f["views_24h"], f["searches_7d"], f["app_share_30d"]) == (3, 1, 0.25)


def test_a_conflicting_duplicate_is_a_dead_letter_and_changes_no_feature(make_worker, broker):
    """A producer reusing an event_id for other content: the copy goes to the DLQ as
    ``conflicting_duplicate`` and is counted under that reason, not as a duplicate; an
    honest redelivery (re-serialised) is a duplicate; the features are the first copy's."""
    worker = make_worker().start()
    c, p = worker.topics["click"], worker.topics["purchase"]
    original = purchase("d1", "dup-1", amount=10.0, channel="app")
    honest = orjson.dumps(dict(reversed(orjson.loads(original).items())),
                          option=orjson.OPT_INDENT_2)
    conflicting = purchase("d1", "dup-1", amount=9999.0, channel="app")
    produce(broker.bootstrap_servers, [(p, b"dup-1", original), (c, b"dup-1", click("d2", "dup-1")),
                                       (p, b"dup-1", honest), (p, b"dup-1", conflicting)])
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total") == 4,
             90, "every message to be consumed")

    (record,) = consume_all(broker.bootstrap_servers, worker.topics["dlq"], 1)
    letter = orjson.loads(record.value)
    assert not list(Draft7Validator(load_schema("dead-letter.schema.json")).iter_errors(letter))
    assert letter["reason"] == "conflicting_duplicate" and "event_id" in letter["detail"]
    assert "dup-1" not in letter["detail"] and "9999" not in letter["detail"]
    assert base64.b64decode(letter["value_base64"]) == conflicting
    assert (letter["topic"], letter["key"]) == (p, "dup-1")
    m = worker.metrics()
    assert metric_sum(m, "stream_app_invalid_events_total", reason="conflicting_duplicate") == 1
    assert metric_sum(m, "stream_app_invalid_events_total") == 1
    assert metric_sum(m, "stream_app_dlq_messages_total") == 1
    assert metric_sum(m, "stream_app_duplicate_events_total") == 1  # the honest copy only
    assert metric_sum(m, "stream_app_events_consumed_total", type="invalid") == 1

    status, body = worker.get("/customers/dup-1")
    assert status == 200
    f = body["features"]
    assert (f["orders_total"], f["revenue_total"], f["views_24h"]) == (1, 10.0, 1)
    assert f["app_share_30d"] == 0.5
