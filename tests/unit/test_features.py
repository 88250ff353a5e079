"""Tests of stream_app.core.features.FeatureWindow and stream_app.core.state.CustomerState.

Window semantics under test (module docstring of stream_app.core.features): features are
evaluated at a time ``T`` (``as_of``, the newest event time seen, or a later ``at``); a
window of N days covers the UTC day of ``T`` and the N-1 days before it; ``views_24h``
covers the UTC hour of ``T`` and the 23 hours before it. An event more than the allowed
lateness older than the customer's newest event *of the same stream* (clicks or purchases)
is *late*: a late purchase counts only in the lifetime totals (``orders_total``,
``revenue_total``, ``first_order_ts``, ``last_order_ts``), a late click changes nothing, and
neither touches a window. Other out-of-order events land in their own bucket.

De-duplication (stream_app.core.state): purchases are remembered by the digests of the newest
``MAX_ORDER_IDS`` purchases; clicks among the recent click ids with
``ts >= max(newest click, ts) - lateness`` (at most ``MAX_RECENT_IDS``).
"""

from __future__ import annotations

import copy
import itertools
import random

import orjson
import pytest

from stream_app.core.dedup import id_key
from stream_app.core.features import (
    ALLOWED_LATENESS_MS,
    DAY_MS,
    FEATURE_NAMES,
    HOUR_MS,
    RETENTION_DAYS,
    FeatureWindow,
)
from stream_app.core.state import MAX_ORDER_IDS, MAX_RECENT_IDS, CustomerState
from stream_app.core.validation import Event

D = 20_000  # a UTC day number (2024-10-04)
MIN_MS = 60_000
#: A lateness large enough for tests of out-of-order arrival over many days.
LONG = 90 * DAY_MS
LIFETIME = ("orders_total", "revenue_total", "first_order_ts", "last_order_ts")
_ids = itertools.count()


def at(day: int, hour: int = 0, minute: int = 0) -> int:
    """Epoch ms of ``hour:minute`` UTC on day number ``day``."""
    return day * DAY_MS + hour * HOUR_MS + minute * MIN_MS


