"""Tests of stream_app.features.FeatureWindow and stream_app.state.CustomerState.

Window semantics under test (module docstring of stream_app.features): features are taken
at ``as_of``, the newest event time seen; a window of N days covers the UTC day of
``as_of`` and the N-1 days before it; ``views_24h`` covers the UTC hour of ``as_of`` and
the 23 hours before it; events older than the 90-day horizon count only in the lifetime
totals.
"""

from __future__ import annotations

import itertools
import random

import orjson
import pytest

from stream_app.features import DAY_MS, FEATURE_NAMES, HOUR_MS, FeatureWindow
from stream_app.state import RECENT_EVENT_IDS, CustomerState
from stream_app.validation import Event

D = 20_000  # a UTC day number (2024-10-04)
MIN_MS = 60_000
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


def window_of(events) -> FeatureWindow:
    w = FeatureWindow()
    for ev in events:
        w.apply(ev)
    return w


def features_of(events) -> dict:
    return window_of(events).features()


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


def test_as_of_is_newest_event_time():
    w = window_of([click(at(D, 5)), click(at(D, 9)), click(at(D, 7))])
    assert w.as_of == at(D, 9)


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


def test_late_view_inside_24h_is_counted_and_outside_is_not():
    w = window_of([click(at(D, 12), "search")])
    w.apply(click(at(D - 1, 13, 0)))   # 23 hours before hour 12: inside
    w.apply(click(at(D - 1, 12, 30)))  # 24 hours before: outside
    f = w.features()
    assert f["views_24h"] == 1
    assert f["views_7d"] == 2


# -- out of order and horizon ---------------------------------------------------------------


def test_out_of_order_event_lands_in_its_own_day():
    w = window_of([click(at(D, 12))])
    assert w.apply(buy(at(D - 40, 8), 250))  # inside 90 days, outside 30
    assert w.apply(buy(at(D - 3, 8), 125))
    f = w.features()
    assert f["orders_30d"] == 1 and f["revenue_30d"] == 1.25
    assert f["orders_90d"] == 2 and f["revenue_90d"] == 3.75


def test_event_older_than_horizon_counts_only_in_lifetime_totals():
    w = window_of([buy(at(D, 12), 1000, categories=("a",))])
    before = w.features()
    late = buy(at(D - 90, 12), 700, discount=100, categories=("b",), local_hour=23,
               channel="app")
    assert w.apply(late) is False
    f = w.features()
    assert f["orders_total"] == 2 and f["revenue_total"] == 17.00
    assert f["first_order_ts"] == at(D - 90, 12)
    assert f["last_order_ts"] == at(D, 12)
    for name in FEATURE_NAMES:
        if name not in ("orders_total", "revenue_total", "first_order_ts"):
            assert f[name] == before[name], name
    old_click = click(at(D - 200), "search", session_id="s", channel="app")
    assert w.apply(old_click) is False
    assert w.features() == f


def test_apply_returns_true_inside_horizon():
    w = window_of([click(at(D, 12))])
    assert w.apply(click(at(D - 89, 0), "search")) is True
    assert w.apply(buy(at(D - 89, 0))) is True


def test_shuffled_arrival_gives_same_features():
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
    for _ in range(5):
        shuffled = events[:]
        rng.shuffle(shuffled)
        assert features_of(shuffled) == expected
    assert features_of(list(reversed(ordered))) == expected


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
    # A late purchase does not make the last order older.
    w.apply(buy(at(D - 1, 0)))
    assert w.features()["days_since_last_order"] == 2.5
    assert w.features()["last_order_ts"] == at(D, 0)
    assert w.features()["first_order_ts"] == at(D - 3, 0)
    assert features_of([click(at(D))])["days_since_last_order"] is None


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
    copy = FeatureWindow.from_dict(w.to_dict())
    assert copy.features() == w.features()
    via_json = FeatureWindow.from_dict(orjson.loads(orjson.dumps(w.to_dict())))
    assert via_json.features() == w.features()
    assert via_json.to_dict() == orjson.loads(orjson.dumps(w.to_dict()))
    # The restored window keeps working like the original.
    for target in (w, via_json):
        target.apply(click(at(D + 1, 2), "search", session_id="new"))
        target.apply(buy(at(D - 2, 2), 555, categories=("z", "new")))
    assert via_json.features() == w.features()


# -- CustomerState ----------------------------------------------------------------------------


def test_remember_drops_repeated_event_ids():
    s = CustomerState()
    assert s.remember("a") is True
    assert s.remember("b") is True
    assert s.remember("a") is False
    assert s.remember("b") is False
    assert s.remember("c") is True


def test_remember_keeps_a_bounded_memory():
    s = CustomerState()
    assert s.remember("first")
    for i in range(RECENT_EVENT_IDS - 1):
        assert s.remember(f"id-{i}")
    assert s.remember("first") is False  # still among the last RECENT_EVENT_IDS ids
    assert s.remember("one-more")
    assert s.remember("first") is True  # forgotten
    assert len(s.recent) <= RECENT_EVENT_IDS


