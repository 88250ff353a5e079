"""Hand-computed checks of the batch recomputation (stream_app.tools.batch) and of verify.compare.

Times are built around day D = 20_000 (2024-10-04T00:00:00Z = 1_728_000_000_000 ms) so that
window edges fall exactly on UTC day and hour boundaries.
"""

from __future__ import annotations

import io
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from rich.console import Console

from stream_app.tools.batch import (
    DAY_MS,
    FEATURE_NAMES,
    HOUR_MS,
    BatchCustomer,
    event_kind,
    parse_ts,
    recompute,
)
from stream_app.tools.verify import ABSENT, Mismatch, compare, format_ts, load_events, run
from stream_app.worker.options import pipeline_options

D = 20_000
BASE = D * DAY_MS  # 2024-10-04T00:00:00Z
MIN = 60_000
LATE = 3_600_000


def click(eid, ts, etype="page_view", cid="c", **extra):
    return {"event_id": eid, "customer_id": cid, "ts": ts, "event_type": etype, **extra}


def purchase(eid, ts, amount=10.0, cid="c", **extra):
    return {"event_id": eid, "customer_id": cid, "ts": ts, "order_id": f"o-{eid}",
            "amount": amount, **extra}


def profile(ts, cid="c", **fields):
    return {"customer_id": cid, "ts": ts, **fields}


def day(n):
    """First millisecond of day D + n."""
    return BASE + n * DAY_MS


def one(events, **kwargs) -> BatchCustomer:
    customers = recompute(events, **kwargs)
    assert list(customers) == ["c"]
    return customers["c"]


# --------------------------------------------------------------------------- parse_ts

def test_parse_ts_iso_offsets_and_epoch():
    assert BASE == 1_728_000_000_000
    assert parse_ts("2024-10-04T00:00:00Z") == (BASE, 0)
    assert parse_ts("2024-10-04T00:00:00+00:00") == (BASE, 0)
    # Same instant written in two offsets: same epoch ms, different local hours.
    assert parse_ts("2024-10-04T02:30:00+02:00") == (BASE + 30 * MIN, 2)
    assert parse_ts("2024-10-03T22:30:00-02:00") == (BASE + 30 * MIN, 22)
    assert parse_ts("2024-10-04T05:30:00+05:30") == (BASE, 5)
    # Milliseconds kept, finer digits truncated.
    assert parse_ts("2024-10-04T00:00:01.234Z") == (BASE + 1234, 0)
    assert parse_ts("2024-10-04T00:00:01.234999Z") == (BASE + 1234, 0)
    # Epoch milliseconds: local hour is the UTC hour.
    assert parse_ts(BASE + 23 * HOUR_MS + 59 * MIN) == (BASE + 23 * HOUR_MS + 59 * MIN, 23)
    assert parse_ts(BASE + 5 * HOUR_MS) == (BASE + 5 * HOUR_MS, 5)
    # A whole-number float is the same instant (JSON 1728000000000.0), as in the worker.
    assert parse_ts(float(BASE)) == (BASE, 0)


@pytest.mark.parametrize("bad", ["2024-10-04T00:00:00", "2024-10-04", "yesterday", "",
                                 None, True, 1.5, float("nan"), "1728000000000",
                                 # The worker's rules: upper-case Z, no surrounding spaces.
                                 "2024-10-04T00:00:00z", " 2024-10-04T00:00:00Z"])
def test_parse_ts_rejects(bad):
    with pytest.raises(ValueError):
        parse_ts(bad)


def test_event_kind_inference():
    assert event_kind({"order_id": "o", "event_type": "page_view"}) == "purchase"
    assert event_kind({"event_type": "search"}) == "click"
    assert event_kind({"event_type": "search", "order_id": None}) == "click"
    assert event_kind({"age": 3}) == "profile"


# --------------------------------------------------------------------------- basics

