"""Unit tests of stream_app.core.pipeline.CustomerPipeline, without a broker.

The pipeline turns one raw input message and the customer's stored state into an
``Outcome``: the state to store, and a segment change / learner sample / dead letter to
send. Segment-change messages are parsed with orjson (format: stream_app.core.changes).
"""

from __future__ import annotations

import base64
import dataclasses
import random

import numpy as np
import orjson
import pytest
from jsonschema import Draft7Validator

from stream_app.config import Settings
from stream_app.core.audiences import AudienceSet
from stream_app.core.changes import iso_ms
from stream_app.core.dedup import NO_CONTENT, id_key
from stream_app.core.features import DAY_MS, FEATURE_NAMES, HOUR_MS
from stream_app.core.pipeline import UNASSIGNED, CustomerPipeline, Outcome, member_pseudonym
from stream_app.core.schemas import load_schema
from stream_app.core.state import CONFLICT, DUPLICATE, MAX_ORDER_IDS, NEW, CustomerState
from stream_app.model.segmentation import FeatureTransform, SegmentModel
from stream_app.worker.options import pipeline_options
from tests.factories import (
    MIN_MS,
    SPEC,
    T0,
    TOPICS,
    Customer,
    D,
    browser_and_buyer,
    buyer_customer,
    change_of,
    click_msg,
    learn_model,
    profile_msg,
    purchase_msg,
    settings,
)


@pytest.fixture(scope="module")
def model() -> SegmentModel:
    return learn_model()


# -- a valid event ------------------------------------------------------------------------------


def test_click_creates_state_and_a_first_segment_change(model):
    browser, _ = browser_and_buyer(model)
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline)
    out = c.click(T0, 1, channel="App")
    assert out.state is not None and out.dlq is None and out.reason is None
    assert not out.duplicate and not out.late
    assert out.event_ts == T0 and out.event_type == "page_view"
    assert out.clock == T0 and out.sweep_again is True
    state = c.state
    assert state.window.as_of == T0 and state.segment == browser
    assert state.model_version == model.version
    f = state.window.features()
    assert f["views_7d"] == 1 and f["views_24h"] == 1 and f["app_share_30d"] == 1.0
    assert out.moved == (None, browser)
    assert out.trigger == "event"
    change = change_of(out)
    assert change["customer_id"] == "c1"
    assert change["previous_segment"] is None and change["previous_segment_label"] is None
    assert change["segment"] == browser
    assert change["segment_label"] == model.labels[browser]
    assert change["model_version"] == model.version
    assert change["trigger"] == "event"
    assert change["ts"] == iso_ms(T0)
    assert change["features"] == {"orders_30d": 0, "views_7d": 1}
    raw = FeatureTransform(SPEC).vector(f, {})
    assert change["distance"] == pytest.approx(model.distances(raw)[browser], abs=1e-6)


def test_segment_change_id_is_deterministic(model):
    def first_change(value: bytes) -> dict:
        pipeline = CustomerPipeline(pipeline_options(settings()))
        pipeline.use_model(model)
        return change_of(pipeline.process("click", b"c1", value, None, "clickstream", 3, 77))

    a = first_change(click_msg("c1", T0, 1))
    b = first_change(click_msg("c1", T0, 1))
    assert a["event_id"] == b["event_id"]
    assert a == {**b, "emitted_at": a["emitted_at"]}
    # Another cause, another id (same customer, model and move).
    assert first_change(click_msg("c1", T0, 2))["event_id"] != a["event_id"]


def test_without_a_model_no_change(model):
    pipeline = CustomerPipeline(pipeline_options(settings()))
    c = Customer(pipeline)
    out = c.click(T0, 1)
    assert out.state is not None and out.change is None and out.trigger is None
    assert out.moved == (None, UNASSIGNED)
    assert c.state.segment is None and c.state.window.features()["views_7d"] == 1
    out = c.buy(T0 + MIN_MS, 1)
    assert out.change is None and out.moved is None and c.state.segment is None
    # The first model assigns the customer at its next event.
    pipeline.use_model(model)
    out = c.click(T0 + 2 * MIN_MS, 2)
    change = change_of(out)
    assert change["previous_segment"] is None and change["trigger"] == "event"
    assert out.moved == (UNASSIGNED, change["segment"])


def test_profile_only_customer_gets_no_segment(model):
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline)
    out = c.profile(T0, age=40, income=1000.0)
    assert out.state is not None and out.change is None
    assert out.moved == (None, UNASSIGNED) and out.sweep_again is False
    assert c.state.segment is None and c.state.profile == {"age": 40, "income": 1000.0}
    assert c.state.window.as_of == 0
    # Re-scoring or sweeping a customer without behaviour assigns nothing either.
    assert c.rescore().change is None and c.state.segment is None
    assert c.sweep(T0 + DAY_MS).change is None and c.state.segment is None
    # Its first event does.
    out = c.click(T0 + HOUR_MS, 1)
    change = change_of(out)
    assert change["previous_segment"] is None and change["trigger"] == "event"
    assert out.moved == (UNASSIGNED, change["segment"])
    assert c.state.profile == {"age": 40, "income": 1000.0}


def income_model_and_pipeline() -> tuple[SegmentModel, CustomerPipeline]:
    """A model of income and views learned from two income levels, and a pipeline
    applying it."""
    spec = "income:log1p,views_7d:log1p"
    model = learn_model(spec=spec, vectors=[
        {"income": 20_000 if i % 2 else 300_000, "views_7d": i % 5} for i in range(40)])
    pipeline = CustomerPipeline(pipeline_options(settings(segment_features=spec)))
    pipeline.use_model(model)
    return model, pipeline