def click(ts: int, event_type: str = "page_view", *, local_hour: int | None = None,
          channel: str | None = None, session_id: str | None = None,
          category: str | None = None) -> Event:
    return Event(
        "click", f"e{next(_ids)}", "c", ts,
        (ts // HOUR_MS) % 24 if local_hour is None else local_hour, event_type,
        channel=channel, session_id=session_id, categories=(category,) if category else (),
    )


def buy(ts: int, cents: int = 1000, *, discount: int = 0, quantity: int = 1,
        categories: tuple[str, ...] = (), local_hour: int | None = None,
        channel: str | None = None) -> Event:
    return Event(
        "purchase", f"e{next(_ids)}", "c", ts,
        (ts // HOUR_MS) % 24 if local_hour is None else local_hour, "purchase",
        channel=channel, categories=categories, amount_cents=cents, discount_cents=discount,
        quantity=quantity,
    )


def window_of(events, lateness_ms: int = LONG) -> FeatureWindow:
    w = FeatureWindow()
    for ev in events:
        w.apply(ev, lateness_ms)
    return w


def features_of(events, lateness_ms: int = LONG) -> dict:
    return window_of(events, lateness_ms).features()


def windowed(d: dict) -> dict:
    """A window's ``to_dict`` without the lifetime totals."""
    return {k: v for k, v in d.items() if k not in ("o", "r", "f", "l")}


# -- basic shape --------------------------------------------------------------------------


def test_empty_window_features():
    f = FeatureWindow().features()
    assert tuple(f) == FEATURE_NAMES
    assert f["orders_total"] == 0 and f["revenue_total"] == 0
    assert f["first_order_ts"] is None and f["last_order_ts"] is None
    assert f["days_since_last_order"] is None
    for name in ("avg_order_value_90d", "discount_share_90d", "cart_abandon_rate_7d",
                 "night_share_30d", "app_share_30d"):
        assert f[name] == 0.0
    assert f["events_30d"] == 0
    assert FeatureWindow().features(at(D)) == f
    assert FeatureWindow().changes_with_time(at(D)) is False


def test_as_of_is_newest_event_time():
    w = window_of([click(at(D, 5)), click(at(D, 9)), click(at(D, 7))])
    assert w.as_of == at(D, 9)
    # A late event does not move as_of either.
    w = window_of([click(at(D, 9)), click(at(D, 5))], ALLOWED_LATENESS_MS)
    assert w.as_of == at(D, 9)


def test_default_lateness_is_one_hour():
    assert ALLOWED_LATENESS_MS == HOUR_MS
    w = window_of([click(at(D, 12))], ALLOWED_LATENESS_MS)
    assert w.apply(click(at(D, 11) - 1)) is False  # default argument: one hour
    assert w.apply(click(at(D, 11))) is True


# -- day windows ----------------------------------------------------------------------------


def test_30_and_90_day_windows_cover_as_of_day_and_days_before():
    as_of = at(D, 12)
    events = [
        buy(at(D - 29, 0, 0), 100),       # oldest day of the 30-day window
        buy(at(D - 30, 23, 59), 200),     # just outside 30 days, inside 90
        buy(at(D - 89, 0, 0), 400),       # oldest day of the 90-day window
        buy(at(D, 0, 0), 800),            # day of as_of
        click(as_of),
    ]
    f = features_of(events)
    assert f["orders_30d"] == 2
    assert f["revenue_30d"] == 9.00
    assert f["orders_90d"] == 4
    assert f["revenue_90d"] == 15.00
    assert f["orders_total"] == 4


def test_day_91_is_outside_every_window_but_in_lifetime_totals():
    f = features_of([buy(at(D - 90, 23, 59), 500), buy(at(D, 1), 300), click(at(D, 23, 59))])
    assert f["orders_90d"] == 1 and f["revenue_90d"] == 3.00
    assert f["orders_total"] == 2 and f["revenue_total"] == 8.00
    assert f["first_order_ts"] == at(D - 90, 23, 59)
    assert f["last_order_ts"] == at(D, 1)


def test_windows_are_utc_days_not_24_hour_spans():
    # as_of early on day D: an event 6 days and 1 hour earlier lies on day D-7 (outside
    # 7 days) although it is less than 7 x 24 hours before as_of.
    as_of = at(D, 0, 30)
    f = features_of([click(at(D - 7, 23, 30), "search"), click(at(D - 6, 0, 0), "search"),
                     click(as_of, "page_view")])
    assert f["searches_7d"] == 1


def test_seven_day_counters():
    events = [
        click(at(D, 10), "page_view"),
        click(at(D - 6, 0), "product_view"),
        click(at(D - 7, 23), "page_view"),  # outside 7 days
        click(at(D - 1, 3), "search"),
        click(at(D - 2, 3), "search"),
        click(at(D - 8, 3), "search"),  # outside 7 days
        click(at(D - 3, 3), "add_to_cart"),
        click(at(D - 3, 4), "remove_from_cart"),
        click(at(D - 3, 5), "checkout_start"),
    ]
    f = features_of(events)
    assert f["views_7d"] == 2
    assert f["searches_7d"] == 2
    assert f["add_to_cart_7d"] == 1


# -- views_24h ---------------------------------------------------------------------------------


def test_views_24h_covers_hour_of_as_of_and_23_before():
    as_of = at(D, 10, 30)
    events = [
        click(at(D - 1, 11, 0)),            # hour 10 - 23 = hour 11 of day D-1: inside
        click(at(D - 1, 10, 59)),           # 24 hours before the hour of as_of: outside
        click(at(D, 10, 0)),                # hour of as_of
        click(at(D, 3), "search"),          # not a view
        click(at(D, 4), "product_view"),
        click(as_of, "add_to_cart"),
    ]
    f = features_of(events)
    assert f["views_24h"] == 3


def test_views_24h_forgets_hours_when_as_of_moves():
    w = window_of([click(at(D, 1)), click(at(D, 2)), click(at(D, 2, 40))])
    assert w.features()["views_24h"] == 3
    w.apply(click(at(D + 1, 1, 5), "search"))  # hour D+1 01:00 - 23 h = D 02:00
    assert w.features()["views_24h"] == 2
    w.apply(click(at(D + 1, 3), "search"))
    assert w.features()["views_24h"] == 0
    assert w.features()["views_7d"] == 3


def test_out_of_order_view_inside_24h_is_counted_and_outside_is_not():
    w = window_of([click(at(D, 12), "search")])
    assert w.apply(click(at(D - 1, 13, 0)), LONG)   # 23 hours before hour 12: inside
    assert w.apply(click(at(D - 1, 12, 30)), LONG)  # 24 hours before: outside
    f = w.features()
    assert f["views_24h"] == 1
    assert f["views_7d"] == 2
    assert list(w.hours) == [(D - 1) * 24 + 13]  # no hour bucket outside the 24 hours


# -- out of order, lateness and horizon --------------------------------------------------------


def test_out_of_order_event_within_lateness_lands_in_its_own_day():
    w = window_of([click(at(D, 12))])
    assert w.apply(buy(at(D - 40, 8), 250), LONG)  # inside 90 days, outside 30
    assert w.apply(buy(at(D - 3, 8), 125), LONG)
    f = w.features()
    assert f["orders_30d"] == 1 and f["revenue_30d"] == 1.25
    assert f["orders_90d"] == 2 and f["revenue_90d"] == 3.75


def test_out_of_order_within_default_lateness_crosses_midnight_and_hours():
    # Newest click and purchase at 00:20 on day D; events from 23:20 on day D-1 are at
    # most one hour older.
    w = window_of([click(at(D, 0, 20), "search"), buy(at(D, 0, 20), 300)], ALLOWED_LATENESS_MS)
    assert w.apply(buy(at(D - 1, 23, 20), 700, local_hour=23))  # exactly one hour older
    assert w.apply(click(at(D - 1, 23, 45), "page_view", session_id="s"))
    assert w.apply(click(at(D, 0, 5), "add_to_cart", local_hour=12))
    assert w.as_of == at(D, 0, 20)
    assert sorted(w.days) == [D - 1, D]
    assert w.days[D - 1][0] == 1  # the purchase is in the bucket of day D-1
    assert w.hours == {D * 24 - 1: 1}
    f = w.features()
    assert f["orders_30d"] == 2 and f["revenue_30d"] == 10.00
    assert f["views_24h"] == 1 and f["views_7d"] == 1 and f["sessions_7d"] == 1
    assert f["add_to_cart_7d"] == 1 and f["searches_7d"] == 1
    assert f["night_share_30d"] == 0.8  # local hours 0, 0, 23, 23, 12
    # Eight days later, day D-1 has left the 7-day window but day D has not.
    later = w.features(at(D + 6, 23, 59))
    assert later["views_7d"] == 0 and later["add_to_cart_7d"] == 1
    assert later["searches_7d"] == 1 and later["sessions_7d"] == 0


@pytest.mark.parametrize("make", [click, buy], ids=["click", "purchase"])
def test_lateness_boundary(make):
    for lateness in (0, 1, ALLOWED_LATENESS_MS, 3 * DAY_MS):
        w = window_of([make(at(D, 12))], lateness)
        assert w.apply(make(at(D, 12) - lateness - 1), lateness) is False
        assert w.apply(make(at(D, 12) - lateness), lateness) is True
        assert w.apply(make(at(D, 12)), lateness) is True  # same time is never late
    # The first event is never late, however old.
    assert FeatureWindow().apply(make(at(D - 500)), 0) is True


def test_lateness_is_judged_per_stream():
    w = FeatureWindow()
    assert w.apply(buy(at(D, 12), 500))
    # The first click is not late, although far older than the newest purchase.
    assert w.apply(click(at(D, 2), session_id="s"))
    assert w.apply(click(at(D, 1, 30)))  # 30 minutes older than the newest click
    assert w.apply(click(at(D, 1) - 1)) is False  # more than an hour older
    assert w.apply(buy(at(D, 11))) is True  # one hour older than the newest purchase
    assert w.apply(buy(at(D, 11) - 1, 300)) is False
    # Newer purchases do not make clicks late, nor newer clicks purchases.
    assert w.apply(buy(at(D, 20)))
    assert w.apply(click(at(D, 1, 15)))
    assert w.apply(click(at(D + 1, 9)))
    assert w.apply(buy(at(D, 19, 30)))
    assert w.as_of == at(D + 1, 9)
    f = w.features()
    assert f["orders_total"] == 5 and f["revenue_total"] == 38.00
    assert f["orders_30d"] == 4 and f["revenue_30d"] == 35.00
    assert f["views_24h"] == 1 and f["views_7d"] == 4 and f["sessions_7d"] == 1


@pytest.mark.parametrize("seed", range(5))
def test_interleaving_of_the_two_streams_does_not_matter(seed):
    """Kafka orders each stream, not the two together: any interleaving gives the same
    features and the same late events."""
    rng = random.Random(seed)
    events = random_events(rng, 300)
    clicks = [e for e in events if e.kind == "click"]
    buys = [e for e in events if e.kind == "purchase"]
    results = []
    for order in ("clicks first", "purchases first", "random", "random"):
        if order == "clicks first":
            arrival = clicks + buys
        elif order == "purchases first":
            arrival = buys + clicks
        else:
            kinds = ["click"] * len(clicks) + ["purchase"] * len(buys)
            rng.shuffle(kinds)
            streams = {"click": iter(clicks), "purchase": iter(buys)}
            arrival = [next(streams[k]) for k in kinds]
        w = FeatureWindow()
        late = {ev.event_id for ev in arrival if not w.apply(ev)}
        results.append((w.features(), late, w.features(w.as_of + 40 * DAY_MS)))
    assert results[0][1]  # some events are late
    assert all(r == results[0] for r in results)


def test_late_click_changes_nothing():
    w = window_of([
        buy(at(D, 9), 1000, categories=("a",)),
        click(at(D, 10), "add_to_cart", session_id="s1", channel="app"),
        click(at(D, 12), "page_view"),
    ], ALLOWED_LATENESS_MS)
    before = copy.deepcopy(w.to_dict())
    features = w.features()
    for event_type in ("page_view", "product_view", "search", "add_to_cart",
                       "remove_from_cart", "checkout_start"):
        late = click(at(D, 11) - 1, event_type, session_id="s2", channel="app",
                     local_hour=23, category="b")
        assert w.apply(late) is False
        assert w.apply(click(at(D - 30, 11), event_type, session_id="s3")) is False
    assert w.to_dict() == before
    assert w.features() == features


def test_late_purchase_counts_only_in_lifetime_totals():
    w = window_of([buy(at(D, 9), 1000, categories=("a",)), buy(at(D, 12), 500),
                   click(at(D, 13), "add_to_cart")], ALLOWED_LATENESS_MS)
    before = copy.deepcopy(w.to_dict())
    f0 = w.features()
    # More than one hour older than the newest purchase.
    assert w.apply(buy(at(D, 11) - 1, 250, discount=10, quantity=3, categories=("b",),
                       channel="app", local_hour=2)) is False
    f1 = w.features()
    assert windowed(w.to_dict()) == windowed(before)
    assert f1["orders_total"] == 3 and f1["revenue_total"] == 17.50
    assert f1["first_order_ts"] == at(D, 9) and f1["last_order_ts"] == at(D, 12)
    for name in FEATURE_NAMES:
        if name not in ("orders_total", "revenue_total"):
            assert f1[name] == f0[name], name
    # Far older than every window: moves first_order_ts.
    assert w.apply(buy(at(D - 400, 1), 5)) is False
    f2 = w.features()
    assert f2["orders_total"] == 4 and f2["revenue_total"] == 17.55
    assert f2["first_order_ts"] == at(D - 400, 1) and f2["last_order_ts"] == at(D, 12)
    assert f2["days_since_last_order"] == f0["days_since_last_order"] == 1 / 24
    assert windowed(w.to_dict()) == windowed(before)
    assert w.as_of == at(D, 13)


def test_on_time_event_older_than_every_window():
    # The first click is on time for its stream however old, but outside every window.
    w = window_of([buy(at(D, 12), 1000)], ALLOWED_LATENESS_MS)
    f0 = w.features()
    assert w.apply(click(at(D - 90, 23, 59), "add_to_cart", session_id="s", channel="app",
                         local_hour=23)) is True
    assert w.features() == f0
    _check_memory_bounds(w)
    assert w.apply(click(at(D - 89), "search")) is True  # oldest day of the 90-day window
    assert w.features()["night_share_30d"] == 0.0 and w.features()["searches_7d"] == 0
    assert w.changes_with_time(at(D + 89)) is True


def test_event_older_than_horizon_counts_only_in_lifetime_totals():
    # Even with a lateness beyond the retention, nothing older than 90 days is in a window.
    w = window_of([buy(at(D, 12), 1000, categories=("a",))], 1000 * DAY_MS)
    before = w.features()
    old = buy(at(D - 90, 12), 700, discount=100, categories=("b",), local_hour=23,
              channel="app")
    w.apply(old, 1000 * DAY_MS)
    f = w.features()
    assert f["orders_total"] == 2 and f["revenue_total"] == 17.00
    assert f["first_order_ts"] == at(D - 90, 12)
    assert f["last_order_ts"] == at(D, 12)
    for name in FEATURE_NAMES:
        if name not in ("orders_total", "revenue_total", "first_order_ts"):
            assert f[name] == before[name], name
    w.apply(click(at(D - 200), "search", session_id="s", channel="app"), 1000 * DAY_MS)
    assert w.features() == f


def test_shuffled_arrival_within_lateness_gives_same_features():
    rng = random.Random(7)
    events = []
    for i in range(300):
        day = D - rng.randrange(0, 100)
        ts = at(day, rng.randrange(24), rng.randrange(60))
        if i % 5 == 0:
            events.append(buy(ts, rng.randrange(1, 50_000), discount=rng.choice([0, 0, 150]),
                              quantity=rng.randrange(1, 4),
                              categories=tuple(rng.sample("abcdefg", rng.randrange(3))),
                              local_hour=rng.randrange(24),
                              channel=rng.choice(["app", "web", None])))
        else:
            events.append(click(ts, rng.choice(["page_view", "product_view", "search",
                                                "add_to_cart", "checkout_start"]),
                                local_hour=rng.randrange(24),
                                channel=rng.choice(["app", "web", None]),
                                session_id=rng.choice([None, *"stuvwxyz"])))
    # Views in the last day so that views_24h is exercised.
    events += [click(at(D, h)) for h in range(0, 24, 3)] + [click(at(D - 1, 20))]
    ordered = sorted(events, key=lambda e: e.ts)
    expected = features_of(ordered)
    assert expected["views_24h"] > 0 and expected["orders_90d"] > 0
    # Events up to 100 days old: those more than 90 days older than as_of are late in some
    # orders, but they lie outside every window anyway.
    for _ in range(5):
        shuffled = events[:]
        rng.shuffle(shuffled)
        assert features_of(shuffled) == expected
    assert features_of(list(reversed(ordered))) == expected


def test_shuffle_within_default_lateness_gives_same_features():
    rng = random.Random(11)
    events = []
    ts = at(D - 10)
    for _ in range(400):
        ts += rng.randrange(0, 40 * MIN_MS)
        if rng.random() < 0.2:
            events.append(buy(ts, rng.randrange(1, 9999), discount=rng.choice([0, 50]),
                              categories=(rng.choice("abc"),), channel=rng.choice(["app", None])))
        else:
            events.append(click(ts, rng.choice(["page_view", "search", "add_to_cart"]),
                                session_id=rng.choice("pqrs"), local_hour=rng.randrange(24)))
    expected = features_of(events, ALLOWED_LATENESS_MS)
    # Reverse blocks spanning less than one hour: every event stays within the lateness.
    arrival, block = [], []
    for ev in events:
        if block and ev.ts - block[0].ts >= HOUR_MS:
            arrival += reversed(block)
            block = []
        block.append(ev)
    arrival += reversed(block)
    assert arrival != events
    w = FeatureWindow()
    assert all(w.apply(ev) for ev in arrival)
    assert w.features() == expected


# -- evaluation at a later time ------------------------------------------------------------------


def test_features_at_earlier_time_is_ignored():
    w = window_of([buy(at(D, 3)), click(at(D, 12)), click(at(D - 3, 12), session_id="x")])
    f = w.features()
    assert w.features(None) == f
    assert w.features(w.as_of) == f
    assert w.features(at(D, 11)) == f
    assert w.features(0) == f


def test_features_at_later_time_slide_every_window():
    w = window_of([
        buy(at(D - 1, 10), 1000, discount=5, quantity=2, categories=("a",), channel="app",
            local_hour=23),
        click(at(D, 10), "page_view", session_id="s", local_hour=12),
        click(at(D, 11), "add_to_cart", session_id="t", local_hour=12),
        click(at(D, 12), "search", local_hour=12),
    ])
    before = copy.deepcopy(w.to_dict())
    f = w.features()
    assert f["views_24h"] == 1 and f["days_since_last_order"] == 26 / 24
    # views_24h: the hour of `at` and the 23 before.
    assert w.features(at(D + 1, 9, 59))["views_24h"] == 1
    assert w.features(at(D + 1, 10))["views_24h"] == 0
    # days_since_last_order is relative to `at`.
    assert w.features(at(D + 4, 10))["days_since_last_order"] == 5.0
    # 7-day windows: day D counts until the end of day D+6.
    f6 = w.features(at(D + 6, 23, 59))
    assert (f6["views_7d"], f6["searches_7d"], f6["add_to_cart_7d"], f6["sessions_7d"]) == (
        1, 1, 1, 2)
    assert f6["cart_abandon_rate_7d"] == 1.0  # the items bought on D-1 are out of 7 days
    f7 = w.features(at(D + 7))
    assert (f7["views_7d"], f7["searches_7d"], f7["add_to_cart_7d"], f7["sessions_7d"]) == (
        0, 0, 0, 0)
    assert f7["cart_abandon_rate_7d"] == 0.0
    # 30-day windows: the purchase of D-1 counts until the end of day D+28.
    f29 = w.features(at(D + 28, 23, 59))
    assert f29["orders_30d"] == 1 and f29["revenue_30d"] == 10.0
    assert f29["night_share_30d"] == 0.25 and f29["app_share_30d"] == 0.25
    f30 = w.features(at(D + 29))
    assert f30["orders_30d"] == 0 and f30["revenue_30d"] == 0.0
    assert f30["night_share_30d"] == 0.0 and f30["app_share_30d"] == 0.0
    assert f30["orders_90d"] == 1 and f30["distinct_categories_90d"] == 1
    # 90-day windows: until the end of day D+88.
    f89 = w.features(at(D + 88, 23, 59))
    assert f89["orders_90d"] == 1 and f89["avg_order_value_90d"] == 10.0
    assert f89["discount_share_90d"] == 1.0 and f89["distinct_categories_90d"] == 1
    f90 = w.features(at(D + 89))
    assert f90["orders_90d"] == 0 and f90["revenue_90d"] == 0.0
    assert f90["avg_order_value_90d"] == 0.0 and f90["discount_share_90d"] == 0.0
    assert f90["distinct_categories_90d"] == 0
    # Lifetime totals never slide.
    for name in LIFETIME:
        assert f90[name] == f[name], name
    # Evaluating does not modify the window.
    assert w.to_dict() == before
    assert w.features() == f


def test_changes_with_time():
    w = window_of([click(at(D, 12)), buy(at(D - 5, 1))])
    assert w.changes_with_time(w.as_of) is True
    # The newest bucket (day D) is in the 90-day window until the end of day D+89.
    assert w.changes_with_time(at(D + 89, 23, 59)) is True
    # Then the recency checkpoints of the last order (day D - 5), up to two years.
    assert w.next_change(at(D + RETENTION_DAYS)) == at(D - 5 + 120, 1)
    assert w.next_change(at(D + 400)) == at(D - 5 + 450, 1)
    assert w.changes_with_time(at(D - 5 + 730, 1)) is False
    browser = window_of([click(at(D, 12))])  # no order: nothing changes after the windows
    assert browser.changes_with_time(at(D + RETENTION_DAYS)) is False
    # A late event creates no bucket.
    late = window_of([click(at(D, 12)), buy(at(D, 12))], ALLOWED_LATENESS_MS)
    assert late.apply(buy(at(D - 1))) is False
    assert list(late.days) == [D]
    assert late.next_change(at(D + 90)) == at(D + 120, 12)


# -- individual features -------------------------------------------------------------------


def test_sessions_7d_counts_distinct_session_ids():
    events = [
        click(at(D, 10), session_id="a"),
        click(at(D, 11), session_id="a"),
        click(at(D - 2, 11), session_id="b"),
        click(at(D - 10, 11), session_id="a"),  # old visit of a session also seen recently
        click(at(D - 7, 11), session_id="c"),   # outside 7 days
        click(at(D - 6, 0), session_id="d"),
        click(at(D, 12)),                       # no session
        click(at(D, 12), session_id=""),        # empty session id: no session
    ]
    assert features_of(events)["sessions_7d"] == 3
    assert features_of(reversed(events))["sessions_7d"] == 3


def test_session_leaves_window_as_time_passes():
    w = window_of([click(at(D, 10), session_id="a"), click(at(D + 3, 10), session_id="b")])
    assert w.features()["sessions_7d"] == 2
    w.apply(click(at(D + 7, 0)))
    assert w.features()["sessions_7d"] == 1
    w.apply(click(at(D + 7, 1), session_id="a"))
    assert w.features()["sessions_7d"] == 2


def test_distinct_categories_90d():
    events = [
        buy(at(D, 1), categories=("shoes", "books")),
        buy(at(D - 5, 1), categories=("shoes",)),
        buy(at(D - 89, 1), categories=("toys",)),
        buy(at(D - 90, 1), categories=("garden",)),  # outside 90 days
        click(at(D, 2), "product_view", category="music"),  # a view is not a purchase
    ]
    assert features_of(events)["distinct_categories_90d"] == 3
    assert features_of(reversed(events))["distinct_categories_90d"] == 3


def test_cart_abandon_rate_7d():
    carts = [click(at(D, h), "add_to_cart") for h in range(4)]
    assert features_of(carts)["cart_abandon_rate_7d"] == 1.0
    # (4 added - 1 item bought) / 4
    assert features_of([*carts, buy(at(D, 5), quantity=1)])["cart_abandon_rate_7d"] == 0.75
    assert features_of([*carts, buy(at(D, 5), quantity=3)])["cart_abandon_rate_7d"] == 0.25
    # More items bought than added to carts: never negative.
    assert features_of([*carts, buy(at(D, 5), quantity=9)])["cart_abandon_rate_7d"] == 0.0
    # Items bought more than 7 days ago do not offset this week's carts.
    old = buy(at(D - 7, 5), quantity=4)
    assert features_of([old, *carts])["cart_abandon_rate_7d"] == 1.0
    # Carts more than 7 days ago do not count.
    old_carts = [click(at(D - 8, h), "add_to_cart") for h in range(4)]
    assert features_of([*old_carts, click(at(D, 1))])["cart_abandon_rate_7d"] == 0.0


def test_night_share_uses_local_hour():
    # UTC noon for all; local hours differ (the event's own offset).
    hours = [22, 23, 0, 5, 6, 21, 12, 13]  # night: 22, 23, 0, 5
    events = [click(at(D, 12), local_hour=h) for h in hours]
    assert features_of(events)["night_share_30d"] == 0.5
    # UTC night with a daytime local hour is not night.
    assert features_of([click(at(D, 23), local_hour=9)])["night_share_30d"] == 0.0
    assert features_of([buy(at(D, 12), local_hour=3)])["night_share_30d"] == 1.0


def test_night_share_30_day_window():
    events = [
        click(at(D - 29, 12), local_hour=23),
        click(at(D - 30, 12), local_hour=23),  # outside 30 days
        click(at(D, 12), local_hour=12),
    ]
    assert features_of(events)["night_share_30d"] == 0.5
    assert features_of(events)["events_30d"] == 2  # the count behind the share


def test_app_share_30d():
    events = [
        click(at(D, 1), channel="app"),
        buy(at(D, 2), channel="app"),
        click(at(D, 3), channel="web"),
        click(at(D, 4)),
        click(at(D - 31, 4), channel="app"),  # outside 30 days
    ]
    assert features_of(events)["app_share_30d"] == 0.5


def test_avg_order_value_and_discount_share_90d():
    events = [
        buy(at(D, 1), 1999, discount=200),
        buy(at(D - 10, 1), 1001),
        buy(at(D - 60, 1), 3000, discount=1),
        buy(at(D - 95, 1), 100_000, discount=500),  # outside 90 days
    ]
    f = features_of(events)
    assert f["orders_90d"] == 3
    assert f["avg_order_value_90d"] == pytest.approx(20.00, abs=1e-12)
    assert f["discount_share_90d"] == pytest.approx(2 / 3, abs=1e-12)
    assert f["revenue_total"] == 1060.00


def test_days_since_last_order():
    w = window_of([buy(at(D, 0)), buy(at(D - 3, 0))])
    assert w.features()["days_since_last_order"] == 0.0
    w.apply(click(at(D + 2, 12)))
    assert w.features()["days_since_last_order"] == 2.5
    assert w.features(at(D + 4))["days_since_last_order"] == 4.0
    # An out-of-order purchase does not make the last order older.
    assert w.apply(buy(at(D - 1, 0)), LONG)
    assert w.features()["days_since_last_order"] == 2.5
    assert w.features()["last_order_ts"] == at(D, 0)
    assert w.features()["first_order_ts"] == at(D - 3, 0)
    assert features_of([click(at(D))])["days_since_last_order"] is None
    assert FeatureWindow().features(at(D))["days_since_last_order"] is None


def test_money_in_currency_units_exact_to_the_cent():
    events = [buy(at(D, 1), 1999), buy(at(D, 2), 1), buy(at(D, 3), 10)]
    f = features_of(events)
    assert f["revenue_30d"] == 20.10
    assert f["revenue_90d"] == 20.10
    assert f["revenue_total"] == 20.10


# -- serialization -----------------------------------------------------------------------------


def _busy_window() -> FeatureWindow:
    rng = random.Random(3)
    events = [buy(at(D - rng.randrange(100), rng.randrange(24)), rng.randrange(1, 9999),
                  discount=rng.choice([0, 5]), categories=(rng.choice("xyz"),))
              for _ in range(40)]
    events += [click(at(D - rng.randrange(10), rng.randrange(24)),
                     rng.choice(["page_view", "search", "add_to_cart"]),
                     session_id=rng.choice("pqr"), channel=rng.choice(["app", "web"]),
                     local_hour=rng.randrange(24))
               for _ in range(80)]
    events += [click(at(D, 23, 59))]
    rng.shuffle(events)
    return window_of(events)


def test_to_dict_from_dict_round_trip():
    w = _busy_window()
    assert w.hours and w.sessions and w.categories and w.first_order_ts is not None
    restored = FeatureWindow.from_dict(w.to_dict())
    assert restored.features() == w.features()
    assert restored.to_dict() == w.to_dict()
    via_json = FeatureWindow.from_dict(orjson.loads(orjson.dumps(w.to_dict())))
    assert via_json.features() == w.features()
    assert via_json.as_of == w.as_of
    assert via_json.to_dict() == orjson.loads(orjson.dumps(w.to_dict()))
    for t in (at(D + 1), at(D + 10, 5), at(D + 45)):
        assert via_json.features(t) == w.features(t)
        assert via_json.changes_with_time(t) == w.changes_with_time(t)
    # The restored window keeps working like the original (including the lateness rule).
    for target in (w, via_json):
        assert target.apply(click(at(D + 1, 2), "search", session_id="new"))
        assert target.apply(buy(at(D + 1, 1, 30), 555, categories=("z", "new")))
        assert not target.apply(buy(at(D - 2, 2), 444, categories=("late",)))
    assert via_json.features() == w.features()
    assert via_json.to_dict() == orjson.loads(orjson.dumps(w.to_dict()))


def test_empty_window_round_trip():
    w = FeatureWindow.from_dict(orjson.loads(orjson.dumps(FeatureWindow().to_dict())))
    assert w.as_of == 0 and w.features() == FeatureWindow().features()


# -- CustomerState: de-duplication ---------------------------------------------------------------


def remember_and_apply(s: CustomerState, ev: Event, lateness_ms: int = ALLOWED_LATENESS_MS
                       ) -> str:
    """What the pipeline does with one event: ``duplicate``, ``late`` or ``applied``."""
    if not s.remember(ev.event_id, ev.ts, ev.kind == "purchase", lateness_ms):
        return "duplicate"
    return "applied" if s.window.apply(ev, lateness_ms) else "late"


def test_remember_drops_repeated_click_ids():
    s = CustomerState()
    for eid in ("a", "b"):
        assert s.remember(eid, at(D, 1), purchase=False, lateness_ms=HOUR_MS) is True
    assert s.remember("a", at(D, 1), purchase=False, lateness_ms=HOUR_MS) is False
    assert s.remember("b", at(D, 1), purchase=False, lateness_ms=HOUR_MS) is False
    assert s.remember("c", at(D, 1), purchase=False, lateness_ms=HOUR_MS) is True
    assert s.recent.keys() == [id_key(x) for x in "abc"]


def test_click_ids_are_remembered_within_the_lateness_only():
    s = CustomerState()
    first = click(at(D, 10))
    assert remember_and_apply(s, first) == "applied"
    assert remember_and_apply(s, click(at(D, 11))) == "applied"
    # One hour after it: still within the lateness of the newest click, a duplicate.
    assert remember_and_apply(s, first) == "duplicate"
    assert s.remember(first.event_id, first.ts, False, HOUR_MS) is False
    newer = click(at(D, 11) + 1)
    assert remember_and_apply(s, newer) == "applied"
    # Now older than the lateness: forgotten, and a copy is late (it changes nothing).
    assert all(t >= at(D, 11) + 1 - HOUR_MS for t in s.recent.times())
    assert id_key(first.event_id) not in s.recent
    before = s.window.to_dict()
    assert remember_and_apply(s, first) == "late"
    assert s.window.to_dict() == before
    # A late click is not remembered at all.
    assert id_key(first.event_id) not in s.recent
    assert remember_and_apply(s, newer) == "duplicate"


def test_remember_horizon_uses_the_newer_of_as_of_and_ts():
    s = CustomerState()
    assert s.remember("x", at(D, 10), purchase=False, lateness_ms=HOUR_MS)
    # The window never saw these events (as_of 0): the horizon is the event's own ts.
    assert s.remember("y", at(D, 12), purchase=False, lateness_ms=HOUR_MS)
    assert s.recent.keys() == [id_key("y")]  # x is older than 11:00
    assert s.remember("x", at(D, 10), purchase=False, lateness_ms=HOUR_MS) is True
    assert s.remember("y", at(D, 12), purchase=False, lateness_ms=HOUR_MS) is False


def test_purchase_ids_are_remembered_regardless_of_time():
    s = CustomerState()
    order = buy(at(D, 10), 1234)
    assert remember_and_apply(s, order) == "applied"
    for day in range(1, 200, 7):
        assert remember_and_apply(s, click(at(D + day))) == "applied"
    assert remember_and_apply(s, order) == "duplicate"
    f = s.window.features()
    assert f["orders_total"] == 1 and f["revenue_total"] == 12.34
    newer = buy(at(D + 150), 100)
    assert remember_and_apply(s, newer) == "applied"
    # A late purchase is remembered too: a second copy does not count twice.
    late = buy(at(D, 20), 500)
    assert remember_and_apply(s, late) == "late"
    assert remember_and_apply(s, late) == "duplicate"
    assert remember_and_apply(s, order) == "duplicate"
    assert s.window.features()["orders_total"] == 3
    assert s.orders.keys() == [id_key(e.event_id) for e in (order, newer, late)]
    # Purchases are not kept among the recent (click) ids.
    assert not {id_key(e.event_id) for e in (order, newer, late)} & set(s.recent.keys())


def test_click_memory_follows_the_click_stream_only():
    s = CustomerState()
    first = click(at(D, 10))
    assert remember_and_apply(s, first) == "applied"
    # A purchase much later does not make the click's copy late nor forget it.
    assert remember_and_apply(s, buy(at(D + 5))) == "applied"
    assert remember_and_apply(s, first) == "duplicate"
    assert remember_and_apply(s, click(at(D, 10, 30))) == "applied"
    assert remember_and_apply(s, first) == "duplicate"
    assert s.window.features()["views_7d"] == 2


def test_remember_keeps_a_bounded_memory_of_purchases():
    s = CustomerState()
    assert s.remember("first", at(D), purchase=True, lateness_ms=HOUR_MS)
    for i in range(MAX_ORDER_IDS - 1):
        assert s.remember(f"o-{i}", at(D) + i, purchase=True, lateness_ms=HOUR_MS)
    assert len(s.orders) == MAX_ORDER_IDS
    assert s.remember("first", at(D), purchase=True, lateness_ms=HOUR_MS) is False
    assert s.remember("one-more", at(D), purchase=True, lateness_ms=HOUR_MS)
    assert len(s.orders) == MAX_ORDER_IDS
    assert id_key("first") not in s.orders  # the oldest purchase id is forgotten
    assert s.remember("o-0", at(D), purchase=True, lateness_ms=HOUR_MS) is False


def test_remember_keeps_a_bounded_memory_of_recent_ids():
    s = CustomerState()
    ts = at(D, 12)
    assert s.remember("first", ts, purchase=False, lateness_ms=HOUR_MS)
    for i in range(MAX_RECENT_IDS - 1):
        assert s.remember(f"id-{i}", ts, purchase=False, lateness_ms=HOUR_MS)
    assert len(s.recent) == MAX_RECENT_IDS
    assert s.remember("first", ts, purchase=False, lateness_ms=HOUR_MS) is False
    assert s.remember("one-more", ts, purchase=False, lateness_ms=HOUR_MS)
    assert len(s.recent) == MAX_RECENT_IDS
    assert s.remember("first", ts, purchase=False, lateness_ms=HOUR_MS) is True  # forgotten


# -- CustomerState: profile, clock, bytes -----------------------------------------------------


def test_update_profile_last_writer_wins():
    s = CustomerState()
    assert s.update_profile({"age": 30, "region": "north"}, at(D, 10)) is True
    assert s.profile == {"age": 30, "region": "north"} and s.profile_ts == at(D, 10)
    # Absent fields are kept, present ones replaced.
    assert s.update_profile({"income": 100.5, "age": 31}, at(D, 12)) is True
    assert s.profile == {"age": 31, "region": "north", "income": 100.5}
    # An older update is ignored as a whole.
    assert s.update_profile({"age": 20, "city": "x"}, at(D, 11)) is False
    assert s.profile == {"age": 31, "region": "north", "income": 100.5}
    assert s.profile_ts == at(D, 12)
    # The same time applies (arrival order decides); null removes a field.
    assert s.update_profile({"region": None, "gender": "f"}, at(D, 12)) is True
    assert s.profile == {"age": 31, "income": 100.5, "gender": "f"}
    assert s.update_profile({"city": None}, at(D, 13)) is True  # removing a missing field
    assert s.profile == {"age": 31, "income": 100.5, "gender": "f"}
    assert s.profile_ts == at(D, 13)
    # Profile updates do not touch the feature window.
    assert s.window.as_of == 0 and s.clock == 0


def test_clock_is_the_later_of_as_of_and_evaluated_at():
    s = CustomerState()
    assert s.clock == 0
    s.window.apply(click(at(D, 5)))
    assert s.clock == at(D, 5)
    s.evaluated_at = at(D + 3)
    assert s.clock == at(D + 3)
    s.window.apply(click(at(D + 1)), LONG)
    assert s.clock == at(D + 3)
    s.window.apply(click(at(D + 4)))
    assert s.clock == at(D + 4)


def test_customer_state_bytes_round_trip():
    s = CustomerState()
    s.window = _busy_window()
    s.update_profile({"age": 41, "region": "north", "income": 52000.5}, at(D, 2))
    s.segment = 7
    s.model_version = 12
    s.sampled_at = at(D, 3)
    s.evaluated_at = at(D + 2, 1)
    for i in range(5):
        assert s.remember(f"evt-{i}", at(D, 23, 30 + i), False, HOUR_MS)
        assert s.remember(f"order-{i}", at(D - 1), True, HOUR_MS)
    assert s.window.newest_click == at(D, 23, 59)
    data = s.to_bytes()
    assert isinstance(data, bytes)
    r = CustomerState.from_bytes(data)
    assert r.window.features() == s.window.features()
    assert r.window.features(r.clock) == s.window.features(s.clock)
    assert r.profile == s.profile and r.profile_ts == at(D, 2)
    assert r.segment == 7 and r.model_version == 12 and r.sampled_at == at(D, 3)
    assert r.evaluated_at == at(D + 2, 1) and r.clock == s.clock == at(D + 2, 1)
    assert r.recent.entries == s.recent.entries and len(r.recent) == 5
    assert r.orders.entries == s.orders.entries and len(r.orders) == 5
    assert r.to_bytes() == data
    # The restored de-duplication memory and profile rules work as before.
    assert r.remember("evt-3", at(D, 23, 33), False, HOUR_MS) is False
    assert r.remember("order-2", at(D - 1), True, HOUR_MS) is False
    assert r.remember("evt-99", at(D, 23, 59), False, HOUR_MS) is True
    assert r.update_profile({"age": 1}, at(D, 1)) is False
    assert r.to_bytes() != data
    assert CustomerState.from_bytes(CustomerState.from_bytes(data).to_bytes()).to_bytes() == data


def test_fresh_customer_state_round_trip():
    r = CustomerState.from_bytes(CustomerState().to_bytes())
    assert r.segment is None and r.profile == {} and len(r.recent) == 0 and r.model_version == 0
    assert len(r.orders) == 0 and r.profile_ts == 0 and r.evaluated_at == 0 and r.clock == 0
    assert r.window.features() == FeatureWindow().features()


# -- brute force comparison -------------------------------------------------------------------

NIGHT = {22, 23, 0, 1, 2, 3, 4, 5}


def brute_force(arrivals: list[Event], lateness_ms: int, at_ms: int | None = None
                ) -> tuple[dict, list[bool]]:
    """Features recomputed from the raw events in arrival order, straight from the
    documented definitions; and whether each event was on time (not late)."""
    newest = {"click": 0, "purchase": 0}  # per stream, of the events on time
    accepted: list[Event] = []
    on_time: list[bool] = []
    all_buys = [e for e in arrivals if e.kind == "purchase"]
    for e in arrivals:
        ok = e.ts >= newest[e.kind] - lateness_ms
        on_time.append(ok)
        if ok:
            accepted.append(e)
            newest[e.kind] = max(newest[e.kind], e.ts)
    as_of = max(newest.values())
    now = as_of if at_ms is None or at_ms < as_of else at_ms
    today = now // DAY_MS

    def within(e: Event, n_days: int) -> bool:
        return today - e.ts // DAY_MS < n_days

    buys = [e for e in accepted if e.kind == "purchase"]
    clicks = [e for e in accepted if e.kind == "click"]
    b30 = [e for e in buys if within(e, 30)]
    b90 = [e for e in buys if within(e, 90)]
    b7 = [e for e in buys if within(e, 7)]
    c7 = [e for e in clicks if within(e, 7)]
    all30 = [e for e in accepted if within(e, 30)]
    first_hour = now // HOUR_MS - 23
    views = {"page_view", "product_view"}
    adds = sum(1 for e in c7 if e.event_type == "add_to_cart")
    items = sum(e.quantity for e in b7)
    last = max((e.ts for e in all_buys), default=None)
    return {
        "orders_total": len(all_buys),
        "revenue_total_cents": sum(e.amount_cents for e in all_buys),
        "first_order_ts": min((e.ts for e in all_buys), default=None),
        "last_order_ts": last,
        "orders_30d": len(b30),
        "revenue_30d_cents": sum(e.amount_cents for e in b30),
        "orders_90d": len(b90),
        "revenue_90d_cents": sum(e.amount_cents for e in b90),
        "avg_order_value_90d": (
            sum(e.amount_cents for e in b90) / 100 / len(b90) if b90 else 0.0
        ),
        "days_since_last_order": None if last is None else (now - last) / DAY_MS,
        "discount_share_90d": (
            sum(1 for e in b90 if e.discount_cents > 0) / len(b90) if b90 else 0.0
        ),
        "distinct_categories_90d": len({c for e in b90 for c in e.categories}),
        "views_24h": sum(1 for e in clicks
                         if e.event_type in views and e.ts // HOUR_MS >= first_hour),
        "views_7d": sum(1 for e in c7 if e.event_type in views),
        "sessions_7d": len({e.session_id for e in c7 if e.session_id}),
        "searches_7d": sum(1 for e in c7 if e.event_type == "search"),
        "add_to_cart_7d": adds,
        "cart_abandon_rate_7d": max(0, adds - items) / adds if adds else 0.0,
        "night_share_30d": (
            sum(1 for e in all30 if e.local_hour in NIGHT) / len(all30) if all30 else 0.0
        ),
        "app_share_30d": (
            sum(1 for e in all30 if e.channel == "app") / len(all30) if all30 else 0.0
        ),
    }, on_time


def random_events(rng: random.Random, n: int) -> list[Event]:
    """``n`` events in arrival order: mostly in time order, some delayed a little (within
    an hour), some a lot (days, months), ending near day ``D``."""
    end = D * DAY_MS + rng.randrange(DAY_MS)
    events = []
    for _ in range(n):
        r = rng.random()
        if r < 0.45:  # recent: last 48 hours
            ts = end - rng.randrange(48 * HOUR_MS)
        elif r < 0.9:  # inside the horizon, near the window edges too
            ts = end - rng.randrange(95 * DAY_MS)
        else:  # far in the past
            ts = end - rng.randrange(400 * DAY_MS)
        edge = rng.random()
        if edge < 0.1:  # exactly at, or just before, a UTC midnight
            ts = ts // DAY_MS * DAY_MS - rng.choice([0, 1])
        elif edge < 0.2:  # exactly at, or just before, an hour
            ts = ts // HOUR_MS * HOUR_MS - rng.choice([0, 1])
        local_hour = rng.randrange(24)
        channel = rng.choice(["app", "web", "email", None])
        if rng.random() < 0.25:
            n_cat = rng.randrange(4)
            ev = buy(
                ts, rng.randrange(0, 2_000_000), discount=rng.choice([0, 0, 1, 250]),
                quantity=rng.randrange(0, 5),
                categories=tuple(sorted(rng.sample([f"cat{i}" for i in range(20)], n_cat))),
                local_hour=local_hour, channel=channel,
            )
        else:
            ev = click(
                ts, rng.choice(["page_view", "product_view", "search", "add_to_cart",
                                "remove_from_cart", "checkout_start"]),
                local_hour=local_hour, channel=channel,
                session_id=rng.choice([None, "", *(f"s{i}" for i in range(40))]),
                category=rng.choice([None, "cat1", "other"]),
            )
        delay = rng.choice([0, 0, 0, rng.randrange(HOUR_MS), rng.randrange(HOUR_MS),
                            rng.randrange(2 * HOUR_MS), rng.randrange(4 * DAY_MS),
                            rng.randrange(200 * DAY_MS)])
        events.append((ts + delay, ev))
    events.sort(key=lambda pair: pair[0])
    return [ev for _, ev in events]


def eval_times(rng: random.Random, as_of: int) -> list[int | None]:
    """``None``, earlier than ``as_of``, and later times, on and around day/hour edges."""
    later = [as_of + rng.randrange(DAY_MS), as_of + rng.randrange(120 * DAY_MS)]
    for days in (1, 7, 30, 89, 90):
        midnight = (as_of // DAY_MS + days) * DAY_MS
        later += [midnight - 1, midnight]
    hour = (as_of // HOUR_MS + rng.randrange(1, 30)) * HOUR_MS
    return [None, as_of, as_of - DAY_MS, *later, hour - 1, hour]


@pytest.mark.parametrize("lateness_ms", [ALLOWED_LATENESS_MS, 3 * DAY_MS, LONG],
                         ids=["1h", "3d", "90d"])
@pytest.mark.parametrize("seed", range(6))
def test_feature_window_matches_brute_force(seed, lateness_ms):
    rng = random.Random(seed)
    events = random_events(rng, rng.randrange(200, 400))
    _, on_time = brute_force(events, lateness_ms)
    assert sum(on_time) > 0 and (lateness_ms == LONG or not all(on_time))
    w = FeatureWindow()
    for i, ev in enumerate(events):
        assert w.apply(ev, lateness_ms) is on_time[i], i
        if i % 50 == 49 or i == len(events) - 1:
            _check(w.features(), brute_force(events[: i + 1], lateness_ms)[0])
            _check_memory_bounds(w)
    # The window round-trips through JSON and evaluates the same afterwards.
    restored = FeatureWindow.from_dict(orjson.loads(orjson.dumps(w.to_dict())))
    for t in eval_times(rng, w.as_of):
        want = brute_force(events, lateness_ms, t)[0]
        _check(w.features(t), want)
        _check(restored.features(t), want)


@pytest.mark.parametrize("seed", range(4))
def test_customer_state_with_duplicates_matches_brute_force(seed):
    """Redelivered copies (a little or a lot later) count once, through a byte round trip
    of the state after every event, as the pipeline stores it."""
    rng = random.Random(100 + seed)
    events = random_events(rng, 300)
    arrivals = events[:]
    for _ in range(150):
        i = rng.randrange(len(events))
        arrivals.insert(min(len(arrivals), i + rng.choice([1, 3, 20, 200])), events[i])
    stored = CustomerState().to_bytes()
    outcomes = []
    for ev in arrivals:
        s = CustomerState.from_bytes(stored)
        outcomes.append(remember_and_apply(s, ev))
        stored = s.to_bytes()
    state = CustomerState.from_bytes(stored)
    # The first copy of each event id decides; later copies are duplicates or late.
    seen: set[str] = set()
    first_copies = []
    for ev in arrivals:
        if ev.event_id not in seen:
            seen.add(ev.event_id)
            first_copies.append(ev)
    assert len(first_copies) == len(events)
    want, on_time = brute_force(first_copies, ALLOWED_LATENESS_MS)
    _check(state.window.features(), want)
    assert outcomes.count("duplicate") >= 20
    assert outcomes.count("applied") == sum(on_time)
    # Every purchase is remembered; clicks only within the lateness of the newest click.
    assert len(state.orders) == sum(1 for e in events if e.kind == "purchase")
    horizon = state.window.newest_click - ALLOWED_LATENESS_MS
    assert all(t >= horizon for t in state.recent.times())
    assert len(state.recent) <= MAX_RECENT_IDS


def _check_memory_bounds(w: FeatureWindow) -> None:
    """At most 90 day buckets and 24 hour buckets (docs/features.md: per-customer memory)."""
    today, hour = w.as_of // DAY_MS, w.as_of // HOUR_MS
    assert all(today - RETENTION_DAYS < d <= today for d in w.days), sorted(w.days)[:3]
    assert all(hour - 24 < h <= hour for h in w.hours), sorted(w.hours)[:3]


def _check(got: dict, want: dict) -> None:
    assert set(got) == set(FEATURE_NAMES)
    for name in ("revenue_total", "revenue_30d", "revenue_90d"):
        cents = want[f"{name}_cents"]
        assert round(got[name] * 100) == cents, name
        assert got[name] == cents / 100, name
    for name, value in want.items():
        if name.endswith("_cents"):
            continue
        if isinstance(value, float):
            assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name
        else:
            assert got[name] == value, name