def test_feature_keys_types_and_empty_customer():
    c = one([click("e1", BASE, "search")])
    f = c.features()
    assert list(f) == list(FEATURE_NAMES)
    assert f["orders_total"] == 0 and type(f["orders_total"]) is int
    assert f["revenue_total"] == 0.0 and type(f["revenue_total"]) is float
    assert type(f["avg_order_value_90d"]) is float and f["avg_order_value_90d"] == 0.0
    assert f["first_order_ts"] is None and f["last_order_ts"] is None
    assert f["days_since_last_order"] is None
    assert type(f["discount_share_90d"]) is float and f["discount_share_90d"] == 0.0
    assert type(f["cart_abandon_rate_7d"]) is float and f["cart_abandon_rate_7d"] == 0.0
    assert f["searches_7d"] == 1 and type(f["searches_7d"]) is int
    assert f["night_share_30d"] == 1.0  # midnight UTC
    assert f["app_share_30d"] == 0.0


def test_recompute_groups_by_customer_and_profiles_do_not_move_as_of():
    out = recompute([
        click("e1", BASE, cid="a"),
        profile(BASE + 10 * DAY_MS, cid="a", age=40),
        purchase("p1", BASE + HOUR_MS, cid="b"),
        profile(BASE, cid="z", city="Oslo"),
    ])
    assert sorted(out) == ["a", "b", "z"]
    assert out["a"].as_of == BASE
    assert out["a"].profile == {"age": 40}
    assert out["b"].as_of == BASE + HOUR_MS
    assert out["z"].as_of == 0 and not out["z"].has_activity
    assert out["a"].has_activity and out["b"].has_activity


def test_recompute_rejects_document_without_customer():
    with pytest.raises(ValueError, match="customer_id"):
        recompute([{"event_id": "x", "ts": BASE, "event_type": "search"}])


# --------------------------------------------------------------------------- windows

def test_purchase_windows_at_day_boundaries():
    events = [
        purchase("p1", day(-90) + DAY_MS - 1, 1),   # last ms of D-90: outside 90d
        purchase("p2", day(-89), 2),                # first ms of D-89: inside 90d
        purchase("p3", day(-30) + DAY_MS - 1, 4),   # last ms of D-30: outside 30d
        purchase("p4", day(-29), 8),                # first ms of D-29: inside 30d
        purchase("p5", day(0) + 1000, 16),
    ]
    c = one(events)
    assert c.as_of == day(0) + 1000
    f = c.features(at=day(0) + DAY_MS - 1)  # last ms of day D
    assert f["orders_total"] == 5
    assert f["revenue_total"] == 31.0
    assert f["orders_90d"] == 4 and f["revenue_90d"] == 30.0
    assert f["orders_30d"] == 2 and f["revenue_30d"] == 24.0
    assert f["avg_order_value_90d"] == 7.5
    assert f["first_order_ts"] == day(-90) + DAY_MS - 1
    assert f["last_order_ts"] == day(0) + 1000
    # One millisecond later it is day D+1: p4 leaves 30d, p2 leaves 90d.
    g = c.features(at=day(1))
    assert g["orders_30d"] == 1 and g["revenue_30d"] == 16.0
    assert g["orders_90d"] == 3 and g["revenue_90d"] == 28.0
    assert g["orders_total"] == 5 and g["revenue_total"] == 31.0
    assert g["avg_order_value_90d"] == 28 / 3


def test_click_7d_window_edges_and_types():
    events = [
        click("v0", day(-7) + DAY_MS - 1, "product_view", session_id="old"),  # outside 7d
        click("v1", day(-6), "product_view", session_id="s1"),                # inside
        click("v2", day(-3), "page_view", session_id="s1"),
        click("s1", day(-2), "search", session_id="s2"),
        click("s2", day(-1), "search", session_id=""),
        click("a1", day(0), "add_to_cart", session_id=None),
        click("r1", day(0) + 1, "remove_from_cart"),
        click("k1", day(0) + 2, "checkout_start", session_id="s3"),
    ]
    f = one(events).features()
    assert f["views_7d"] == 2
    assert f["searches_7d"] == 2
    assert f["add_to_cart_7d"] == 1
    assert f["sessions_7d"] == 3  # s1, s2, s3; "" / null / outside-window "old" not counted
    assert f["views_24h"] == 0


