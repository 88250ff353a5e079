"""Audiences in the pipeline, without a broker: judged on every update of a customer,
enter/exit messages with deterministic ids, hysteresis, re-sending after a redelivery,
leaving on erasure and withdrawn consent, and judging again after a reload.

The definitions module itself (file format, condition language) is tested in
tests/unit/test_audiences.py.
"""

from __future__ import annotations

import orjson
from jsonschema import Draft7Validator, FormatChecker

from stream_app.core.audiences import AudienceSet
from stream_app.core.pipeline import LEAVING, CustomerPipeline, Outcome
from stream_app.core.schemas import load_schema
from stream_app.core.state import CustomerState
from stream_app.worker.options import pipeline_options
from tests.factories import MIN_MS, T0, Customer, browser_and_buyer, learn_model, settings
from tests.unit.test_privacy import erase

AUDIENCE_SCHEMA = Draft7Validator(load_schema("audience-change.schema.json"),
                                  format_checker=FormatChecker())


def definitions(*audiences: dict[str, str]) -> AudienceSet:
    return AudienceSet.from_document({"audiences": list(audiences)}, source="test")


BROWSERS = {"name": "browsers", "condition": "views_7d >= 2"}
AFFLUENT = {"name": "affluent", "condition": "income >= 100000",
            "exit_condition": "income < 50000"}
LAPSED = {"name": "lapsed", "condition": "days_since_last_order > 30"}


def pipeline_with(*audiences: dict[str, str], model=None) -> CustomerPipeline:
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_audiences(definitions(*audiences))
    if model is not None:
        pipeline.use_model(model)
    return pipeline


def messages(out: Outcome) -> list[dict]:
    """The audience-change messages of an outcome, each checked against its schema."""
    docs = [orjson.loads(raw) for _, _, raw in out.audience_changes or []]
    for doc in docs:
        AUDIENCE_SCHEMA.validate(doc)
    return docs


def test_without_definitions_nothing_is_judged_or_stored():
    c = Customer(CustomerPipeline(pipeline_options(settings())))
    for n in range(3):
        out = c.click(T0 + n * MIN_MS, n)
        assert out.audience_changes is None
    assert b'"av"' not in c.stored and CustomerState.from_bytes(c.stored).audiences == []


def test_a_customer_enters_when_its_features_meet_the_condition():
    pipeline = pipeline_with(BROWSERS)
    c = Customer(pipeline)
    assert c.click(T0, 1).audience_changes is None  # one view: not yet
    out = c.click(T0 + MIN_MS, 2)
    [doc] = messages(out)
    assert (doc["audience"], doc["action"], doc["trigger"]) == ("browsers", "enter", "event")
    assert doc["customer_id"] == "c1" and doc["definitions_version"] == pipeline.audiences.version
    assert out.audience_moves == [("browsers", "enter")] and out.audience_trigger == "event"
    assert CustomerState.from_bytes(c.stored).audiences == ["browsers"]
    assert c.click(T0 + 2 * MIN_MS, 3).audience_changes is None  # still in: no new message
    # The same input through another pipeline gives the same event id (deterministic).
    again = Customer(pipeline_with(BROWSERS))
    again.click(T0, 1)
    assert messages(again.click(T0 + MIN_MS, 2))[0]["event_id"] == doc["event_id"]


def test_hysteresis_one_enter_and_one_exit_around_the_thresholds():
    c = Customer(pipeline_with(AFFLUENT))
    actions = []
    for n, income in enumerate([120_000, 80_000, 101_000, 60_000, 49_000, 70_000, 99_000]):
        out = c.profile(T0 + n * MIN_MS, income=income)
        actions += [(d["action"], d["trigger"]) for d in messages(out)]
    assert actions == [("enter", "profile"), ("exit", "profile")]


def test_a_comparison_with_a_missing_value_does_not_hold():
    c = Customer(pipeline_with(LAPSED))  # never ordered: days_since_last_order is null
    out = c.click(T0, 1)
    assert out.audience_changes is None and out.reason is None
    assert CustomerState.from_bytes(c.stored).audiences == []


