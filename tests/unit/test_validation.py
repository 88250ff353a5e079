"""Tests of stream_app.core.validation: EventDecoder and parse_ts.

Expected values are computed by hand from the documented semantics (epoch milliseconds in
UTC, local hour from the ISO offset, money in integer cents), not copied from the code.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_app.core.schemas import load_schema
from stream_app.core.validation import (
    MIN_TS_MS,
    REASONS,
    SCHEMA_FILES,
    SCHEMA_MAX_TS_MS,
    SCHEMA_MIN_TS_MS,
    EventDecoder,
    InvalidEvent,
    parse_ts,
)
from stream_app.worker.options import pipeline_options

# 2025-01-01T00:00:00Z: 55 years since 1970 including 14 leap days (1972..2024).
JAN_1_2025_MS = (55 * 365 + 14) * 86_400_000
assert JAN_1_2025_MS == 1_735_689_600_000
HOUR = 3_600_000
MINUTE = 60_000


@pytest.fixture(scope="module")
def decoder() -> EventDecoder:
    return EventDecoder()


def click(**overrides):
    doc = {
        "event_id": "e1",
        "customer_id": "c1",
        "ts": "2025-01-01T10:15:00Z",
        "event_type": "page_view",
    }
    doc.update(overrides)
    return doc


def purchase(**overrides):
    doc = {
        "event_id": "p1",
        "customer_id": "c1",
        "ts": "2025-01-01T10:15:00Z",
        "order_id": "o1",
        "amount": 19.99,
    }
    doc.update(overrides)
    return doc


def profile(**overrides):
    doc = {"customer_id": "c1", "ts": "2025-01-01T10:15:00Z"}
    doc.update(overrides)
    return doc


def dumps(doc) -> bytes:
    return orjson.dumps(doc)


def reject(decoder: EventDecoder, kind: str, key: bytes | None, value: bytes | None) -> str:
    with pytest.raises(InvalidEvent) as info:
        decoder.decode(kind, key, value)
    assert info.value.reason in REASONS
    assert isinstance(info.value.detail, str) and info.value.detail
    return info.value.reason


# -- parse_ts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-01-01T00:00:00Z", (JAN_1_2025_MS, 0)),
        ("2025-01-01T00:00:00+00:00", (JAN_1_2025_MS, 0)),
        # 23:30 at +02:00 is 21:30 UTC; the local hour is 23.
        ("2025-01-01T23:30:00+02:00", (JAN_1_2025_MS + 21 * HOUR + 30 * MINUTE, 23)),
        # 01:30 at -05:00 is 06:30 UTC the same day; local hour 1.
        ("2025-01-01T01:30:00-05:00", (JAN_1_2025_MS + 6 * HOUR + 30 * MINUTE, 1)),
        # 00:10 at +05:30 is 18:40 UTC of the previous day; local hour 0.
        ("2025-01-01T00:10:00+05:30", (JAN_1_2025_MS - 5 * HOUR - 20 * MINUTE, 0)),
        ("2025-01-01T00:00:00.250Z", (JAN_1_2025_MS + 250, 0)),
        # Epoch milliseconds are read as UTC.
        (JAN_1_2025_MS + 13 * HOUR + 5, (JAN_1_2025_MS + 13 * HOUR + 5, 13)),
        (JAN_1_2025_MS - 1, (JAN_1_2025_MS - 1, 23)),
        (float(JAN_1_2025_MS + 2 * HOUR), (JAN_1_2025_MS + 2 * HOUR, 2)),
    ],
)
def test_parse_ts_valid(value, expected):
    ts, hour = parse_ts(value)
    assert (ts, hour) == expected
    assert isinstance(ts, int) and isinstance(hour, int)


@pytest.mark.parametrize(
    "value",
    [
        "2025-01-01T00:00:00",  # no zone
        "2025-01-01",  # date only, no zone
        "not a timestamp",
        "2025-13-01T00:00:00Z",
        "2025-01-01T24:00:00Z",
        1.5,
        float("nan"),
        float("inf"),
        True,
        None,
        [],
    ],
)
def test_parse_ts_invalid(value):
    with pytest.raises(InvalidEvent) as info:
        parse_ts(value)
    assert info.value.reason == "invalid_timestamp"


# -- valid messages ---------------------------------------------------------------------------


def test_click_decodes_fields(decoder):
    doc = click(
        ts="2025-01-01T23:30:00+02:00", event_type="product_view", channel="  App ",
        session_id="s-9", category="shoes", product_id="p7", price=12.5,
    )
    ev = decoder.decode("click", b"c1", dumps(doc))
    assert ev.kind == "click"
    assert ev.event_id == "e1"
    assert ev.customer_id == "c1"
    assert ev.ts == JAN_1_2025_MS + 21 * HOUR + 30 * MINUTE
    assert ev.local_hour == 23
    assert ev.event_type == "product_view"
    assert ev.channel == "app"
    assert ev.session_id == "s-9"
    assert ev.categories == ("shoes",)
    assert ev.amount_cents == 0


def test_click_epoch_ms_is_utc(decoder):
    ts = JAN_1_2025_MS + 7 * HOUR + 59 * MINUTE
    ev = decoder.decode("click", b"c1", dumps(click(ts=ts, channel="WEB")))
    assert ev.ts == ts
    assert ev.local_hour == 7
    assert ev.channel == "web"


def test_click_optional_fields_absent_or_empty(decoder):
    ev = decoder.decode("click", b"c1", dumps(click()))
    assert ev.channel is None and ev.session_id is None and ev.categories == ()
    ev = decoder.decode(
        "click", b"c1", dumps(click(channel="", session_id="", category=None))
    )
    assert ev.channel is None and ev.session_id is None and ev.categories == ()


def test_click_unknown_extra_fields_ignored(decoder):
    doc = click(extra={"nested": [1, 2, {"a": None}]}, another="x" * 5000, n=10**6)
    ev = decoder.decode("click", b"c1", dumps(doc))
    assert ev.event_id == "e1" and ev.event_type == "page_view"


def test_non_ascii_customer_id_key_is_utf8(decoder):
    ev = decoder.decode("click", "cé".encode(), dumps(click(customer_id="cé")))
    assert ev.customer_id == "cé"


@pytest.mark.parametrize(
    ("amount", "cents"),
    [(19.99, 1999), (0.1, 10), (0.29, 29), (1.15, 115), (4.35, 435), (100, 10000),
     (0, 0), (9999999.99, 999999999), (10_000_000, 1_000_000_000)],
)
def test_purchase_amount_to_integer_cents(decoder, amount, cents):
    ev = decoder.decode("purchase", b"c1", dumps(purchase(amount=amount)))
    assert ev.amount_cents == cents
    assert isinstance(ev.amount_cents, int)


def test_purchase_fields_items_and_discount(decoder):
    doc = purchase(
        ts="2025-01-01T22:05:00-03:00",
        amount=59.97,
        discount=0.3,
        channel="App",
        category="gifts",
        currency="EUR",
        items=[
            {"product_id": "a", "category": "shoes", "price": 19.99, "quantity": 2},
            {"product_id": "b", "category": "books", "quantity": None},
            {"product_id": "c", "category": "shoes"},
            {"product_id": "d", "quantity": 4},
        ],
        coupon="XMAS",  # unknown field
    )
    ev = decoder.decode("purchase", b"c1", dumps(doc))
    assert ev.kind == "purchase"
    assert ev.event_type == "purchase"
    assert ev.event_id == "p1"
    # 22:05 at -03:00 is 01:05 UTC on 2025-01-02.
    assert ev.ts == JAN_1_2025_MS + 25 * HOUR + 5 * MINUTE
    assert ev.local_hour == 22
    assert ev.amount_cents == 5997
    assert ev.discount_cents == 30
    assert ev.channel == "app"
    # Distinct categories of the items and of the order (sorted).
    assert sorted(ev.categories) == ["books", "gifts", "shoes"]
    # Quantities: 2 + 1 (null) + 1 (absent) + 4.
    assert ev.quantity == 8


def test_purchase_without_items_counts_one_item(decoder):
    ev = decoder.decode("purchase", b"c1", dumps(purchase()))
    assert ev.quantity == 1
    assert ev.categories == ()
    assert ev.discount_cents == 0
    ev = decoder.decode("purchase", b"c1", dumps(purchase(items=None, discount=None)))
    assert ev.quantity == 1 and ev.discount_cents == 0


def test_purchase_items_of_quantity_zero_count_no_item(decoder):
    """As stream_app.tools.batch counts them (it counted one before: cart abandonment differed)."""
    doc = {"event_id": "p0", "customer_id": "c1", "ts": "2025-01-01T10:00:00Z",
           "order_id": "o0", "amount": 0, "items": [{"quantity": 0}, {"quantity": 0}]}
    assert decoder.decode("purchase", b"c1", dumps(doc)).quantity == 0


def test_profile_decodes_known_attributes(decoder):
    doc = profile(age=41, income=52000.5, region="North", city=None, gender="f", shoe_size=44)
    ev = decoder.decode("profile", b"c1", dumps(doc))
    assert ev.kind == "profile"
    assert ev.customer_id == "c1"
    assert ev.ts == JAN_1_2025_MS + 10 * HOUR + 15 * MINUTE
    # Explicit null is kept (it clears the stored value); unknown fields are dropped.
    assert ev.profile == {
        "age": 41, "income": 52000.5, "region": "North", "city": None, "gender": "f",
    }


def test_profile_event_id_derived_when_absent(decoder):
    a = decoder.decode("profile", b"c1", dumps(profile(age=30)))
    assert isinstance(a.event_id, str) and a.event_id
    # The same message decoded twice (a redelivery) gets the same id.
    assert decoder.decode("profile", b"c1", dumps(profile(age=30))).event_id == a.event_id
    d = decoder.decode("profile", b"c1", dumps(profile(event_id="given")))
    assert d.event_id == "given"


def test_distinct_profile_updates_with_same_ts_are_not_duplicates():
    from stream_app.config import Settings
    from stream_app.core.pipeline import CustomerPipeline
    from stream_app.core.state import CustomerState

    pipeline = CustomerPipeline(pipeline_options(Settings()))
    first = pipeline.process("profile", b"c1", dumps(profile(age=30)), None,
                             "customer-profiles", 0, 5)
    assert first.state is not None and not first.duplicate
    # A different message, at the next offset, with the same event time.
    second = pipeline.process("profile", b"c1", dumps(profile(age=31, region="north")),
                              first.state, "customer-profiles", 0, 6)
    assert not second.duplicate
    assert second.state is not None
    assert CustomerState.from_bytes(second.state).profile == {"age": 31, "region": "north"}


# -- rejections -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b'{"event_id": "e1",}', b"not json", b"{'a': 1}", b'{"a": 1} trailing'],
)
def test_invalid_json(decoder, raw):
    assert reject(decoder, "click", b"c1", raw) == "invalid_json"


def test_missing_value_is_invalid_json(decoder):
    assert reject(decoder, "click", b"c1", None) == "invalid_json"


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe\x00", b'{"event_id": "e\xff", "customer_id": "c1"}', b'"\xc3\x28"',
     b'{"event_id": "\\ud800"}'],
)
def test_invalid_utf8(decoder, raw):
    assert reject(decoder, "click", b"c1", raw) == "invalid_json"


@pytest.mark.parametrize("raw", [b"[]", b'[{"event_id": "e1"}]', b"42", b"1.5", b'"text"',
                                 b"null", b"true"])
def test_not_an_object(decoder, raw):
    assert reject(decoder, "purchase", b"c1", raw) == "not_an_object"


@pytest.mark.parametrize(
    ("kind", "doc"),
    [
        ("click", {k: v for k, v in click().items() if k != "event_id"}),
        ("click", {k: v for k, v in click().items() if k != "customer_id"}),
        ("click", {k: v for k, v in click().items() if k != "ts"}),
        ("click", {k: v for k, v in click().items() if k != "event_type"}),
        ("purchase", {k: v for k, v in purchase().items() if k != "amount"}),
        ("purchase", {k: v for k, v in purchase().items() if k != "order_id"}),
        ("profile", {"ts": "2025-01-01T10:15:00Z"}),
        ("profile", {"customer_id": "c1"}),
        ("click", {}),
    ],
)
def test_missing_required_fields(decoder, kind, doc):
    assert reject(decoder, kind, b"c1", dumps(doc)) == "schema_violation"


@pytest.mark.parametrize(
    ("kind", "doc"),
    [
        ("purchase", purchase(amount="19.99")),
        ("purchase", purchase(amount=True)),
        ("purchase", purchase(amount=None)),
        ("purchase", purchase(amount=[19.99])),
        ("purchase", purchase(discount="1")),
        ("purchase", purchase(items={"category": "x"})),
        ("purchase", purchase(items=["x"])),
        ("purchase", purchase(items=[{"quantity": "2"}])),
        ("purchase", purchase(items=[{"quantity": 1.5}])),
        ("purchase", purchase(items=[{"quantity": True}])),
        ("purchase", purchase(currency="EURO")),
        ("click", click(event_id=7)),
        ("click", click(customer_id=7)),
        ("click", click(event_id="")),
        ("click", click(customer_id="")),
        ("click", click(ts=True)),
        ("click", click(ts=None)),
        ("click", click(ts={"ms": 1})),
        ("click", click(session_id=3)),
        ("click", click(channel=False)),
        ("profile", profile(age="41")),
        ("profile", profile(age=True)),
        ("profile", profile(age=200)),
        ("profile", profile(income=-1)),
    ],
)
def test_wrong_types(decoder, kind, doc):
    assert reject(decoder, kind, b"c1", dumps(doc)) == "schema_violation"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id":"p1","customer_id":"c1","ts":"2025-01-01T10:15:00Z",'
        b'"order_id":"o1","amount":NaN}',
        b'{"event_id":"p1","customer_id":"c1","ts":"2025-01-01T10:15:00Z",'
        b'"order_id":"o1","amount":Infinity}',
        b'{"event_id":"p1","customer_id":"c1","ts":"2025-01-01T10:15:00Z",'
        b'"order_id":"o1","amount":-Infinity}',
        b'{"event_id":"p1","customer_id":"c1","ts":NaN,"order_id":"o1","amount":1}',
        # A number literal that overflows a double.
        b'{"event_id":"p1","customer_id":"c1","ts":"2025-01-01T10:15:00Z",'
        b'"order_id":"o1","amount":1e400}',
    ],
)
def test_nan_and_infinity_rejected(decoder, raw):
    assert reject(decoder, "purchase", b"c1", raw) == "invalid_json"


@pytest.mark.parametrize("amount", [-0.01, -5, 10_000_000.01, 1e12, 1e300])
def test_negative_or_absurd_amounts(decoder, amount):
    assert reject(decoder, "purchase", b"c1", dumps(purchase(amount=amount))) == (
        "schema_violation"
    )


@pytest.mark.parametrize("discount", [-1, 10_000_001])
def test_negative_or_absurd_discount(decoder, discount):
    doc = purchase(discount=discount)
    assert reject(decoder, "purchase", b"c1", dumps(doc)) == "schema_violation"


@pytest.mark.parametrize("event_type", ["purchase", "click", "PAGE_VIEW", "", None, 3])
def test_unknown_event_type(decoder, event_type):
    doc = click(event_type=event_type)
    assert reject(decoder, "click", b"c1", dumps(doc)) == "schema_violation"


@pytest.mark.parametrize("ts", ["2025-01-01T10:15:00", "2025-01-01 10:15:00", "2025-01-01"])
def test_iso_ts_without_zone(decoder, ts):
    assert reject(decoder, "click", b"c1", dumps(click(ts=ts))) == "invalid_timestamp"


@pytest.mark.parametrize("ts", ["yesterday at noon", "2025-02-30T00:00:00Z",
                                "2025-01-01T10:15:00+25:00"])
def test_iso_ts_garbage(decoder, ts):
    assert reject(decoder, "click", b"c1", dumps(click(ts=ts))) == "invalid_timestamp"


# 1980-01-01T00:00:00Z (the default EVENT_TS_MIN): 10 years including 2 leap days (1972, 1976).
JAN_1_1980_MS = (10 * 365 + 2) * 86_400_000
# 1990-01-01T00:00:00Z: 20 years including 5 leap days (1972..1988).
JAN_1_1990_MS = (20 * 365 + 5) * 86_400_000
# 1995-06-15T12:00:00Z: 25 years with 6 leap days, then 151 days to June 1, then 14 days.
JUNE_15_1995_NOON_MS = (25 * 365 + 6 + 151 + 14) * 86_400_000 + 12 * HOUR


def rejection(decoder: EventDecoder, kind: str, doc) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        decoder.decode(kind, doc["customer_id"].encode(), dumps(doc))
    return info.value


@pytest.mark.parametrize(
    "ts", ["1979-12-31T23:59:59Z", "1970-01-01T00:00:00Z", "1980-01-01T00:30:00+01:00",
           "0001-01-01T00:00:00+01:00"]
)
def test_iso_ts_before_the_default_minimum(decoder, ts):
    assert reject(decoder, "click", b"c1", dumps(click(ts=ts))) == "timestamp_out_of_range"


def test_iso_ts_at_the_default_minimum_accepted(decoder):
    assert MIN_TS_MS == JAN_1_1980_MS == 315_532_800_000
    ev = decoder.decode("click", b"c1", dumps(click(ts="1980-01-01T00:00:00Z")))
    assert ev.ts == JAN_1_1980_MS


def test_a_1995_purchase_is_accepted_by_default(decoder):
    ev = decoder.decode("purchase", b"c1", dumps(purchase(ts="1995-06-15T14:00:00+02:00")))
    assert (ev.kind, ev.ts, ev.local_hour, ev.amount_cents) == (
        "purchase", JUNE_15_1995_NOON_MS, 14, 1999)


def test_a_1975_purchase_is_rejected_naming_event_ts_min(decoder):
    exc = rejection(decoder, "purchase", purchase(ts="1975-03-10T09:00:00Z"))
    assert exc.reason == "timestamp_out_of_range"
    assert exc.detail == ("ts '1975-03-10T09:00:00Z' is before EVENT_TS_MIN "
                          "(1980-01-01T00:00:00Z); set EVENT_TS_MIN to accept older history")


def test_a_custom_minimum():
    since_1990 = EventDecoder(min_ts_ms=JAN_1_1990_MS)
    ev = since_1990.decode("purchase", b"c1", dumps(purchase(ts="1995-06-15T12:00:00Z")))
    assert ev.ts == JUNE_15_1995_NOON_MS
    assert since_1990.decode("click", b"c1", dumps(click(ts="1990-01-01T00:00:00Z"))).ts == (
        JAN_1_1990_MS)
    exc = rejection(since_1990, "click", click(ts="1989-12-31T23:59:59.999Z"))
    assert exc.reason == "timestamp_out_of_range"
    assert "is before EVENT_TS_MIN (1990-01-01T00:00:00Z)" in exc.detail
    # A minimum after 2000 also applies to epoch milliseconds, shown with their UTC time.
    since_2025 = EventDecoder(min_ts_ms=JAN_1_2025_MS)
    exc = rejection(since_2025, "click", click(ts=JAN_1_2025_MS - 1))
    assert exc.reason == "timestamp_out_of_range"
    assert exc.detail == (f"ts {JAN_1_2025_MS - 1} (2024-12-31T23:59:59.999Z) is before "
                          "EVENT_TS_MIN (2025-01-01T00:00:00Z); set EVENT_TS_MIN to accept "
                          "older history")
    assert since_2025.decode("click", b"c1", dumps(click(ts=JAN_1_2025_MS))).ts == JAN_1_2025_MS


@pytest.mark.parametrize("ts", [1_735_725_600, 1_735_725_600.0])
def test_a_ts_in_seconds_is_rejected_with_a_hint(decoder, ts):
    # 2025-01-01T10:00:00Z in seconds: read as milliseconds it is January 1970, before
    # EVENT_TS_MIN.
    exc = rejection(decoder, "click", click(ts=ts))
    assert exc.reason == "timestamp_out_of_range"
    assert exc.detail.endswith("; 1735725600 looks like seconds, not milliseconds "
                               "(as seconds: 2025-01-01T10:00:00Z)")


def test_a_ts_in_microseconds_is_rejected_with_a_hint(decoder):
    exc = rejection(decoder, "purchase", purchase(ts=1_735_725_600_000_000))
    assert exc.reason == "schema_violation"
    assert exc.detail.endswith("; 1735725600000000 looks like microseconds, not milliseconds "
                               "(as microseconds: 2025-01-01T10:00:00Z)")


def test_epoch_ms_of_the_1990s_are_accepted(decoder):
    """A shop backfilling its 1990s history may send epoch milliseconds as well as ISO."""
    assert decoder.decode("purchase", b"c1",
                          dumps(purchase(ts=JUNE_15_1995_NOON_MS))).ts == JUNE_15_1995_NOON_MS
    exc = rejection(decoder, "click", click(ts=0))
    assert exc.reason == "timestamp_out_of_range"
    assert exc.detail.startswith("ts 0 (1970-01-01T00:00:00Z) is before EVENT_TS_MIN")
    assert "looks like" not in rejection(decoder, "click", click(ts=1_735_725_600,
                                                                  event_id=5)).detail


def test_a_far_future_ts_names_max_future_skew_s(decoder):
    exc = rejection(decoder, "click", click(ts="2090-06-01T00:00:00Z"))
    assert exc.reason == "timestamp_out_of_range"
    assert exc.detail == ("ts '2090-06-01T00:00:00Z' is more than MAX_FUTURE_SKEW_S (86400 s) "
                          "ahead of the worker's clock")
    exc = rejection(EventDecoder(max_future_skew_s=60), "click", click(ts=4_000_000_000_000))
    assert exc.detail.startswith("ts 4000000000000 (2096-")
    assert exc.detail.endswith("is more than MAX_FUTURE_SKEW_S (60 s) ahead of the worker's clock")


def test_schema_bounds_of_epoch_ms_are_those_of_the_schema_files():
    for name in SCHEMA_FILES.values():
        (integer,) = [a for a in load_schema(name)["properties"]["ts"]["oneOf"]
                      if a["type"] == "integer"]
        assert (integer["minimum"], integer["maximum"]) == (SCHEMA_MIN_TS_MS, SCHEMA_MAX_TS_MS)


@pytest.mark.parametrize("ts", [-1, 4_102_444_800_001])
def test_epoch_ts_outside_schema_range(decoder, ts):
    assert reject(decoder, "click", b"c1", dumps(click(ts=ts))) == "schema_violation"


@pytest.mark.parametrize(
    "ts", ["2090-06-01T00:00:00Z", "9999-12-31T23:59:59-23:59", 4_000_000_000_000]
)
def test_ts_far_in_future(decoder, ts):
    assert reject(decoder, "click", b"c1", dumps(click(ts=ts))) == "timestamp_out_of_range"


def test_future_skew_limit():
    now_ms = int(time.time() * 1000)
    default = EventDecoder()  # 1 day of skew allowed
    assert default.decode("click", b"c1", dumps(click(ts=now_ms + HOUR))).ts == now_ms + HOUR
    assert reject(default, "click", b"c1", dumps(click(ts=now_ms + 48 * HOUR))) == (
        "timestamp_out_of_range"
    )
    strict = EventDecoder(max_future_skew_s=60)
    assert reject(strict, "click", b"c1", dumps(click(ts=now_ms + 10 * MINUTE))) == (
        "timestamp_out_of_range"
    )
    assert strict.decode("click", b"c1", dumps(click(ts=now_ms - MINUTE))).ts == now_ms - MINUTE


@pytest.mark.parametrize("key", [b"c2", b"C1", b"c1 ", b"", None, b"\xffc1"])
def test_key_mismatch(decoder, key):
    assert reject(decoder, "click", key, dumps(click())) == "key_mismatch"
    assert reject(decoder, "purchase", key, dumps(purchase())) == "key_mismatch"
    assert reject(decoder, "profile", key, dumps(profile())) == "key_mismatch"


def test_oversized():
    small = EventDecoder(max_message_bytes=200)
    doc = click(padding="")
    base = dumps(doc)
    pad = 200 - len(base)
    exact = dumps(click(padding="x" * pad))
    assert len(exact) == 200
    assert small.decode("click", b"c1", exact).event_id == "e1"  # limit is inclusive
    too_big = dumps(click(padding="x" * (pad + 1)))
    assert len(too_big) == 201
    assert reject(small, "click", b"c1", too_big) == "oversized"
    # Checked before parsing: a large invalid document is also 'oversized'.
    assert reject(small, "click", b"c1", b"{" * 1000) == "oversized"


@pytest.mark.parametrize(
    ("kind", "doc"),
    [
        ("click", click(event_id="e" * 129)),
        ("click", click(customer_id="c" * 129)),
        ("click", click(query="q" * 1025)),
        ("click", click(channel="c" * 33)),
        ("click", click(ts="2025-01-01T10:15:00Z" + " " * 30)),  # ts string > 40 chars
        ("purchase", purchase(order_id="o" * 10_000)),
        ("purchase", purchase(items=[{"category": "x" * 129}])),
        ("purchase", purchase(items=[{"quantity": 1}] * 1001)),
        ("profile", profile(city="x" * 100_000)),
    ],
)
def test_strings_and_arrays_beyond_limits(decoder, kind, doc):
    key = doc["customer_id"].encode()
    assert reject(decoder, kind, key, dumps(doc)) == "schema_violation"


def test_max_length_strings_accepted(decoder):
    doc = click(event_id="e" * 128, customer_id="c" * 128, query="q" * 1024, channel="w" * 32)
    ev = decoder.decode("click", b"c" * 128, dumps(doc))
    assert ev.event_id == "e" * 128


@pytest.mark.parametrize("depth", [10_000, 100_000])
@pytest.mark.parametrize("shape", ["arrays", "objects"])
def test_deeply_nested_extra_field(decoder, depth, shape):
    if shape == "arrays":
        nested = b"[" * depth + b"]" * depth
    else:
        nested = b'{"a":' * depth + b"1" + b"}" * depth
    raw = dumps(click())[:-1] + b',"extra":' + nested + b"}"
    try:
        ev = decoder.decode("click", b"c1", raw)
    except InvalidEvent as exc:
        assert exc.reason in REASONS
    else:
        assert ev.event_id == "e1"


def test_moderately_nested_extra_field_accepted(decoder):
    raw = dumps(click())[:-1] + b',"extra":' + b"[" * 200 + b"]" * 200 + b"}"
    assert decoder.decode("click", b"c1", raw).event_id == "e1"


@pytest.mark.parametrize("depth", [254, 300, 1022])
def test_rejected_array_element_nested_deeper_than_orjson_writes_is_written_back(decoder,
                                                                                  depth):
    """Found by tests/integration/test_fuzz.py: orjson reads 1024 levels but writes 254,
    so writing a rejected element nested deeper back for the DLQ raised TypeError in the
    worker's agent (which then stopped processing its partition)."""
    nested = b"[" * depth + b"]" * depth
    element = dumps(click(customer_id="someone-else"))[:-1] + b',"extra":' + nested + b"}"
    good = dumps(click(event_id="e2"))
    results = decoder.decode_all("click", b"c1", b"[" + element + b"," + good + b"]")
    assert [getattr(r, "reason", "ok") for r in results] == ["key_mismatch", "ok"]
    assert orjson.dumps(results[0].element) == element  # dumps() writes no spaces either