def test_views_24h_uses_hour_buckets():
    t = day(0) + 10 * HOUR_MS + 30 * MIN
    events = [
        # Hour D*24-14 (only 23h31 before t, but its hour bucket is 24 hours back): out.
        click("v0", day(-1) + 10 * HOUR_MS + 59 * MIN),
        # Hour D*24-13: first hour inside.
        click("v1", day(-1) + 11 * HOUR_MS),
        click("v2", day(0) + 10 * HOUR_MS, "product_view"),
        click("s1", day(0) + 10 * HOUR_MS + MIN, "search"),
        click("v3", t),
    ]
    c = one(events)
    assert c.as_of == t
    f = c.features()
    assert f["views_24h"] == 3
    assert f["views_7d"] == 4
    # At the start of the next hour v1's hour leaves the window.
    assert c.features(at=day(0) + 11 * HOUR_MS)["views_24h"] == 2
    # v2 and v3 share hour D*24+10: still inside 23 hours later, both out 24 hours later.
    assert c.features(at=day(1) + 9 * HOUR_MS + 59 * MIN)["views_24h"] == 2
    assert c.features(at=day(1) + 10 * HOUR_MS)["views_24h"] == 0


def test_evaluation_at_a_later_time():
    c = one([purchase("p1", day(0) + 12 * HOUR_MS, 5.0), click("v1", day(0) + 12 * HOUR_MS)])
    f = c.features()
    assert f["days_since_last_order"] == 0.0
    assert f["orders_30d"] == 1 and f["views_7d"] == 1 and f["views_24h"] == 1
    g = c.features(at=day(3))
    assert g["days_since_last_order"] == 2.5
    assert g["views_24h"] == 0 and g["views_7d"] == 1
    h = c.features(at=day(7))
    assert h["views_7d"] == 0 and h["orders_30d"] == 1
    k = c.features(at=day(30))
    assert k["orders_30d"] == 0 and k["orders_90d"] == 1 and k["revenue_90d"] == 5.0
    assert k["night_share_30d"] == 0.0 and k["app_share_30d"] == 0.0
    assert c.features(at=day(90))["orders_90d"] == 0
    assert c.features(at=day(90))["avg_order_value_90d"] == 0.0
    assert c.features(at=day(90))["orders_total"] == 1
    with pytest.raises(ValueError):
        c.features(at=c.as_of - 1)


# --------------------------------------------------------------------------- duplicates

def test_duplicates_are_dropped_entirely():
    c = one([
        purchase("p1", BASE, 10.0),
        purchase("p1", BASE + HOUR_MS, 99.0),  # same id, other content: ignored
        click("v1", BASE),
        click("v1", BASE),
    ])
    f = c.features()
    assert c.as_of == BASE  # the duplicate's later ts does not move the clock
    assert f["orders_total"] == 1 and f["revenue_total"] == 10.0
    assert f["views_7d"] == 1
    assert c.duplicates == 2 and c.accepted == 2


