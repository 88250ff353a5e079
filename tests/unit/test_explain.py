"""Explanations (stream_app.core.explain) and the audience preview (stream_app.core.preview)
without a broker: clause by clause as the audience evaluates, a customer's place among the
segments and what a move would take, its last changes, and preview figures equal to what
applying the definitions decides."""

from __future__ import annotations

import dataclasses
import random

import pytest

from stream_app.core.audiences import Audience, AudienceSet
from stream_app.core.explain import explain_condition, explain_placement, split_condition
from stream_app.core.pipeline import CustomerPipeline
from stream_app.core.preview import AudiencePreview, merge_previews
from stream_app.core.state import CHANGE_HISTORY
from stream_app.worker.options import pipeline_options
from tests.factories import MIN_MS, T0, Customer, browser_and_buyer, learn_model, settings

CONDITIONS = [
    "orders_30d >= 3",
    'region == "Almaty" and (orders_30d >= 1 or views_7d > 4)',
    "views_7d >= 2 and orders_30d == 0 or income > 50000 and not (region == \"South\")",
    "(views_7d ?? 0) > 3 and segment in [0, 1]",
    '(region == "North" or region == "South") and (views_7d > 1 and orders_30d < 2)',
    "orders_30d > 0 ? views_7d > 1 : views_7d > 5",
    'region =~ "^A" and days_since_last_order > 30',
]


def leaves(node: dict) -> list[dict]:
    children = node.get("all") or node.get("any")
    return [node] if children is None else [leaf for c in children for leaf in leaves(c)]


def nodes(node: dict) -> list[dict]:
    children = node.get("all") or node.get("any") or []
    return [node, *(n for c in children for n in nodes(c))]