def test_rejected_array_element_keeps_its_document(decoder):
    results = decoder.decode_all("click", b"c1", b'[{"event_id": 5}]')
    assert results[0].reason == "schema_violation" and results[0].element == {"event_id": 5}


def test_invalid_event_is_value_error_with_reason_and_detail():
    exc = InvalidEvent("invalid_json", "boom")
    assert isinstance(exc, ValueError)
    assert exc.reason == "invalid_json" and exc.detail == "boom"
    assert str(exc) == "invalid_json: boom"


# -- property tests -----------------------------------------------------------------------------

KINDS = st.sampled_from(["click", "purchase", "profile"])

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50)
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
fixed_offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1)


@st.composite
def iso_timestamps(draw):
    dt = draw(st.datetimes(min_value=datetime(1999, 1, 1), max_value=datetime(2026, 1, 1))
              | st.datetimes())
    minutes = draw(fixed_offsets)
    sign = "+" if minutes >= 0 else "-"
    offset = draw(
        st.sampled_from(["Z", "", f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"])
    )
    return dt.isoformat() + offset


timestamps = (
    iso_timestamps()
    | st.integers(min_value=MIN_TS_MS, max_value=int(time.time() * 1000))
    | st.integers(min_value=0, max_value=2 * 4_102_444_800_000)
    | st.integers(min_value=MIN_TS_MS, max_value=2_000_000_000_000).map(float)
    | st.floats(min_value=9e11, max_value=5e12)
)
short_text = st.text(min_size=1, max_size=20)
items = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "category": st.none() | short_text | json_leaves,
            "quantity": st.none() | st.integers(min_value=-2, max_value=10) | json_leaves,
            "price": st.floats(min_value=0, max_value=1e6) | json_leaves,
        },
    ) | json_values,
    max_size=4,
)
#: For each field, a strategy of mostly plausible values.
FIELDS = {
    "event_id": short_text,
    "customer_id": short_text,
    "ts": timestamps,
    "event_type": st.sampled_from(
        ["page_view", "product_view", "search", "add_to_cart", "remove_from_cart",
         "checkout_start", "purchase"]
    ),
    "session_id": st.none() | short_text,
    "category": st.none() | short_text,
    "price": st.floats(min_value=0, max_value=1e6),
    "channel": st.none() | st.sampled_from(["web", "App", " ", ""]) | short_text,
    "query": st.none() | short_text,
    "order_id": short_text,
    "amount": st.floats(min_value=0, max_value=1e7) | st.integers(min_value=0, max_value=10**7),
    "currency": st.none() | st.sampled_from(["EUR", "usd", "X"]),
    "discount": st.none() | st.floats(min_value=0, max_value=1e7),
    "items": st.none() | items,
    "age": st.none() | st.integers(min_value=0, max_value=130),
    "income": st.none() | st.floats(min_value=0, max_value=1e8),
    "region": st.none() | short_text,
    "city": st.none() | short_text,
    "gender": st.none() | short_text,
}