def test_a_conflicting_duplicate_is_told_apart_by_the_same_rule_as_the_worker():
    """A copy with other content is a ``conflicting_duplicate`` for the batch exactly when
    the worker dead-letters it (same canonical content: normalised numbers, channel and
    ts, fields the features do not read ignored), and neither applies it."""
    from stream_app.config import Settings
    from stream_app.core.pipeline import CustomerPipeline

    first = [purchase("p1", BASE, 10.0, channel="app", items=[{"category": "x", "quantity": 2}]),
             click("v1", BASE + MIN, "search", session_id="s")]
    copies = [
        purchase("p1", BASE, 10, channel=" App", items=[{"quantity": 2.0, "category": "x"}],
                 currency="EUR"),
        {**purchase("p1", BASE, 10.0, channel="app", items=[{"category": "x", "quantity": 2}]),
         "order_id": "other"},
        click("v1", "2024-10-04T00:01:00Z", "search", session_id="s", product_id="p"),
        purchase("p1", BASE, 9999.0, channel="app", items=[{"category": "x", "quantity": 2}]),
        purchase("p1", BASE, 10.0, channel="web", items=[{"category": "x", "quantity": 2}]),
        purchase("p1", BASE, 10.0, channel="app", items=[{"category": "x", "quantity": 3}]),
        click("v1", BASE + MIN, "page_view", session_id="s"),
        click("v1", "2024-10-04T02:01:00+02:00", "search", session_id="s"),  # other hour
    ]
    c = one(first)
    batch = [c.add(doc) for doc in copies]
    assert batch == ["duplicate"] * 3 + ["conflicting_duplicate"] * 5
    assert c.duplicates == 8 and c.conflicts == 5
    pipeline = CustomerPipeline(pipeline_options(Settings()))
    stored = None
    for offset, doc in enumerate(first):
        (out,) = pipeline.process_message(event_kind(doc), b"c", orjson.dumps(doc), stored,
                                          "in", 0, offset)
        stored = out.state
    streamed = []
    for doc in copies:
        (out,) = pipeline.process_message(event_kind(doc), b"c", orjson.dumps(doc), stored,
                                          "in", 0, 9)
        assert out.state is None
        streamed.append(out.reason or ("duplicate" if out.duplicate else "applied"))
    assert streamed == batch
    f = c.features()
    assert (f["orders_total"], f["revenue_total"], f["searches_7d"]) == (1, 10.0, 1)


def test_event_ids_are_per_customer():
    out = recompute([purchase("p1", BASE, cid="a"), purchase("p1", BASE, cid="b")])
    assert out["a"].features()["orders_total"] == 1
    assert out["b"].features()["orders_total"] == 1


def test_duplicate_of_a_late_event_is_also_dropped():
    c = one([
        purchase("p0", BASE + 5 * HOUR_MS, 1.0),
        purchase("p-late", BASE, 3.0),
        purchase("p-late", BASE + 5 * HOUR_MS, 3.0),
    ])
    assert c.features()["orders_total"] == 2
    assert c.features()["orders_30d"] == 1


# --------------------------------------------------------------------------- lateness

def test_late_purchase_counts_only_in_lifetime_totals():
    x = day(0) + 12 * HOUR_MS
    c = one([
        purchase("p1", x, 10.0, category="a", channel="web"),
        purchase("late", x - LATE - 1, 7.0, category="b", discount=1.0, channel="app",
                 items=[{"quantity": 3}]),
        click("atc", x, "add_to_cart"),
    ])
    assert c.late == 1
    f = c.features()
    assert f["orders_total"] == 2
    assert f["revenue_total"] == 17.0
    assert f["first_order_ts"] == x - LATE - 1
    assert f["last_order_ts"] == x
    assert f["orders_30d"] == 1 and f["revenue_30d"] == 10.0
    assert f["orders_90d"] == 1 and f["revenue_90d"] == 10.0
    assert f["avg_order_value_90d"] == 10.0
    assert f["discount_share_90d"] == 0.0
    assert f["distinct_categories_90d"] == 1
    assert f["cart_abandon_rate_7d"] == 0.0  # p1 has no items -> 1 item
    assert f["app_share_30d"] == 0.0  # late app purchase not counted
    assert f["night_share_30d"] == 0.0


def test_lateness_is_judged_within_each_stream():
    # Kafka does not order a customer's clicks against its purchases: a purchase read
    # after a much newer click is not late.
    c = one([click("v", day(0) + 10 * HOUR_MS), purchase("p", day(0))])
    f = c.features()
    assert c.late == 0
    assert f["orders_total"] == 1 and f["orders_30d"] == 1
    assert f["last_order_ts"] == day(0)
    assert f["days_since_last_order"] == 10 / 24