def test_customer_state_bytes_round_trip():
    s = CustomerState()
    s.window = _busy_window()
    s.profile = {"age": 41, "region": "north", "income": 52000.5}
    s.segment = 7
    s.model_version = 12
    s.sampled_at = at(D, 3)
    for i in range(5):
        s.remember(f"evt-{i}")
    data = s.to_bytes()
    assert isinstance(data, bytes)
    r = CustomerState.from_bytes(data)
    assert r.window.features() == s.window.features()
    assert r.profile == s.profile
    assert r.segment == 7 and r.model_version == 12 and r.sampled_at == at(D, 3)
    assert r.recent == s.recent
    assert r.remember("evt-3") is False
    assert r.remember("evt-99") is True
    assert r.to_bytes() != data
    assert CustomerState.from_bytes(CustomerState.from_bytes(data).to_bytes()).to_bytes() == data


def test_fresh_customer_state_round_trip():
    r = CustomerState.from_bytes(CustomerState().to_bytes())
    assert r.segment is None and r.profile == {} and r.recent == [] and r.model_version == 0
    assert r.window.features() == FeatureWindow().features()


# -- brute force comparison -------------------------------------------------------------------

NIGHT = {22, 23, 0, 1, 2, 3, 4, 5}


def brute_force(events: list[Event]) -> dict:
    """Features recomputed from the raw events, straight from the documented definitions."""
    as_of = max(e.ts for e in events)
    today = as_of // DAY_MS

    def within(e: Event, n_days: int) -> bool:
        return today - e.ts // DAY_MS < n_days

    buys = [e for e in events if e.kind == "purchase"]
    clicks = [e for e in events if e.kind == "click"]
    b30 = [e for e in buys if within(e, 30)]
    b90 = [e for e in buys if within(e, 90)]
    b7 = [e for e in buys if within(e, 7)]
    c7 = [e for e in clicks if within(e, 7)]
    all30 = [e for e in events if within(e, 30)]
    first_hour = as_of // HOUR_MS - 23
    views = {"page_view", "product_view"}
    adds = sum(1 for e in c7 if e.event_type == "add_to_cart")
    items = sum(e.quantity for e in b7)
    last = max((e.ts for e in buys), default=None)
    return {
        "orders_total": len(buys),
        "revenue_total_cents": sum(e.amount_cents for e in buys),
        "first_order_ts": min((e.ts for e in buys), default=None),
        "last_order_ts": last,
        "orders_30d": len(b30),
        "revenue_30d_cents": sum(e.amount_cents for e in b30),
        "orders_90d": len(b90),
        "revenue_90d_cents": sum(e.amount_cents for e in b90),
        "avg_order_value_90d": (
            sum(e.amount_cents for e in b90) / 100 / len(b90) if b90 else 0.0
        ),
        "days_since_last_order": None if last is None else (as_of - last) / DAY_MS,
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
    }


def random_events(rng: random.Random, n: int) -> list[Event]:
    end = D * DAY_MS + rng.randrange(DAY_MS)
    events = []
    for _ in range(n):
        r = rng.random()
        if r < 0.5:  # recent: last 48 hours
            ts = end - rng.randrange(48 * HOUR_MS)
        elif r < 0.9:  # inside the horizon, near the window edges too
            ts = end - rng.randrange(95 * DAY_MS)
        else:  # far in the past
            ts = end - rng.randrange(400 * DAY_MS)
        local_hour = rng.randrange(24)
        channel = rng.choice(["app", "web", "email", None])
        if rng.random() < 0.25:
            n_cat = rng.randrange(4)
            events.append(buy(
                ts, rng.randrange(0, 2_000_000), discount=rng.choice([0, 0, 1, 250]),
                quantity=rng.randrange(0, 5),
                categories=tuple(sorted(rng.sample([f"cat{i}" for i in range(20)], n_cat))),
                local_hour=local_hour, channel=channel,
            ))
        else:
            events.append(click(
                ts, rng.choice(["page_view", "product_view", "search", "add_to_cart",
                                "remove_from_cart", "checkout_start"]),
                local_hour=local_hour, channel=channel,
                session_id=rng.choice([None, *(f"s{i}" for i in range(40))]),
                category=rng.choice([None, "cat1", "other"]),
            ))
    # The newest event may come anywhere in the stream (out-of-order arrival).
    rng.shuffle(events)
    return events


@pytest.mark.parametrize("seed", range(8))
def test_feature_window_matches_brute_force(seed):
    rng = random.Random(seed)
    events = random_events(rng, rng.randrange(200, 400))
    w = FeatureWindow()
    for i, ev in enumerate(events):
        in_horizon = ev.ts // DAY_MS > max(e.ts for e in events[: i + 1]) // DAY_MS - 90
        assert w.apply(ev) is in_horizon
        if i % 50 == 49 or i == len(events) - 1:
            _check(w.features(), brute_force(events[: i + 1]))


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