def test_a_redelivered_cause_sends_the_same_changes_again_without_counting_them():
    c = Customer(pipeline_with(BROWSERS, AFFLUENT))
    c.click(T0, 1)
    first = c.click(T0 + MIN_MS, 2)
    redelivered = c.click(T0 + MIN_MS, 2)  # the same click (a crash lost its message)
    assert redelivered.duplicate and redelivered.state is None
    assert messages(redelivered) == [{**d, "emitted_at": messages(redelivered)[0]["emitted_at"]}
                                     for d in messages(first)]
    assert redelivered.audience_moves is None  # sizes are not counted twice
    profile = c.profile(T0 + 2 * MIN_MS, income=150_000, event_id="p-1")
    again = c.profile(T0 + 2 * MIN_MS, income=150_000, event_id="p-1")
    assert [d["event_id"] for d in messages(again)] == [d["event_id"] for d in messages(profile)]
    assert again.state is None and again.audience_moves is None


def test_a_segment_condition_follows_the_customers_moves():
    model = learn_model()
    _, buyer = browser_and_buyer(model)
    buyers = {"name": "buyers", "condition": f"segment == {buyer}"}
    c = Customer(pipeline_with(buyers, model=model))
    c.click(T0, 1)
    actions = []
    for n in range(1, 5):
        actions += messages(c.buy(T0 + n * MIN_MS, n))
    [enter] = actions
    assert enter["action"] == "enter" and enter["segment"] == buyer
    assert enter["segment_label"] == model.labels[buyer]


def test_erasure_and_withdrawn_consent_leave_every_audience_first():
    c = Customer(pipeline_with(BROWSERS, AFFLUENT))
    c.click(T0, 1)
    c.click(T0 + MIN_MS, 2)
    c.profile(T0 + 2 * MIN_MS, income=200_000)
    out = erase(c)
    assert out.audience_trigger in LEAVING
    assert sorted((d["audience"], d["action"], d["trigger"]) for d in messages(out)) == [
        ("affluent", "exit", "erasure"), ("browsers", "exit", "erasure")]
    assert sorted(out.audience_moves) == [("affluent", "exit"), ("browsers", "exit")]

    d = Customer(pipeline_with(BROWSERS), "c2")
    d.click(T0, 1)
    d.click(T0 + MIN_MS, 2)
    out = d.profile(T0 + 2 * MIN_MS, consent={"segmentation": False})
    assert [(m["action"], m["trigger"]) for m in messages(out)] == [("exit", "consent")]
    assert out.audience_trigger in LEAVING
    assert d.click(T0 + 3 * MIN_MS, 3).audience_changes is None  # excluded: not judged


def test_new_definitions_judge_stored_customers_again():
    pipeline = pipeline_with(BROWSERS)
    c = Customer(pipeline)
    c.click(T0, 1)
    c.click(T0 + MIN_MS, 2)
    old_version = pipeline.audiences.version
    pipeline.use_audiences(definitions({"name": "browsers", "condition": "views_7d >= 5"},
                                       {"name": "active", "condition": "views_7d >= 1"}))
    assert pipeline.audiences.version != old_version
    cause = f"audiences:{pipeline.audiences.version}@0/99"
    out = pipeline.reevaluate_audiences("c1", c.stored, cause)
    assert sorted((d["audience"], d["action"], d["trigger"]) for d in messages(out)) == [
        ("active", "enter", "definitions"), ("browsers", "exit", "definitions")]
    state = CustomerState.from_bytes(out.state)
    assert state.audiences == ["active"] and state.audiences_version == pipeline.audiences.version
    # The request redelivered: the same messages again, nothing stored.
    again = pipeline.reevaluate_audiences("c1", out.state, cause)
    assert again.state is None and again.audience_moves is None
    assert {d["event_id"] for d in messages(again)} == {d["event_id"] for d in messages(out)}
    # Another request with the same definitions: judged already, nothing to do.
    assert pipeline.reevaluate_audiences("c1", out.state, cause + "0").state is None
    # Every audience removed: the customer leaves them.
    pipeline.use_audiences(AudienceSet.empty())
    out = pipeline.reevaluate_audiences("c1", state.to_bytes(), "audiences:empty@0/100")
    assert [(d["audience"], d["action"]) for d in messages(out)] == [("active", "exit")]