def test_a_profile_update_can_move_a_customer():
    _, pipeline = income_model_and_pipeline()
    c = Customer(pipeline)
    c.profile(T0, income=20_000, region="north")
    first = change_of(c.click(T0 + MIN_MS, 1))
    out = c.profile(T0 + HOUR_MS, income=300_000)
    change = change_of(out)
    assert change["trigger"] == "profile" and change["previous_segment"] == first["segment"]
    assert change["features"]["income"] == 300_000
    assert change["ts"] == iso_ms(T0 + HOUR_MS)
    assert c.state.profile == {"income": 300_000, "region": "north"}
    # The same message redelivered: its change again with its id (a crash may have lost
    # it after the state was stored), nothing stored.
    again = pipeline.process("profile", c.id.encode(),
                             profile_msg(c.id, T0 + HOUR_MS, income=300_000), c.stored,
                             TOPICS["profile"], 0, c.offset)
    assert again.state is None and not again.duplicate and not again.late
    assert change_of(again)["event_id"] == change["event_id"]
    # An older update is ignored (last writer wins) and reported as late.
    out = c.profile(T0 + 30 * MIN_MS, income=20_000, region=None)
    assert out.late and out.state is None and out.change is None
    assert c.state.profile == {"income": 300_000, "region": "north"}


def test_samples_for_the_learner(model):
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline)
    assert c.profile(T0 - MIN_MS, income=1).sample is None  # a profile alone says nothing
    first = c.click(T0, 1)
    assert first.sample is not None  # a customer's first event (a one-time buyer's only)
    assert c.click(T0 + 30 * MIN_MS, 2).sample is None  # not within the interval
    out = c.click(T0 + HOUR_MS, 3)
    assert out.sample is not None
    sample = orjson.loads(out.sample)
    assert sample["spec"] == FeatureTransform(SPEC).spec
    assert sample["x"] == FeatureTransform(SPEC).vector(c.features, {})
    assert sample["member"] == orjson.loads(first.sample)["member"] == member_pseudonym("c1")
    assert c.state.sampled_at == T0 + HOUR_MS
    # Time passing: a sweep samples the customer as it is now (its recency grew), once the
    # time since its last sample is a quarter of the time since its last event.
    last_event = c.state.window.as_of
    swept = c.sweep(last_event + 2 * DAY_MS)
    assert swept.sample is not None and c.state.sampled_at == last_event + 2 * DAY_MS
    assert orjson.loads(swept.sample)["x"] == FeatureTransform(SPEC).vector(c.features, {})
    assert c.sweep(last_event + 40 * DAY_MS).sample is not None
    assert c.sweep(last_event + 45 * DAY_MS).sample is None  # 5 days: under 45 / 4
    assert c.sweep(last_event + 54 * DAY_MS).sample is not None  # 14 days: over 54 / 4


def test_a_one_time_buyer_is_placed_at_its_purchase(model):
    """One purchase places a customer whatever SEGMENT_MIN_EVENTS asks of clicks."""
    pipeline = CustomerPipeline(pipeline_options(settings(segment_min_events=3)))
    pipeline.use_model(model)
    browser = Customer(pipeline, "browser")
    assert browser.click(T0, 1).segment is None and browser.click(T0, 2).segment is None
    assert browser.state.segment is None  # two clicks: not yet
    assert browser.click(T0, 3).segment is not None  # the third
    buyer = Customer(pipeline, "once")
    out = buyer.buy(T0, 1)
    change = change_of(out)
    assert change["previous_segment"] is None and change["segment"] == buyer.state.segment
    # Long after, its windows empty, the buyer is still placed and evaluated again at the
    # recency checkpoints of its order.
    assert out.sweep_at == (D + 1) * DAY_MS
    late = buyer.sweep((D + 100) * DAY_MS)
    assert late.sweep_at == T0 + 120 * DAY_MS and buyer.state.segment is not None
    assert buyer.features["days_since_last_order"] == pytest.approx(100 - 10 / 24)


# -- invalid input, duplicates ---------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "reason"), [
    (b"c1", b"not json", "invalid_json"),
    (b"c1", None, "invalid_json"),
    (b"c1", b"[]", "empty_array"),
    (b"c1", orjson.dumps({"event_id": "e1", "customer_id": "c1", "ts": T0}),
     "schema_violation"),
    (b"other", click_msg("c1", T0, 1), "key_mismatch"),
    (None, click_msg("c1", T0, 1), "key_mismatch"),
    (b"c1", click_msg("c1", "1979-12-31T23:00:00Z", 1), "timestamp_out_of_range"),
    (b"c1", click_msg("c1", "2024-10-04 10:00", 1), "invalid_timestamp"),
])
def test_invalid_input_goes_to_the_dead_letter_queue(model, key, value, reason):
    pipeline = CustomerPipeline(pipeline_options(settings(app_id="unit-app")))
    pipeline.use_model(model)
    stored = Customer(pipeline)
    stored.click(T0 - MIN_MS, 0)
    for previous in (None, stored.stored):
        out = pipeline.process("click", key, value, previous, "clickstream", 2, 41, 1234)
        assert out.reason == reason
        assert out.state is None and out.change is None and out.sample is None
        assert not out.duplicate and not out.late
        record = orjson.loads(out.dlq)
        assert record["reason"] == reason and record["detail"]
        assert (record["topic"], record["partition"], record["offset"]) == ("clickstream", 2, 41)
        assert record["timestamp"] == 1234 and record["app_id"] == "unit-app"
        assert record["key"] == (None if key is None else key.decode())
        assert record["value"] == (None if value is None else value.decode())


def test_duplicate_event_gives_no_state(model):
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline)
    first = change_of(c.buy(T0, 1, 12.5))  # the last change: nothing moves after it
    assert c.click(T0 + MIN_MS, 1).change is None
    before = c.stored
    for out in (c.click(T0 + MIN_MS, 1), c.buy(T0, 1, 12.5)):
        assert out.duplicate is True and not out.late
        assert out.state is None and out.sample is None and out.dlq is None
    assert c.stored == before
    assert c.click(T0 + MIN_MS, 1).change is None
    # The cause of the customer's last change, again: the change is sent again with its id
    # (a crash may have lost it after the state was stored), and subscribers drop the copy.
    again = change_of(c.buy(T0, 1, 12.5))
    assert again["event_id"] == first["event_id"]
    same_move = ("customer_id", "trigger", "previous_segment", "segment", "ts")
    assert {k: again[k] for k in same_move} == {k: first[k] for k in same_move}
    assert again["features"]["views_7d"] == 1  # the features as they are now
    # A purchase is recognised however much later it is redelivered.
    c.click(T0 + 20 * DAY_MS, 2)
    out = c.buy(T0, 1, 12.5)
    assert out.duplicate is True and out.state is None
    assert c.features["orders_total"] == 1 and c.features["revenue_total"] == 12.5