def test_late_click_has_no_effect():
    x = day(0) + 12 * HOUR_MS
    c = one([
        click("v1", x, session_id="s1", channel="web"),
        click("late", x - LATE - 1, "product_view", session_id="s9", channel="app"),
        click("late-s", x - 2 * LATE, "search"),
    ])
    f = c.features()
    assert c.as_of == x and c.late == 2
    assert f["views_24h"] == 1 and f["views_7d"] == 1
    assert f["sessions_7d"] == 1 and f["searches_7d"] == 0
    assert f["app_share_30d"] == 0.0


def test_out_of_order_within_lateness_is_counted():
    x = day(0) + 12 * HOUR_MS
    c = one([
        click("v1", x),
        click("v2", x - LATE),          # exactly at the limit: on time
        purchase("p1", x, 4.0),
        purchase("p0", x - 30 * MIN, 2.0),  # out of order, on time
        purchase("p2", x - LATE - 1, 1.0),  # one ms beyond: late
    ])
    f = c.features()
    assert c.late == 1
    assert f["views_24h"] == 2
    assert f["orders_30d"] == 2 and f["revenue_30d"] == 6.0
    assert f["orders_total"] == 3


def test_lateness_is_measured_against_the_clock_before_each_event():
    x = day(0) + 12 * HOUR_MS
    c = one([
        click("v1", x),
        click("v2", x - 50 * MIN),       # on time w.r.t. as_of = x
        click("v3", x + 2 * HOUR_MS),    # moves as_of forward
        click("v4", x + 30 * MIN),       # late now: x+30min < x+2h-1h
        click("v5", x + HOUR_MS),        # exactly at the new limit: on time
    ])
    assert c.as_of == x + 2 * HOUR_MS
    assert c.features()["views_7d"] == 4
    assert c.late == 1


def test_custom_lateness():
    x = day(0) + 12 * HOUR_MS
    events = [click("v1", x), click("v2", x - 1), click("v3", x)]
    assert one(events, lateness_ms=0).features()["views_7d"] == 2
    assert one(events, lateness_ms=1).features()["views_7d"] == 3


# --------------------------------------------------------------------------- money

def test_cents_rounding():
    c = one([
        purchase("p1", BASE, 19.99),
        purchase("p2", BASE + 1, 0.29),
        purchase("p3", BASE + 2, 0.29),
        purchase("p4", BASE + 3, 0.29),
        purchase("p5", BASE + 4, 0.1),
        purchase("p6", BASE + 5, 0.2),
    ])
    assert 19.99 + 0.29 + 0.29 + 0.29 + 0.1 + 0.2 != 21.16  # naive float sums drift
    f = c.features()
    assert f["revenue_total"] == 21.16
    assert f["revenue_30d"] == 21.16 and f["revenue_90d"] == 21.16
    assert f["avg_order_value_90d"] == 2116 / 6 / 100
    assert f["orders_90d"] == 6


def test_integer_and_float_amounts():
    c = one([purchase("p1", BASE, 3), purchase("p2", BASE, 1.005)])
    # round(1.005 * 100) == round(100.49999999999999) == 100 cents
    assert c.features()["revenue_total"] == 4.0


def test_discount_share():
    c = one([
        purchase("p1", BASE, discount=0.01),
        purchase("p2", BASE, discount=0.004),  # rounds to 0 cents: not discounted
        purchase("p3", BASE, discount=None),
        purchase("p4", BASE, discount=0),
        purchase("p5", BASE, discount=2.5),
    ])
    assert c.features()["discount_share_90d"] == 2 / 5


def test_distinct_categories():
    c = one([
        purchase("old", day(-90), category="old"),  # outside 90d
        purchase("p1", day(-10), category="shoes",
                 items=[{"category": "shoes"}, {"category": "hats"}, {"category": None},
                        {"category": ""}, {}]),
        purchase("p2", day(0), category="Hats", items=None),
        purchase("p3", day(0), category=None, items=[{"category": "bags"}]),
        purchase("p4", day(0), category=""),
    ])
    f = c.features()
    assert f["distinct_categories_90d"] == 4  # shoes, hats, Hats, bags
    assert c.features(at=day(79) + DAY_MS - 1)["distinct_categories_90d"] == 4
    assert c.features(at=day(80))["distinct_categories_90d"] == 2  # p1 left: Hats, bags