def customers(n: int, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    return [{"orders_30d": rng.choice([None, 0, 1, 2, 3, 5]),
             "views_7d": rng.choice([None, 0, 1, 3, 6]),
             "income": rng.choice([None, 20_000, 80_000]),
             "region": rng.choice([None, "Almaty", "North", "South", "Astana"]),
             "days_since_last_order": rng.choice([None, 2.5, 45.0]),
             "segment": rng.choice([None, 0, 1, 2])} for _ in range(n)]


@pytest.mark.parametrize("condition", CONDITIONS)
def test_every_node_holds_as_the_audience_evaluates_it(condition):
    whole = Audience("a", "", condition, None)
    for attributes in customers(60):
        tree = explain_condition(condition, attributes)
        assert bool(tree["holds"]) == whole.holds(attributes)
        for node in nodes(tree):
            alone = Audience("n", "", node["text"], None).holds(attributes)
            assert bool(node["holds"]) == alone, (node, attributes)
        for leaf in leaves(tree):
            assert set(leaf["values"]) <= set(attributes)
            assert leaf["line"].startswith(leaf["text"] + ": ")


def test_conditions_split_where_the_user_wrote_and_or_and_groups():
    assert split_condition('a == "x or y" and b > 1') == ("all", ['a == "x or y"', "b > 1"])
    assert split_condition("a > 1 or b > 2 and c > 3") == ("any", ["a > 1", "b > 2 and c > 3"])
    assert split_condition("(a > 1) and (b > 2)") == ("all", ["(a > 1)", "(b > 2)"])
    assert split_condition("((a > 1 or b > 2))") == ("group", ["(a > 1 or b > 2)"])
    assert split_condition("not (a > 1 or b > 2)")[0] == "clause"
    assert split_condition("a > 1 ? b > 2 : c > 3")[0] == "clause"  # a ternary stays whole
    tree = explain_condition("orders_30d >= 3 and views_7d > 1", {"orders_30d": 1,
                                                                  "views_7d": 4})
    assert [leaf["line"] for leaf in tree["all"]] == ["orders_30d >= 3: 1 → false",
                                                      "views_7d > 1: 4 → true"]
    null = explain_condition("income > 5 and region == 'x'", {"income": None})
    assert null["all"][0]["holds"] is None and "cannot be evaluated" in null["all"][0]["line"]


def test_placement_says_what_a_move_to_the_runner_up_takes():
    model = learn_model()
    browser, buyer = browser_and_buyer(model)
    raw = [0.0, 1.0]  # orders_30d, views_7d: a browser
    placed = explain_placement(model, raw, {"orders_30d": 0, "views_7d": 1}, browser,
                               margin=0.2, confirmations=2, pending=buyer, pending_count=1)
    distances = model.distances(raw)
    assert [n["segment"] for n in placed["nearest"]] == [browser, buyer]
    runner = placed["runner_up"]
    assert runner["segment"] == buyer
    assert runner["moves_when_distance_below"] == pytest.approx(0.8 * distances[browser],
                                                                abs=1e-4)
    assert runner["confirmations_so_far"] == 1 and runner["confirmations_needed"] == 2
    assert placed["holding_it_here"] and "runner-up" in placed["summary"]
    # In the buyers' segment against its own features: what pulls it away is named.
    held = explain_placement(model, raw, {"orders_30d": 0, "views_7d": 1}, buyer,
                             margin=0.2, confirmations=1, pending=None, pending_count=0)
    assert held["runner_up"]["segment"] == browser and held["pulling_to_runner_up"]


def test_a_retired_segment_is_explained_as_left_at_the_next_evaluation():
    model = learn_model()
    browser, buyer = browser_and_buyer(model)
    active = model.active.copy()
    active[buyer] = False
    model = dataclasses.replace(model, active=active)  # a snapshot is never changed in place
    placed = explain_placement(model, [3.0, 0.0], {}, buyer, margin=0.2, confirmations=1,
                               pending=None, pending_count=0)
    assert placed["runner_up"] is None and "retired" in placed["summary"]
    assert placed["nearest"][0]["segment"] == browser


def test_the_pipeline_explains_a_customer_with_its_last_changes_and_audiences():
    model = learn_model()
    _, buyer = browser_and_buyer(model)
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    pipeline.use_audiences(AudienceSet.from_document({"audiences": [
        {"name": "buyers", "condition": "orders_30d >= 3", "exit_condition": "orders_30d < 1"},
        {"name": "browsers", "condition": "views_7d >= 2"}]}))
    c = Customer(pipeline, "c1")
    c.click(T0, 0)
    for n in range(3):
        c.buy(T0 + (n + 1) * 10 * MIN_MS, n, 20.0)
    doc = pipeline.explain(c.stored)
    assert doc["segment_detail"]["id"] == buyer == c.state.segment
    assert doc["changes"][0]["to"] == buyer and doc["changes"][0]["trigger"] == "event"
    assert doc["changes"][-1]["from"] is None  # the first placement, oldest last
    by_name = {a["name"]: a for a in doc["audience_conditions"]}
    assert by_name["buyers"]["member"] is True and by_name["browsers"]["member"] is False
    assert by_name["buyers"]["exit_condition"]["holds"] is False
    assert "hysteresis" in by_name["buyers"]["rule"]
    state = c.state
    assert len(state.changes) <= CHANGE_HISTORY


def test_the_record_keeps_only_the_last_changes():
    from stream_app.core.state import CustomerState
    state = CustomerState()
    for n in range(CHANGE_HISTORY + 2):
        state.remember_change(n, "event", n - 1 if n else None, n, 1, ["views_7d"])
    again = CustomerState.from_bytes(state.to_bytes())
    assert [c[0] for c in again.changes] == list(range(2, CHANGE_HISTORY + 2))


def test_a_preview_counts_what_applying_the_definitions_decides():
    applied = AudienceSet.from_document({"audiences": [
        {"name": "buyers", "condition": "orders_30d >= 2", "exit_condition": "orders_30d < 1"},
        {"name": "gone", "condition": "views_7d > 3"}]})
    candidate = AudienceSet.from_document({"audiences": [
        {"name": "buyers", "condition": "orders_30d >= 3", "exit_condition": "orders_30d < 1"},
        {"name": "browsers", "condition": "views_7d >= 1 and segment != null"}]})
    population = customers(200, seed=9)
    before = [applied.memberships(a, []) for a in population]
    preview = AudiencePreview(candidate, applied, sample_size=3)
    halves = [AudiencePreview(candidate, applied), AudiencePreview(candidate, applied)]
    for i, (attributes, current) in enumerate(zip(population, before)):
        preview.add(f"c{i}", attributes, current)
        halves[i % 2].add(f"c{i}", attributes, current)
    after = [candidate.memberships(a, current) for a, current in zip(population, before)]
    merged = merge_previews([h.document() for h in halves], candidate)
    for audience in merged["audiences"]:
        name = audience["name"]
        members = [i for i, m in enumerate(after) if name in m]
        assert audience["members"] == len(members) == preview.document()["audiences"][
            name]["members"]
        assert audience["would_enter"] == sum(
            name in a and name not in b for a, b in zip(after, before))
        assert audience["would_exit"] == sum(
            name in b and name not in a for a, b in zip(after, before))
        assert sum(audience["segments"].values()) == len(members)
    assert merged["dropped"] == [{"name": "gone", "would_exit": sum("gone" in b
                                                                    for b in before)}]
    assert len(preview.document()["audiences"]["buyers"]["sample"]) <= 3