def test_a_replay_moves_nobody_before_the_cause_of_the_last_change_comes_again(model):
    """After a crash the survivor replays a partition from its committed offset, which
    may be far behind the stored state: old clicks come back later than the allowed
    lateness, and the newest model may differ from the one that judged them. They must
    not move the customer, or the change the crash lost (the last one) would never be
    sent again: only the redelivered cause of the last change re-sends it."""
    browser, buyer = browser_and_buyer(model)
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline)
    assert change_of(c.click(T0, 1))["segment"] == browser
    moved = [c.buy(T0 + HOUR_MS + n * MIN_MS, n, 20.0) for n in range(3)]
    last = change_of(next(out for out in moved if out.change is not None))
    assert last["segment"] == buyer
    assert c.click(T0 + 3 * HOUR_MS, 2).change is None
    pipeline.use_model(moved_model(model, 2, model.centres[::-1]))  # not re-scored yet
    before = c.stored
    out = c.click(T0, 1)  # older than the newest click by more than the lateness
    assert out.late and out.change is None and out.state is None and out.moved is None
    assert c.stored == before
    again = [c.buy(T0 + HOUR_MS + n * MIN_MS, n, 20.0) for n in range(3)]
    assert [out.change is not None for out in again] == [out.change is not None
                                                           for out in moved]
    resent = change_of(next(out for out in again if out.change is not None))
    assert resent["event_id"] == last["event_id"] and resent["segment"] == buyer
    assert all(out.state is None for out in again) and c.stored == before


def test_the_cause_of_the_last_change_is_recognised_after_the_lateness(model):
    """The ids of clicks are remembered for the allowed lateness only; the cause of the
    last change is recognised however late it is redelivered."""
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline)
    first = change_of(c.click(T0, 1))
    assert c.click(T0 + 2 * HOUR_MS, 2).change is None
    out = c.click(T0, 1)  # counted as late, as any copy older than the lateness
    assert out.late and not out.duplicate and out.state is None
    assert change_of(out)["event_id"] == first["event_id"]
    assert c.features["views_7d"] == 2


def test_restate_sends_the_last_changes_again_whatever_comes_first(model):
    """After a rebalance the customer's first message, whichever it is, re-sends its last
    segment change and audience changes: an event on another topic may come before the
    replayed cause of a change a crash lost, and move the customer first."""
    browser, _ = browser_and_buyer(model)
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    pipeline.use_audiences(AudienceSet.from_document(
        {"audiences": [{"name": "viewers", "condition": "views_7d >= 1"}]}, source="test"))
    c = Customer(pipeline)
    first = c.click(T0, 1)
    change = change_of(first)
    assert change["segment"] == browser and first.audience_changes
    again = pipeline.restate(c.id, c.stored)
    assert change_of(again)["event_id"] == change["event_id"]
    assert [m for _, _, m in again.audience_changes] != []
    assert ([orjson.loads(m)["event_id"] for _, _, m in again.audience_changes]
            == [orjson.loads(m)["event_id"] for _, _, m in first.audience_changes])
    assert again.state is None and again.moved is None and again.audience_moves is None
    # Nothing to re-send: no change yet, or consent withdrawn.
    assert pipeline.restate("c2", CustomerState().to_bytes()).change is None
    c.profile(T0 + MIN_MS, consent={"segmentation": False})
    out = pipeline.restate(c.id, c.stored)
    assert out.change is None and out.audience_changes is None


def test_the_profile_update_applied_last_again_changes_nothing():
    model, pipeline = income_model_and_pipeline()
    c = Customer(pipeline)
    c.profile(T0, income=20_000)
    first = change_of(c.click(T0 + MIN_MS, 1))  # the cause of the last change: the click
    pipeline.use_model(moved_model(model, 2, model.centres[::-1]))
    out = c.profile(T0, income=20_000)
    assert out.change is None and out.state is None and not out.late
    assert c.state.segment == first["segment"]
    # A newer update with other attributes is judged by the newest model.
    assert change_of(c.profile(T0 + HOUR_MS, income=20_000, region="north"))["trigger"] == (
        "profile")


def test_replaying_the_same_events_leaves_features_unchanged(model):
    rng = random.Random(9)
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline)
    messages = []
    ts = T0 - 10 * DAY_MS
    for n in range(200):
        ts += rng.randrange(0, 2 * HOUR_MS)
        if n % 6 == 0:
            messages.append(("purchase", purchase_msg("c1", ts, n, rng.randrange(1, 500) / 4,
                                                      channel=rng.choice(["app", "web"]))))
        else:
            messages.append(("click", click_msg(
                "c1", ts, n, rng.choice(["page_view", "search", "add_to_cart"]),
                session_id=f"s{n // 10}")))
    # Mild disorder, within the allowed lateness (one hour).
    for i in range(0, 200, 2):
        if _ts(messages[i + 1]) - _ts(messages[i]) < HOUR_MS:
            messages[i], messages[i + 1] = messages[i + 1], messages[i]
    first = [c.send(kind, value) for kind, value in messages]
    assert not any(o.duplicate or o.late for o in first)
    features, segment = c.features, c.state.segment
    assert features["orders_total"] == 34 and features["views_7d"] > 0
    second = [c.send(kind, value) for kind, value in messages]
    assert all(o.duplicate or o.late for o in second)
    assert any(o.duplicate for o in second) and any(o.late for o in second)
    # Only the cause of the customer's last change sends it again, with the same id.
    last = [orjson.loads(o.change)["event_id"] for o in first if o.change is not None][-1]
    assert [orjson.loads(o.change)["event_id"] for o in second if o.change is not None] in (
        [], [last])  # [] if that event is late by now (no longer remembered as a click)
    # Purchases are all recognised; clicks older than the lateness are late instead.
    assert all(o.duplicate for (kind, _), o in zip(messages, second) if kind == "purchase")
    assert c.features == features and c.state.segment == segment