# --------------------------------------------------------------------------- cart

def test_cart_abandon_with_item_quantities():
    atc = [click(f"a{i}", day(0) + i, "add_to_cart") for i in range(4)]
    c = one([*atc, purchase("p1", day(0) + 10,
                            items=[{"quantity": 2}, {"quantity": None}])])
    f = c.features()
    assert f["add_to_cart_7d"] == 4
    assert f["cart_abandon_rate_7d"] == (4 - 3) / 4


def test_cart_item_counting_rules():
    atc = [click(f"a{i}", day(0) + i, "add_to_cart") for i in range(5)]
    purchases = [
        purchase("n1", day(0) + 10),                                # no items key -> 1
        purchase("n2", day(0) + 11, items=None),                    # null -> 1
        purchase("n3", day(0) + 12, items=[]),                      # empty -> 1
        purchase("n4", day(0) + 13, items=[{"quantity": 0}]),       # 0
        purchase("n5", day(0) + 14, items=[{"product_id": "x"}]),   # missing quantity -> 1
        purchase("old", day(-7), items=[{"quantity": 50}]),         # outside 7d
    ]
    # Outside-7d purchase must be first in arrival order or it would be late.
    c = one([purchases[-1], *atc, *purchases[:-1]])
    f = c.features()
    assert c.late == 0
    assert f["cart_abandon_rate_7d"] == (5 - 4) / 5


def test_cart_abandon_never_negative_and_late_purchase_ignored():
    c = one([
        click("a1", day(0) + 5 * HOUR_MS, "add_to_cart"),
        click("a2", day(0) + 5 * HOUR_MS, "add_to_cart"),
        purchase("p0", day(0) + 5 * HOUR_MS),  # no items: one item
        purchase("late", day(0), items=[{"quantity": 9}]),
    ])
    assert c.late == 1
    assert c.features()["cart_abandon_rate_7d"] == 0.5
    c = one([click("a1", day(0), "add_to_cart"), purchase("p", day(0), items=[{"quantity": 3}])])
    assert c.features()["cart_abandon_rate_7d"] == 0.0


# --------------------------------------------------------------------------- night / app

def test_night_share_uses_the_local_hour_of_iso_offsets():
    events = [
        # Local 23:30 (night) = 21:30Z (not night in UTC).
        click("a", "2024-10-03T23:30:00+02:00", channel=" App "),
        # Epoch ms 03:00 UTC: night.
        purchase("c", BASE + 3 * HOUR_MS, channel="web"),
        # Local 10:00 = 09:00Z: not night either way.
        click("b", "2024-10-04T10:00:00+01:00", "search", channel=None),
    ]
    f = one(events).features()
    assert f["night_share_30d"] == 2 / 3
    assert f["app_share_30d"] == 1 / 3


def test_night_hour_edges():
    events = [click(f"h{h}", BASE + h * HOUR_MS, "checkout_start") for h in (5, 6, 21, 22)]
    events.append(click("h5b", BASE + 22 * HOUR_MS + 59 * MIN, "remove_from_cart",
                        channel="APP"))
    f = one(events).features()
    assert f["night_share_30d"] == 3 / 5  # 5h, 22h, 22:59 are night; 6h, 21h are not
    assert f["app_share_30d"] == 1 / 5


def test_night_share_30d_window():
    f = one([
        click("old", day(-30), channel="app"),          # 00:00 -> night, but outside 30d
        purchase("p", day(-29) + 12 * HOUR_MS, channel="app"),
        click("v", day(0) + 12 * HOUR_MS),
    ]).features()
    assert f["night_share_30d"] == 0.0
    assert f["app_share_30d"] == 0.5


# --------------------------------------------------------------------------- profiles