@st.composite
def documents(draw):
    """Mostly plausible documents: each field kept, dropped or replaced by anything."""
    doc = {}
    for name, plausible in FIELDS.items():
        action = draw(st.sampled_from(["keep"] * 14 + ["drop", "junk"]))
        if action == "keep":
            doc[name] = draw(plausible)
        elif action == "junk":
            doc[name] = draw(json_values)
    extra = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    for k, v in extra.items():
        doc.setdefault(k, v)
    return doc


def _decode_or_invalid(decoder: EventDecoder, kind: str, key, value) -> None:
    try:
        ev = decoder.decode(kind, key, value)
    except InvalidEvent as exc:
        assert exc.reason in REASONS
    else:
        assert ev.kind == kind
        assert isinstance(ev.ts, int) and 0 <= ev.local_hour < 24
        assert key == ev.customer_id.encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=KINDS, key=st.none() | st.binary(max_size=8), value=st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_invalid_event(decoder, kind, key, value):
    _decode_or_invalid(decoder, kind, key, value)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kind=KINDS, doc=documents(), key_choice=st.sampled_from(["match", "none", "other"]))
def test_arbitrary_json_documents_only_raise_invalid_event(decoder, kind, doc, key_choice):
    customer_id = doc.get("customer_id")
    if key_choice == "match" and isinstance(customer_id, str):
        key = customer_id.encode()
    elif key_choice == "none":
        key = None
    else:
        key = b"someone-else"
    # The standard library writes NaN/Infinity literals and big integers as they are.
    value = json.dumps(doc).encode()
    _decode_or_invalid(decoder, kind, key, value)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ts=iso_timestamps()
       | st.text(alphabet="0123456789-:T+Z.W tz", max_size=40)
       | st.text(max_size=40))
def test_parse_ts_only_raises_invalid_event(ts):
    try:
        ms, hour = parse_ts(ts)
    except InvalidEvent as exc:
        assert exc.reason == "invalid_timestamp"
    else:
        assert 0 <= hour < 24 and isinstance(ms, int)