def _ts(message: tuple[str, bytes]) -> int:
    return orjson.loads(message[1])["ts"]


# -- late events ---------------------------------------------------------------------------------


def test_late_purchase_changes_only_lifetime_totals(model):
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline)
    c.buy(T0, 1, 10.0, channel="app", items=[{"category": "a", "quantity": 2}])
    c.buy(T0 + 3 * HOUR_MS, 2, 5.0)
    c.click(T0 + 4 * HOUR_MS, 1, "add_to_cart", session_id="s")
    before, segment = c.features, c.state.segment
    # Two hours older than the newest purchase: late (the lateness is one hour).
    out = c.buy(T0 + HOUR_MS, 3, 25.0, discount=5.0, channel="app",
                items=[{"category": "b", "quantity": 7}])
    assert out.late is True and not out.duplicate and out.state is not None
    assert out.event_ts == T0 + HOUR_MS and out.clock == T0 + 4 * HOUR_MS
    after = c.features
    assert after["orders_total"] == 3 and after["revenue_total"] == 40.0
    assert after["first_order_ts"] == T0 and after["last_order_ts"] == T0 + 3 * HOUR_MS
    for name in FEATURE_NAMES:
        if name not in ("orders_total", "revenue_total"):
            assert after[name] == before[name], name
    assert after["orders_30d"] == 2 and after["revenue_30d"] == 15.0
    assert c.state.segment == segment and c.state.window.as_of == T0 + 4 * HOUR_MS
    # Its copy is a duplicate; an older late purchase moves first_order_ts.
    assert c.buy(T0 + HOUR_MS, 3, 25.0, discount=5.0, channel="app",
                 items=[{"category": "b", "quantity": 7}]).duplicate is True
    assert c.buy(T0 - 5 * DAY_MS, 4, 1.0).late is True
    assert c.features["first_order_ts"] == T0 - 5 * DAY_MS
    assert c.features["orders_total"] == 4 and c.features["orders_90d"] == 2


def test_lateness_is_judged_per_stream(model):
    """A worker may read a customer's clicks behind its purchases (two topics)."""
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline)
    c.buy(T0 + 5 * HOUR_MS, 1)
    out = c.click(T0, 1)  # five hours older than the purchase, but the first click
    assert out.late is False and c.features["views_7d"] == 1
    assert c.click(T0 - HOUR_MS, 2).late is False
    assert c.click(T0 - HOUR_MS - 1, 3).late is True
    assert c.buy(T0 + 4 * HOUR_MS, 2).late is False
    assert c.buy(T0 + 4 * HOUR_MS - 1, 3).late is True
    assert c.features["views_7d"] == 2 and c.features["orders_30d"] == 2


def test_late_click_changes_nothing_and_within_lateness_lands(model):
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline)
    c.click(T0 + 2 * HOUR_MS, 1)
    before = c.features
    out = c.click(T0 + HOUR_MS - 1, 2, session_id="s", channel="app")
    assert out.late is True and out.change is None
    assert c.features == before
    out = c.click(T0 + HOUR_MS, 3, session_id="s")
    assert out.late is False
    assert c.features["views_7d"] == 2 and c.features["sessions_7d"] == 1
    # The allowed lateness is a setting.
    lax = Customer(CustomerPipeline(pipeline_options(settings(allowed_lateness_s=3 * 86_400.0))))
    lax.click(T0 + 2 * HOUR_MS, 1)
    assert lax.click(T0 - 2 * DAY_MS, 2).late is False
    assert lax.click(T0 - 3 * DAY_MS, 3).late is True
    assert lax.features["views_7d"] == 2


# -- sweeps (time passing) ------------------------------------------------------------------------


def test_sweep_slides_windows_and_moves_an_inactive_buyer(model):
    browser, buyer = browser_and_buyer(model)
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = buyer_customer(pipeline, model)
    as_of = c.state.window.as_of
    # A day later: windows slid but the customer stays.
    out = c.sweep(as_of + DAY_MS)
    assert out.state is not None and out.change is None
    assert out.clock == out.event_ts == as_of + DAY_MS and out.sweep_again is True
    assert c.state.clock == as_of + DAY_MS and c.state.window.as_of == as_of
    assert c.features["orders_30d"] == 3 and c.features["days_since_last_order"] == 1.0
    stored = c.stored
    # 31 days later nothing is left in the 30-day window: the buyer leaves.
    at = as_of + 31 * DAY_MS
    out = c.sweep(at)
    assert out.clock == at and out.event_ts == at and out.sweep_again is True
    assert c.features["orders_30d"] == 0 and c.features["orders_90d"] == 3
    assert c.state.segment == browser
    change = change_of(out)
    assert change["trigger"] == "inactivity" and out.trigger == "inactivity"
    assert change["ts"] == iso_ms(at)
    assert change["previous_segment"] == buyer and change["segment"] == browser
    assert change["previous_segment_label"] == model.labels[buyer]
    assert change["features"]["orders_30d"] == 0
    assert out.moved == (buyer, browser)
    # The same sweep again from the same stored state: the same change id.
    again = pipeline.sweep("buyer", stored, at)
    assert change_of(again)["event_id"] == change["event_id"]
    # The same sweep request again (redelivered): the same change again, nothing stored.
    again = c.sweep(at)
    assert change_of(again)["event_id"] == change["event_id"] and again.state is None
    # Sweeping to a time not after the clock does nothing.
    for earlier in (at - DAY_MS, as_of):
        out = c.sweep(earlier)
        assert out.state is None and out.change is None and out.clock == at