def test_profile_last_writer_wins_by_event_time():
    c = one([
        profile(BASE + 100, age=30, region="north", income=1000.5),
        profile(BASE + 50, age=99, gender="f"),       # older: ignored entirely
        profile(BASE + 100, city="Oslo"),             # equal ts, later arrival: applied
        profile(BASE + 200, region=None),             # explicit null clears
        profile(BASE + 150, city="Bergen", age=1),    # older than 200: ignored
        profile(BASE + 300),                          # no fields: nothing changes
        profile(BASE + 300, unknown="x"),             # unknown fields are not kept
    ])
    assert c.profile == {"age": 30, "income": 1000.5, "city": "Oslo"}
    assert c.as_of == 0 and not c.has_activity


def test_profile_ts_independent_of_click_clock():
    c = one([
        click("v", BASE + 10 * DAY_MS),
        profile(BASE, gender="m"),  # profiles are never late
    ])
    assert c.profile == {"gender": "m"}
    assert c.as_of == BASE + 10 * DAY_MS


# --------------------------------------------------------------------------- verify

def worker_doc(customer: BatchCustomer, at: int | None = None) -> dict:
    """The document a correct worker would serve for ``customer`` at time ``at``."""
    at = customer.as_of if at is None else at
    features = customer.features(at)
    for name in ("first_order_ts", "last_order_ts"):
        features[name] = format_ts(features[name])
    return {"customer_id": customer.customer_id, "as_of": format_ts(at),
            "features": features, "segment": 3}


@pytest.fixture
def batch():
    return recompute([
        click("v1", BASE + 12 * HOUR_MS, cid="c1", session_id="s", channel="app"),
        purchase("p1", BASE + 13 * HOUR_MS + 250, 19.99, cid="c1", discount=1.0,
                 category="x", items=[{"quantity": 2}]),
        purchase("p2", BASE + 14 * HOUR_MS, 0.29, cid="c1"),
        click("a1", BASE, "add_to_cart", cid="c2"),
        profile(BASE, cid="c3", age=50),
    ])


def test_format_ts():
    assert format_ts(BASE) == "2024-10-04T00:00:00.000Z"
    assert format_ts(BASE + 13 * HOUR_MS + 250) == "2024-10-04T13:00:00.250Z"
    assert format_ts(None) is None


def test_compare_matching_documents(batch):
    docs = {cid: worker_doc(c) for cid, c in batch.items() if c.has_activity}
    asked = []

    def fetch(cid):
        asked.append(cid)
        return docs.get(cid)

    assert compare(batch, fetch) == []
    assert sorted(asked) == ["c1", "c2"]  # profile-only c3 is not compared


def test_compare_accepts_float_noise_within_tolerance(batch):
    doc = worker_doc(batch["c1"])
    doc["features"]["revenue_total"] = 20.28 + 1e-9
    doc["features"]["night_share_30d"] += 1e-10
    docs = {"c1": doc, "c2": worker_doc(batch["c2"])}
    assert compare(batch, docs.get) == []


def test_compare_evaluates_at_the_worker_as_of(batch):
    later = BASE + 14 * HOUR_MS + 3 * DAY_MS  # 3 days after c1's last event
    swept = {cid: worker_doc(batch[cid], later) for cid in ("c1", "c2")}
    assert swept["c1"]["features"]["days_since_last_order"] == 3.0
    assert compare(batch, swept.get) == []
    # The worker claims the later clock but still reports the features of the old time.
    stale = worker_doc(batch["c1"])
    stale["as_of"] = format_ts(later)
    assert compare(batch, {"c1": stale, "c2": swept["c2"]}.get) == [
        Mismatch("c1", "days_since_last_order", 3.0, 0.0),
        Mismatch("c1", "views_24h", 0, 1),
    ]


