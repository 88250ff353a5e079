"""Segments change when time passes (inactivity) and when a profile changes."""

from __future__ import annotations

import time

import orjson

from tests.conftest import consume_all, metric_sum, produce, wait_for
from tests.factories import click_msg, purchase_msg

DAY_MS = 86_400_000
HOUR_MS = 3_600_000



def changes_of(broker, worker) -> list[dict]:
    total = int(metric_sum(worker.metrics(), "stream_app_segment_changes_total"))
    return [orjson.loads(m.value)
            for m in consume_all(broker.bootstrap_servers, worker.topics["changes"], total)]


def test_buyers_who_stop_buying_move_when_their_window_empties(make_worker, broker):
    worker = make_worker(TOPIC_PARTITIONS=1, SEGMENTS_K=2, SEGMENT_MARGIN=0.1,
                         SEGMENT_FEATURES="orders_30d:log1p", MODEL_WARMUP_SAMPLES=40,
                         LEARN_SAMPLE_INTERVAL_HOURS=0.001, SWEEP_INTERVAL_S=1).start()
    t = worker.topics
    start = int(time.time() * 1000) - 60 * DAY_MS
    messages = []
    # Day 0-2: 30 buyers order daily, 30 browsers only click (two clusters to learn).
    for day in range(3):
        for i in range(30):
            ts = start + day * DAY_MS + i * 60_000
            for n in range(2):
                messages.append((t["purchase"], f"buyer-{i}".encode(),
                                 purchase_msg(f"buyer-{i}", ts + n * 1000, day * 2 + n)))
            messages.append((t["click"], f"browser-{i}".encode(),
                             click_msg(f"browser-{i}", ts, day)))
    produce(broker.bootstrap_servers, messages)

    def buyers_apart() -> bool:
        segs = {worker.get(f"/customers/{c}")[1]["segment"] for c in ("buyer-0", "browser-0")}
        return None not in segs and len(segs) == 2

    wait_for(buyers_apart, 90, "buyers and browsers in different segments")
    buyer_segment = worker.get("/customers/buyer-0")[1]["segment"]
    # Sweeps for the midnights of days 1 and 2 are done; everyone waits for day 3's.
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_sweep_pending") == 60, 30,
             "the sweeps of the first days to be done")
    sweeps_before = metric_sum(worker.metrics(), "stream_app_sweep_requests_total")

    # Event time moves 40 days on: only the browsers are active again.
    later = start + 43 * DAY_MS
    produce(broker.bootstrap_servers, [
        (t["click"], f"browser-{i}".encode(), click_msg(f"browser-{i}", later + i * 1000, 100))
        for i in range(30)])

    def buyer_moved() -> dict | None:
        doc = worker.get("/customers/buyer-0")[1]
        return doc if doc["segment"] != buyer_segment else None

    doc = wait_for(buyer_moved, 60, "the inactive buyer to leave the buyers' segment")
    assert doc["features"]["orders_30d"] == 0 and doc["features"]["orders_total"] == 6
    assert doc["as_of"].startswith(time.strftime("%Y-%m-%d", time.gmtime((later + 29_000)
                                                                         / 1000)))

    def inactivity_moves() -> list[dict]:
        # The state is readable as soon as it is cached; its change is sent with its batch.
        return [c for c in changes_of(broker, worker)
                if c["customer_id"] == "buyer-0" and c["trigger"] == "inactivity"]

    moves = wait_for(inactivity_moves, 30, "the buyer's inactivity change on the topic")
    assert len(moves) == 1 and moves[0]["features"]["orders_30d"] == 0
    assert moves[0]["ts"] == doc["as_of"]
    # Bounded: one sweep per customer for a 40-day jump, not one per day or per tick.
    def swept() -> float:
        return metric_sum(worker.metrics(), "stream_app_sweep_requests_total") - sweeps_before

    wait_for(lambda: swept() >= 60, 30, "the jump's sweeps to be counted")
    assert swept() == 60


def test_a_profile_update_can_move_a_customer(make_worker, broker):
    worker = make_worker(SEGMENTS_K=2, SEGMENT_MARGIN=0.1, SEGMENT_REJUDGE_MARGIN=0.1,
                         MODEL_WARMUP_SAMPLES=40,
                         SEGMENT_FEATURES="income:log1p,views_7d:log1p",
                         LEARN_SAMPLE_INTERVAL_HOURS=0.001).start()
    t = worker.topics
    now = int(time.time() * 1000) - DAY_MS
    profiles, clicks = [], []
    for i in range(60):
        customer = f"p-{i}"
        income = 20_000 if i % 2 else 300_000
        profiles.append((t["profile"], customer.encode(), orjson.dumps(
            {"customer_id": customer, "ts": now, "income": income, "region": "Almaty"})))
        for n in range(3):
            clicks.append((t["click"], customer.encode(),
                           click_msg(customer, now + n * HOUR_MS + i, n)))
    # The profiles first: clicks and profiles are separate topics, read in no fixed order,
    # and samples taken before a customer's income is known teach the model no incomes
    # (then K = 2 split the customers by views alone, about 1 run in 30).
    produce(broker.bootstrap_servers, profiles)
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total") >= 60,
             30, "the profiles to be processed")
    produce(broker.bootstrap_servers, clicks)

    def apart() -> bool:
        segs = {worker.get(f"/customers/{c}")[1]["segment"] for c in ("p-0", "p-1")}
        return None not in segs and len(segs) == 2

    wait_for(apart, 90, "high and low incomes in different segments")
    produce(broker.bootstrap_servers, [(t["profile"], b"p-1", orjson.dumps(
        {"customer_id": "p-1", "ts": now + 4 * HOUR_MS, "income": 300_000}))])
    seen: dict[str, dict] = {}

    def together() -> bool:
        # Compared with the rich customer's segment now: a model version published meanwhile
        # may renumber or re-score both of them.
        seen.update(rich=worker.get("/customers/p-0")[1], risen=worker.get("/customers/p-1")[1])
        return seen["risen"]["segment"] == seen["rich"]["segment"] is not None

    try:
        wait_for(together, 60, "the customer whose income rose to join the high-income segment")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {seen}") from None
    doc = worker.get("/customers/p-1")[1]
    assert doc["profile"] == {"income": 300_000, "region": "Almaty"}
    changes = changes_of(broker, worker)
    rich_segments = {c["segment"] for c in changes if c["customer_id"] == "p-0"}
    moves = [c for c in changes if c["customer_id"] == "p-1" and c["trigger"] == "profile"]
    # The profile update moved it into a segment the rich customer was placed in.
    assert moves and moves[-1]["segment"] in rich_segments, (moves, rich_segments)
    # An older profile update arriving late does not undo the newer one.
    produce(broker.bootstrap_servers, [(t["profile"], b"p-1", orjson.dumps(
        {"customer_id": "p-1", "ts": now - HOUR_MS, "income": 10_000}))])
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_late_events_total") >= 1, 30,
             "the stale profile update to be processed")
    assert worker.get("/customers/p-1")[1]["profile"]["income"] == 300_000