def test_sweeps_follow_the_windows_then_the_recency_of_the_last_order(model):
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = buyer_customer(pipeline, model)
    day = c.state.window.as_of // DAY_MS
    last_order = c.state.window.last_order_ts
    assert c.sweep(day * DAY_MS + 30 * DAY_MS).sweep_at == (day + 31) * DAY_MS
    out = c.sweep((day + 89) * DAY_MS + DAY_MS - 1)  # the last moment day `day` counts
    assert out.sweep_at == (day + 90) * DAY_MS and c.features["orders_90d"] == 3
    out = c.sweep((day + 90) * DAY_MS)  # windows empty: the next recency checkpoint
    assert out.sweep_at == last_order + 120 * DAY_MS and out.state is not None
    f = c.features
    assert f["orders_90d"] == 0 and f["views_7d"] == 0 and f["orders_total"] == 3
    assert c.sweep((day + 200) * DAY_MS).sweep_at == last_order + 240 * DAY_MS
    assert c.sweep((day + 740) * DAY_MS).sweep_again is False  # two years lapsed: done
    # A new event makes the customer sweepable again.
    assert c.click((day + 741) * DAY_MS, 1).sweep_at == (day + 742) * DAY_MS
    # A customer who never bought is not swept once its windows are empty.
    browser = Customer(pipeline, "browser")
    browser.click(T0, 1)
    assert browser.sweep((D + 90) * DAY_MS).sweep_again is False


def test_event_after_a_sweep_is_evaluated_at_the_later_clock(model):
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = buyer_customer(pipeline, model)
    as_of = c.state.window.as_of
    c.sweep(as_of + 40 * DAY_MS)
    # An event newer than as_of but older than the swept clock is not late.
    out = c.click(as_of + 2 * DAY_MS, 1)
    assert out.late is False and out.clock == as_of + 40 * DAY_MS
    assert c.features["views_7d"] == 0 and c.features["orders_30d"] == 0
    assert c.state.window.as_of == as_of + 2 * DAY_MS


# -- model updates -------------------------------------------------------------------------------


def moved_model(model: SegmentModel, version: int, centres: np.ndarray) -> SegmentModel:
    return dataclasses.replace(model, version=version, centres=np.asarray(centres, dtype=float))


def test_rescore_after_a_model_update(model):
    browser, buyer = browser_and_buyer(model)
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline)
    c.click(T0, 1)
    assert c.state.segment == browser
    # Same model: nothing to do.
    out = c.rescore()
    assert out.change is None and out.state is None and out.clock == T0
    # Version 2: the two centres swapped places.
    v2 = moved_model(model, 2, model.centres[::-1])
    pipeline.use_model(v2)
    assert pipeline.model is v2
    stored = c.stored
    out = c.rescore()
    change = change_of(out)
    assert change["trigger"] == "model_update" and change["model_version"] == 2
    assert change["previous_segment"] == browser and change["segment"] == buyer
    assert change["customer_id"] == "c1" and change["ts"] == iso_ms(T0)
    assert out.moved == (browser, buyer) and out.event_ts == T0 and out.sweep_again
    assert c.state.segment == buyer and c.state.model_version == 2
    assert change_of(pipeline.rescore("c1", stored))["event_id"] == change["event_id"]
    # The same request again (a redelivered control message), after a later event that
    # did not move the customer: the same change (id, move, time) again, nothing stored;
    # another request with the same model: no further move.
    assert c.click(T0 + MIN_MS, 2).change is None
    out = c.rescore()
    again = change_of(out)
    assert out.state is None and again["event_id"] == change["event_id"]
    assert again["ts"] == change["ts"] and again["segment"] == change["segment"]
    out = c.rescore("model:2@0/9")
    assert out.change is None and out.state is None


def test_use_model_ignores_older_versions(model):
    browser, buyer = browser_and_buyer(model)
    pipeline = CustomerPipeline(pipeline_options(settings()))
    v5 = moved_model(model, 5, model.centres)
    pipeline.use_model(v5)
    pipeline.use_model(model)  # version 1
    assert pipeline.model is v5
    pipeline.use_model(moved_model(model, 5, model.centres[::-1]))  # same version
    assert pipeline.model is v5
    c = Customer(pipeline)
    change = change_of(c.click(T0, 1))
    assert change["model_version"] == 5 and change["segment"] == browser
    v6 = moved_model(model, 6, model.centres[::-1])
    pipeline.use_model(v6)
    assert pipeline.model is v6
    assert change_of(c.rescore())["segment"] == buyer


def test_model_with_another_feature_spec(model):
    """A model's own features are used, whatever SEGMENT_FEATURES says."""
    pipeline = CustomerPipeline(pipeline_options(dataclasses.replace(Settings())))
    pipeline.use_model(model)
    c = Customer(pipeline)
    c.buy(T0, 1)
    c.buy(T0 + MIN_MS, 2)
    c.buy(T0 + 2 * MIN_MS, 3)
    assert c.state.segment == browser_and_buyer(model)[1]


def test_margin_prevents_a_move_to_a_slightly_closer_centre(model):
    margin = settings().segment_margin
    assert margin == 0.15
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline)
    c.click(T0, 1)
    current = c.state.segment
    other = 1 - current
    x = model.scale(FeatureTransform(model.spec).vector(c.features, {}))

    def centres(d_current: float, d_other: float) -> np.ndarray:
        out = np.empty_like(model.centres)
        out[current] = x + np.array([d_current, 0.0])
        out[other] = x + np.array([0.0, d_other])
        return out

    # The other centre is closer, but not by the margin: 0.9 >= (1 - 0.15) x 1.0.
    v2 = moved_model(model, 2, centres(1.0, 0.9))
    assert v2.assign(FeatureTransform(model.spec).vector(c.features, {}), None)[0] == other
    pipeline.use_model(v2)
    out = c.rescore()
    assert out.change is None and c.state.segment == current
    # Without a margin the customer would move.
    no_margin = CustomerPipeline(pipeline_options(settings(segment_rejudge_margin=0.0)))
    no_margin.use_model(v2)
    assert change_of(no_margin.rescore("c1", c.stored))["segment"] == other
    # Closer by more than the margin: 0.8 < 0.85 x 1.0.
    pipeline.use_model(moved_model(model, 3, centres(1.0, 0.8)))
    change = change_of(c.rescore())
    assert change["previous_segment"] == current and change["segment"] == other
    assert change["distance"] == pytest.approx(0.8, abs=1e-6)