def test_compare_reports_changed_values(batch):
    docs = {cid: worker_doc(c) for cid, c in batch.items() if c.has_activity}
    f = docs["c1"]["features"]
    f["orders_total"] = 3
    f["revenue_total"] = 20.27
    f["views_7d"] = 1.0  # a float where a count is expected
    f["night_share_30d"] = 1e-8
    f["days_since_last_order"] = None
    del f["sessions_7d"]
    assert compare(batch, docs.get) == [
        Mismatch("c1", "orders_total", 2, 3),
        Mismatch("c1", "revenue_total", 20.28, 20.27),
        Mismatch("c1", "days_since_last_order", 0.0, None),
        Mismatch("c1", "views_7d", 1, 1.0),
        Mismatch("c1", "sessions_7d", 1, ABSENT),
        Mismatch("c1", "night_share_30d", 0.0, 1e-8),
    ]


def test_compare_reports_missing_customer(batch):
    docs = {"c1": worker_doc(batch["c1"])}
    assert compare(batch, docs.get) == [Mismatch("c2", "<missing>", "present", None)]


def test_compare_reports_wrong_timestamp(batch):
    doc = worker_doc(batch["c1"])
    assert doc["features"]["first_order_ts"] == "2024-10-04T13:00:00.250Z"
    doc["features"]["first_order_ts"] = "2024-10-04T13:00:00.251Z"
    doc["features"]["last_order_ts"] = BASE + 14 * HOUR_MS  # epoch ms instead of ISO
    docs = {"c1": doc, "c2": worker_doc(batch["c2"])}
    assert compare(batch, docs.get) == [
        Mismatch("c1", "first_order_ts", "2024-10-04T13:00:00.250Z",
                 "2024-10-04T13:00:00.251Z"),
        Mismatch("c1", "last_order_ts", "2024-10-04T14:00:00.000Z", BASE + 14 * HOUR_MS),
    ]


def test_compare_reports_worker_clock_behind(batch):
    doc = worker_doc(batch["c2"])
    doc["as_of"] = format_ts(BASE - 1)
    null = worker_doc(batch["c1"])
    null["as_of"] = None
    found = compare(batch, {"c1": null, "c2": doc}.get)
    assert found == [
        Mismatch("c1", "as_of", ">= 2024-10-04T14:00:00.000Z", None),
        Mismatch("c2", "as_of", ">= 2024-10-04T00:00:00.000Z", "2024-10-03T23:59:59.999Z"),
    ]


def test_load_events(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"a": 1}\n\n   \n{"b": "x"}\n')
    assert load_events(path) == [{"a": 1}, {"b": "x"}]
    path.write_bytes(b'{"a": 1}\n[1]\n')
    with pytest.raises(ValueError, match=":2:"):
        load_events(path)


def test_run_against_a_local_http_server(tmp_path, batch):
    events = [
        click("v1", BASE, cid="a/b c", channel="app"),
        purchase("p1", BASE + HOUR_MS, 19.99, cid="a/b c"),
        click("v2", BASE, cid="gone"),
        profile(BASE, cid="only-profile", age=3),
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    expected = recompute(events)
    served = {"a/b c": worker_doc(expected["a/b c"]), "gone": worker_doc(expected["gone"])}
    requested = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requested.append(self.path)
            prefix = "/customers/"
            cid = urllib.parse.unquote(self.path[len(prefix):])
            doc = served.get(cid) if self.path.startswith(prefix) else None
            body = orjson.dumps(doc) if doc is not None else b'{"error": "not found"}'
            self.send_response(200 if doc is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        out = io.StringIO()
        assert run(path, url, console=Console(file=out, width=200)) == 0
        assert "checked 2 customers, 42 features, 0 mismatches" in out.getvalue()
        assert sorted(requested) == ["/customers/a%2Fb%20c", "/customers/gone"]

        del served["gone"]
        served["a/b c"]["features"]["revenue_total"] = 19.98
        out = io.StringIO()
        assert run(path, url, console=Console(file=out, width=200)) == 1
        text = out.getvalue()
        assert "checked 2 customers, 21 features, 2 mismatches" in text
        assert "revenue_total" in text and "<missing>" in text and "19.98" in text
    finally:
        server.shutdown()
        server.server_close()
