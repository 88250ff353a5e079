"""Tests of the retail workload of stream_app.tools.generator (RetailShop, make_shop) and of
``stream-app generate --profile``; pure: no broker (the sender is replaced).

The distribution checks are on 5,000 customers of one seed: loose bounds on what any
realistic retail history shows (half one-time buyers, a heavy tail of repeat buyers,
long-tailed order values, customers who lapsed), not the generator's exact figures.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from itertools import pairwise

import orjson
import pytest
from click.testing import CliRunner

from stream_app.core.validation import Event, EventDecoder
from stream_app.tools.generator import (
    PROFILES,
    RETAIL_TYPES,
    GeneratedEvent,
    RetailShop,
    SyntheticShop,
    make_shop,
)

START = 1_704_067_200_000  # 2024-01-01T00:00:00Z
DAY = 86_400_000
CUSTOMERS = 5_000


def as_tuple(e: GeneratedEvent) -> tuple:
    return e.kind, e.key, e.value, e.planted_type, e.ts


@pytest.fixture(scope="module")
def purchases() -> tuple[RetailShop, list[GeneratedEvent]]:
    shop = RetailShop(CUSTOMERS, seed=7, start_ms=START)
    return shop, list(shop.events())


@pytest.fixture(scope="module")
def mixed() -> tuple[RetailShop, list[GeneratedEvent]]:
    shop = RetailShop(1_000, seed=7, start_ms=START, clickstream=True, profiles=True)
    return shop, list(shop.events())


def orders_by_customer(events: list[GeneratedEvent]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        if e.kind == "purchase":
            doc = orjson.loads(e.value)
            out[doc["customer_id"]].append(doc)
    return out


def test_same_seed_same_events_other_seed_others():
    def run(seed: int) -> list[tuple]:
        shop = RetailShop(300, seed=seed, start_ms=START, clickstream=True, profiles=True)
        return [as_tuple(e) for e in shop.events()]

    first = run(11)
    assert first == run(11)
    assert first != run(12)
    assert RetailShop(3, seed=11).customers == ["r11-0000000", "r11-0000001", "r11-0000002"]


def test_time_order_span_and_total(purchases, mixed):
    for shop, events in (purchases, mixed):
        assert len(events) == shop.total_events
        stamps = [e.ts for e in events]
        assert stamps == sorted(stamps)
        assert shop.start_ms <= stamps[0] and stamps[-1] <= shop.end_ms
        assert shop.end_ms - shop.start_ms == 540 * DAY
    shop, events = purchases
    assert events[-1].ts - events[0].ts > 530 * DAY  # the whole history is used
    assert [as_tuple(e) for e in shop.events(100)] == [as_tuple(e) for e in events[:100]]
    assert list(shop.events(0)) == []


def test_half_buy_once_and_a_heavy_tail(purchases):
    shop, events = purchases
    orders = orders_by_customer(events)
    counts = [len(orders[c]) for c in shop.customers]
    assert min(counts) >= 1  # every customer buys
    assert 0.4 <= sum(n == 1 for n in counts) / CUSTOMERS <= 0.6
    assert max(counts) >= 20
    assert statistics.mean(counts) > 1.5
    assert counts == shop.orders
    # The lifecycle class follows the number of orders.
    classes = Counter(shop.planted.values())
    assert set(classes) == set(RETAIL_TYPES)
    assert classes["one_time"] > classes["occasional"] > classes["regular"] > classes["loyal"]
    for c, n in zip(shop.customers, counts):
        assert (shop.planted[c] == "one_time") == (n == 1)
        assert (shop.planted[c] == "loyal") == (n >= 15)
    assert {e.planted_type for e in events} == set(RETAIL_TYPES)


def test_gaps_are_long_and_customers_lapse(purchases):
    shop, events = purchases
    first: dict[bytes, int] = {}
    last: dict[bytes, int] = {}
    medians = []
    stamps: dict[bytes, list[int]] = defaultdict(list)
    for e in events:
        stamps[e.key].append(e.ts)
    for key, ts in stamps.items():
        first[key], last[key] = ts[0], ts[-1]
        if len(ts) > 1:
            medians.append(statistics.median(b - a for a, b in pairwise(ts)))
    lapsed = sum(shop.end_ms - t > 180 * DAY for t in last.values()) / CUSTOMERS
    assert lapsed >= 0.3
    assert 7 * DAY < statistics.median(medians) < 120 * DAY  # weeks to months
    # First purchases are spread over the history: every quarter has some.
    quarters = Counter((t - shop.start_ms) * 4 // (shop.end_ms - shop.start_ms)
                       for t in first.values())
    assert all(quarters[q] > CUSTOMERS / 10 for q in range(4))


def test_order_values_are_long_tailed(purchases):
    _, events = purchases
    docs = [d for ds in orders_by_customer(events).values() for d in ds]
    amounts = [d["amount"] for d in docs]
    median = statistics.median(amounts)
    assert median < statistics.mean(amounts)
    assert max(amounts) > 10 * median
    assert all(a > 0 for a in amounts)
    discounted = sum(d["discount"] > 0 for d in docs) / len(docs)
    assert 0.05 < discounted < 0.5
    assert {len(d["items"]) for d in docs} == {1, 2, 3, 4}
    for d in docs:
        assert d["amount"] == pytest.approx(sum(i["price"] for i in d["items"]) - d["discount"],
                                            abs=0.011)
    categories = defaultdict(set)
    for d in docs:
        categories[d["customer_id"]].update(i["category"] for i in d["items"])
    assert max(len(c) for c in categories.values()) <= 4


def test_purchase_only_has_no_clicks_nor_profiles(purchases):
    _, events = purchases
    assert {e.kind for e in events} == {"purchase"}
    shop = RetailShop(200, seed=5, start_ms=START, profiles=True)
    events = list(shop)
    assert Counter(e.kind for e in events)["profile"] == 200
    seen: set[bytes] = set()
    for e in events:  # a customer's profile comes before its first order
        assert (e.kind == "profile") == (e.key not in seen)
        seen.add(e.key)


def test_mixed_has_clicks_around_the_same_orders(mixed):
    shop, events = mixed
    kinds = Counter(e.kind for e in events)
    assert kinds["click"] > 3 * kinds["purchase"] > 0
    assert kinds["profile"] == len(shop.customers)
    clicks = [orjson.loads(e.value) for e in events if e.kind == "click"]
    assert {c["event_type"] for c in clicks} >= {"page_view", "product_view", "search",
                                                "add_to_cart"}
    assert {c["channel"] for c in clicks} == {"web", "app", "email"}
    assert all(c["session_id"].startswith(c["customer_id"] + "-s") for c in clicks)
    hours = Counter(int(c["ts"][11:13]) for c in clicks)
    day = sum(hours[h] for h in range(8, 23)) / len(clicks)
    assert 0.75 < day < 0.99  # mostly by day, some at night
    # The same orders as without clicks (up to the time the session took).
    plain = RetailShop(1_000, seed=7, start_ms=START)
    assert plain.orders == shop.orders and plain.planted == shop.planted
    with_clicks = orders_by_customer(events)
    without = orders_by_customer(list(plain.events()))
    assert {c: [d["amount"] for d in ds] for c, ds in with_clicks.items()} == {
        c: [d["amount"] for d in ds] for c, ds in without.items()}


def test_every_event_is_valid_for_the_worker(mixed):
    decoder = EventDecoder(1_000_000, 86_400)
    ending_now = RetailShop(300, seed=3, clickstream=True, profiles=True)  # default: ends now
    assert abs(ending_now.end_ms - time.time() * 1000) < 60_000
    for events in (mixed[1], list(ending_now.events())):
        for e in events:
            decoded = decoder.decode_all(e.kind, e.key, e.value, "pos")
            assert len(decoded) == 1 and isinstance(decoded[0], Event), (decoded, e.value)
            assert decoded[0].ts == e.ts


def test_make_shop_profiles():
    assert PROFILES == ("planted", "retail", "retail-mixed")
    planted = make_shop("planted", 8, seed=1, start_ms=START, step_ms=1000)
    assert isinstance(planted, SyntheticShop) and planted.step_ms == 1000
    retail = make_shop("retail", 20, seed=1, start_ms=START)
    assert isinstance(retail, RetailShop) and not retail.clickstream
    assert retail.start_ms == START
    mixed = make_shop("retail-mixed", 20, seed=1, start_ms=START, span_days=90)
    assert isinstance(mixed, RetailShop) and mixed.clickstream
    assert mixed.end_ms == START + 90 * DAY
    with pytest.raises(ValueError, match="planted, retail, retail-mixed"):
        make_shop("retial", 20, seed=1, start_ms=START)


def test_generate_command_sends_the_retail_history_ending_now(monkeypatch):
    from stream_app.tools import generator
    from stream_app.tools.cli import main

    sent: list[tuple[list[GeneratedEvent], float | None]] = []

    async def fake_produce(servers, topics, events, rate, on_sent=None):
        sent.append((list(events), rate))
        return len(sent[-1][0])

    monkeypatch.setattr(generator, "produce", fake_produce)
    result = CliRunner().invoke(main, ["generate", "--profile", "retail-mixed",
                                       "--customers", "40", "--max-speed"])
    assert result.exit_code == 0, result.output
    events, rate = sent[0]
    assert rate is None
    assert f"sent {len(events)} messages for 40 customers" in result.output
    now = time.time() * 1000
    assert {e.kind for e in events} == {"click", "purchase"}
    assert now - 540 * DAY - 60_000 < events[0].ts and events[-1].ts <= now
    result = CliRunner().invoke(main, ["generate", "--profile", "retail", "--customers", "40",
                                       "--rate", "500"])
    assert result.exit_code == 0, result.output
    assert sent[1][1] == 500 and {e.kind for e in sent[1][0]} == {"purchase"}
    assert CliRunner().invoke(main, ["generate", "--profile", "nope"]).exit_code == 2