def test_samples_name_the_customer_by_pseudonym_only(model):
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline, "customer-42")
    c.click(T0, 1)
    raw = c.click(T0 + HOUR_MS, 2).sample
    assert raw is not None and b"customer-42" not in raw
    sample = orjson.loads(raw)
    assert sample["member"] == member_pseudonym("customer-42") != member_pseudonym("c1")
    Draft7Validator(load_schema("model-sample.schema.json")).validate(sample)


def test_a_json_array_message_is_its_events_in_order_with_one_state_write(model):
    """A collector's batch of one customer's events: each element is judged on its own, the
    good ones give exactly what they give as single messages, and the state is written
    once (on the last outcome that changed it)."""
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    one_by_one = Customer(pipeline, "c1")
    events = [click_msg("c1", T0 + i * MIN_MS, i, "search" if i % 2 else "page_view")
              for i in range(6)]
    singles = [one_by_one.click(T0 + i * MIN_MS, i, "search" if i % 2 else "page_view")
               for i in range(6)]
    elements = [orjson.loads(e) for e in events]
    stranger = orjson.loads(click_msg("c2", T0, 99))
    batch = [*elements[:3], stranger, 7, elements[1], *elements[3:]]  # bad, bad, duplicate
    outs = pipeline.process_message("click", b"c1", orjson.dumps(batch), None,
                                    "clickstream", 0, 17, 1234)  # Customer's partition
    assert len(outs) == len(batch)
    assert [o.reason for o in outs] == [None] * 3 + ["key_mismatch", "not_an_object"] \
        + [None] * 4
    letter = orjson.loads(outs[3].dlq)
    assert orjson.loads(letter["value"]) == stranger and letter["offset"] == 17
    assert orjson.loads(outs[4].dlq)["value"] == "7"
    assert outs[5].duplicate and outs[5].state is None
    good = [o for o in outs if o.reason is None and not o.duplicate]
    def changes(outcomes: list[Outcome]) -> list[dict | None]:
        return [None if o.change is None else {**orjson.loads(o.change), "emitted_at": None}
                for o in outcomes]

    assert changes(good) == changes(singles) and any(changes(good))
    assert [o.moved for o in good] == [o.moved for o in singles]
    assert [o.state is not None for o in outs] == [False] * 8 + [True]
    assert outs[-1].state == one_by_one.stored
    assert pipeline.process_message("click", b"c1", b"[]", None, "clickstream", 1, 18)[0] \
        .reason == "empty_array"


def test_a_1990s_history_is_processed_and_a_seconds_timestamp_is_dead_lettered(model):
    """A shop backfilling its 1990s orders gets them counted (EVENT_TS_MIN defaults to
    1980); a ts sent in seconds still goes to the DLQ, saying which bound and why."""
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline, "old")
    out = c.buy("1995-06-15T12:00:00Z", 1, 30.0)
    assert out.dlq is None and c.state.window.orders_total == 1
    assert change_of(out)["segment"] == c.state.segment  # placed at its first purchase
    c.buy(803_217_600_000 + DAY_MS, 2, 20.0)  # a day later, in epoch milliseconds
    assert c.features["orders_total"] == 2 and c.features["revenue_total"] == 50.0
    seconds = c.buy(803_217_600, 3)  # 1995-06-15T12:00:00Z in seconds: January 1970 as ms
    assert seconds.reason == "timestamp_out_of_range" and seconds.state is None
    detail = orjson.loads(seconds.dlq)["detail"]
    assert "EVENT_TS_MIN" in detail and "looks like seconds" in detail


def test_a_customer_of_a_retired_segment_moves_at_its_next_event(model):
    """A retired segment id keeps its row and label but holds nobody: its members move
    at their next evaluation, whatever the margin and the confirmations ask of moves."""
    pipeline = CustomerPipeline(pipeline_options(settings(segment_confirmations=3,
                                                          segment_margin=0.9)))
    pipeline.use_model(model)
    c = Customer(pipeline)
    c.click(T0, 1)
    left = c.state.segment
    # Version 2: the customer's segment is retired; a new id (2) stands where it was.
    v2 = dataclasses.replace(model, version=2, centres=np.vstack([model.centres,
                                                                  model.centres[left]]),
                             labels=(*model.labels, "its successor"),
                             active=np.array([i != left for i in range(3)]))
    pipeline.use_model(v2)
    change = change_of(c.click(T0 + MIN_MS, 2))
    assert change["previous_segment"] == left and change["segment"] == 2
    assert change["previous_segment_label"] == model.labels[left]
    assert change["segment_label"] == "its successor" and c.state.segment == 2


# -- conflicting duplicates: the same event_id with other content ----------------------------------

DEAD_LETTER_SCHEMA = Draft7Validator(load_schema("dead-letter.schema.json"))
#: A customer state as the previous version wrote it (``CustomerState.to_bytes`` before content
#: digests were kept): clicks ``old-c1`` (T0) and ``old-c2`` (T0 + 2 min), purchase ``old-o1``
#: (T0 + 1 min, 10.00), no ``"es"``/``"os"``.
OLD_STATE = (
    b'{"w":{"a":1728036120000,"nc":1728036120000,"no":1728036060000,'
    b'"d":[[20000,1,1000,0,1,1,1,0,3,0,0]],"h":[[480010,1]],"s":{},"c":{},"o":1,"r":1000,'
    b'"f":1728036060000,"l":1728036060000},"p":{},"pt":0,"s":null,"v":0,'
    b'"e":[[6907031968830680960,1728036000000],[8921622769544625857,1728036120000]],'
    b'"o":[681330543785125820],"t":1728036000000,"c":0,"l":null,"n":0,"q":[null,0],'
    b'"lc":null,"pp":0}')


def test_an_honest_redelivery_is_a_duplicate_however_it_is_serialised(model):
    """Same event_id, same content: a duplicate, not a dead letter, whatever the key order,
    spacing, number spelling, channel case or fields the worker does not read; and the
    state remembers the content it was applied with (so other content is told apart)."""
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline)
    order = {"event_id": "c1-o1", "customer_id": "c1", "ts": "2024-10-04T12:00:00+02:00",
             "order_id": "A-1", "amount": 10.0, "discount": 1.5, "channel": "app",
             "items": [{"product_id": "p1", "category": "shoes", "price": 5.0, "quantity": 2}]}
    click = {"event_id": "c1-c1", "customer_id": "c1", "ts": T0 + MIN_MS,
             "event_type": "product_view", "session_id": "s1", "category": "shoes"}
    assert c.send("purchase", orjson.dumps(order)).state is not None
    assert c.send("click", orjson.dumps(click)).state is not None
    before = c.stored
    copies = [
        ("purchase", orjson.dumps(dict(reversed(order.items())))),  # other key order
        ("purchase", orjson.dumps(order, option=orjson.OPT_INDENT_2)),  # other spacing
        ("purchase", b'{"amount": 10, "discount": 1.50, "channel": " App ", "ts": '
                     b'"2024-10-04T12:00:00.000+02:00", "event_id": "c1-o1", "customer_id": '
                     b'"c1", "order_id": "A-1", "items": [{"quantity": 2.0, "category": '
                     b'"shoes"}]}'),  # 10 for 10.0, 2.0 for 2, " App " for "app"
        ("purchase", orjson.dumps({**order, "order_id": "A-1-retry", "currency": "EUR"})),
        ("click", orjson.dumps({**click, "ts": "2024-10-04T10:01:00Z", "price": 3.0,
                                "product_id": "p9"})),  # the same instant and hour, as ISO
    ]
    for kind, value in copies:
        out = c.send(kind, value)
        assert out.duplicate is True, value
        assert out.dlq is None and out.reason is None and out.state is None, value
    assert c.stored == before
    # The remembered content: another amount or event type under these ids is a conflict.
    state = c.state
    other_order = pipeline.decoder.decode("purchase", b"c1", orjson.dumps({**order, "amount": 11}))
    assert state.admit("c1-o1", other_order.ts, True, HOUR_MS,
                       other_order.content_digest()) == CONFLICT
    same_click = pipeline.decoder.decode("click", b"c1", copies[-1][1])
    assert state.admit("c1-c1", same_click.ts, False, HOUR_MS,
                       same_click.content_digest()) == DUPLICATE


def test_a_conflicting_duplicate_goes_to_the_dlq_and_changes_nothing(model):
    """Same event_id, other content (a producer reusing ids): not applied, a dead letter
    with reason conflicting_duplicate, not counted as a duplicate; the state stays as it
    was and a true copy afterwards is still an honest duplicate."""
    pipeline = CustomerPipeline(pipeline_options(settings(app_id="unit-app")))
    pipeline.use_model(model)
    c = Customer(pipeline)
    c.buy(T0, 1, 10.0)
    c.click(T0 + MIN_MS, 1, "add_to_cart", session_id="s1")
    before, features = c.stored, c.features
    conflicting = purchase_msg("c1", T0, 1, 9999.0)
    for kind, value in (("purchase", conflicting),
                        ("click", click_msg("c1", T0 + MIN_MS, 1, "search", session_id="s1"))):
        out = c.send(kind, value)
        assert out.reason == "conflicting_duplicate" and out.dlq is not None
        assert out.duplicate is False and out.late is False
        assert out.state is None and out.change is None and out.sample is None
        assert out.event_type is None  # counted as consumed with type="invalid"
        record = orjson.loads(out.dlq)
        assert not list(DEAD_LETTER_SCHEMA.iter_errors(record)), record
        assert record["reason"] == "conflicting_duplicate" and record["app_id"] == "unit-app"
        assert base64.b64decode(record["value_base64"]) == value
        assert record["topic"] == TOPICS[kind] and record["offset"] == c.offset
        # The detail says what the event_id is for, not whose or what: no customer data.
        assert "event_id" in record["detail"]
        for secret in ("c1", "9999", "search", "s1"):
            assert secret not in record["detail"], secret
    assert c.stored == before and c.features == features
    assert features["revenue_total"] == 10.0 and features["add_to_cart_7d"] == 1
    # The remembered content is still the first copy's: a true copy is an honest one.
    again = c.buy(T0, 1, 10.0)
    assert again.duplicate is True and again.dlq is None
    assert c.send("purchase", conflicting).reason == "conflicting_duplicate"


def test_a_conflicting_copy_in_a_json_array_is_a_dead_letter_of_its_own(model):
    """In a collector's batch the conflicting element goes to the DLQ as its own JSON; the
    others are applied and the state is written once."""
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    first = purchase_msg("c1", T0, 1, 10.0)
    conflicting = purchase_msg("c1", T0, 1, 9999.0)
    batch = b"[" + b",".join([first, purchase_msg("c1", T0 + MIN_MS, 2, 5.0), conflicting,
                              first]) + b"]"
    outs = pipeline.process_message("purchase", b"c1", batch, None, "purchases", 0, 3)
    assert [o.reason for o in outs] == [None, None, "conflicting_duplicate", None]
    assert outs[3].duplicate and not outs[2].duplicate
    record = orjson.loads(outs[2].dlq)
    assert orjson.loads(record["value"]) == orjson.loads(conflicting)
    stored = next(o.state for o in outs if o.state is not None)
    window = CustomerState.from_bytes(stored).window
    assert (window.orders_total, window.features()["revenue_total"]) == (2, 15.0)


def test_a_state_stored_without_digests_loads_and_its_copies_count_as_honest(model):
    """A state written by the previous version (ids without content digests) loads; a copy
    of an id remembered there cannot be compared, and counts as an honest redelivery (as
    before); ids remembered from then on have their digest, and a conflict is caught."""
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    state = CustomerState.from_bytes(OLD_STATE)
    assert state.window.orders_total == 1 and len(state.recent) == 2 and len(state.orders) == 1
    c = Customer(pipeline)
    c.stored = OLD_STATE
    old_order = {"event_id": "old-o1", "customer_id": "c1", "ts": T0 + MIN_MS, "order_id": "o1"}
    for amount in (10.0, 9999.0):  # the same or other content: nothing to compare with
        out = c.send("purchase", orjson.dumps({**old_order, "amount": amount}))
        assert out.duplicate is True and out.dlq is None and out.state is None
    out = c.send("click", orjson.dumps({"event_id": "old-c2", "customer_id": "c1",
                                        "ts": T0 + 2 * MIN_MS, "event_type": "page_view"}))
    assert out.duplicate is True and out.dlq is None  # it was a search: still honest
    assert c.stored == OLD_STATE
    # New events are remembered with their content, next to the old ids.
    assert c.buy(T0 + 3 * MIN_MS, 2, 20.0).state is not None
    assert c.click(T0 + 4 * MIN_MS, 3).state is not None
    assert c.buy(T0 + 3 * MIN_MS, 2, 25.0).reason == "conflicting_duplicate"
    assert c.click(T0 + 4 * MIN_MS, 3, "search").reason == "conflicting_duplicate"
    assert c.send("purchase", orjson.dumps({**old_order, "amount": 9999.0})).duplicate
    assert c.features["orders_total"] == 2 and c.features["revenue_total"] == 30.0


def test_content_digests_follow_their_ids_when_the_memory_is_trimmed():
    """Digests stay with their ids as old click ids fall out of the lateness and the oldest
    purchase ids out of the bounded memory, also when a list began without digests."""
    s = CustomerState.from_bytes(OLD_STATE)  # click ids at T0, T0 + 2 min, no digests
    # A click an hour and a half later: both old click ids leave the lateness.
    assert s.admit("new-c1", T0 + 90 * MIN_MS, False, HOUR_MS, b"c01") == NEW
    assert s.admit("new-c2", T0 + 91 * MIN_MS, False, HOUR_MS, b"c02") == NEW
    assert len(s.recent) == 2 and s.recent.keys() == [id_key("new-c1"), id_key("new-c2")]
    assert s.admit("new-c1", T0 + 90 * MIN_MS, False, HOUR_MS, b"c01") == DUPLICATE
    assert s.admit("new-c2", T0 + 91 * MIN_MS, False, HOUR_MS, b"c01") == CONFLICT
    for i in range(MAX_ORDER_IDS):
        assert s.admit(f"o-{i}", T0, True, HOUR_MS, i.to_bytes(3, "big")) == NEW
    # The old purchase id (no digest) was the oldest: forgotten, the newest kept.
    assert len(s.orders) == MAX_ORDER_IDS and id_key("old-o1") not in s.orders
    r = CustomerState.from_bytes(s.to_bytes())
    last = MAX_ORDER_IDS - 1
    assert r.admit("o-0", T0, True, HOUR_MS, (0).to_bytes(3, "big")) == DUPLICATE
    assert r.admit(f"o-{last}", T0, True, HOUR_MS, (last - 1).to_bytes(3, "big")) == CONFLICT
    assert r.admit(f"o-{last + 1}", T0, True, HOUR_MS, b"new") == NEW
    assert r.admit("o-1", T0, True, HOUR_MS, (1).to_bytes(3, "big")) == DUPLICATE
    assert r.admit("o-1", T0, True, HOUR_MS, (2).to_bytes(3, "big")) == CONFLICT
    assert r.admit("o-0", T0, True, HOUR_MS, (0).to_bytes(3, "big")) == NEW  # forgotten


#: A state as the version before the packed memory stored it (ids as JSON numbers, their
#: content digests as base64 text): clicks v1-c1 (page_view at T0) and v1-c2 (search at
#: T0 + 1 min), purchase v1-o1 (10.00 at T0 + 30 s), customer c9.
DIGEST_STATE = (
    b'{"w":{"a":1728036060000,"nc":1728036060000,"no":1728036030000,'
    b'"d":[[20000,1,1000,0,1,1,1,0,3,0,0]],"h":[[480010,1]],"s":{},"c":{},"o":1,"r":1000,'
    b'"f":1728036030000,"l":1728036030000},"p":{},"pt":0,"s":null,"v":0,'
    b'"e":[[5547050705740072381,1728036000000],[665808705858276102,1728036060000]],'
    b'"o":[4006430902903873607],"es":"iOFRhAcd9C_nPQpU","os":"E_cyZKXT","t":0,"c":0,'
    b'"l":null,"n":0,"q":[null,0],"lc":null,"pp":null}')


def test_a_state_of_the_json_memory_version_judges_copies_as_it_did(model):
    """A record of the previous version loads with its ids and their content: copies with
    the same content are duplicates, with other content conflicts; it is written back in
    the packed form, smaller, and reads the same again."""
    state = CustomerState.from_bytes(DIGEST_STATE)
    assert state.recent.keys() == [id_key("v1-c1"), id_key("v1-c2")]
    assert state.orders.keys() == [id_key("v1-o1")]
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline, "c9")
    c.stored = DIGEST_STATE
    click = {"event_id": "v1-c1", "customer_id": "c9", "ts": T0, "event_type": "page_view"}
    order = {"event_id": "v1-o1", "customer_id": "c9", "ts": T0 + 30_000, "order_id": "o1",
             "amount": 10.0, "quantity": 1}
    assert c.send("click", orjson.dumps(click)).duplicate is True
    assert c.send("purchase", orjson.dumps(order)).duplicate is True
    assert c.send("click", orjson.dumps({**click, "event_type": "search"})).reason == (
        "conflicting_duplicate")
    assert c.send("purchase", orjson.dumps({**order, "amount": 11.0})).reason == (
        "conflicting_duplicate")
    assert c.stored == DIGEST_STATE  # nothing applied
    packed = state.to_bytes()
    assert len(packed) < len(DIGEST_STATE) and b'"e":' not in packed
    again = CustomerState.from_bytes(packed)
    assert again.to_bytes() == packed and again.window.features() == state.window.features()
    assert again.orders.content(0) == state.orders.content(0) != NO_CONTENT
