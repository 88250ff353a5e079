"""Features are exact: a real worker against an independent batch recomputation.

50,000+ events over 5,000 customers, with out-of-order arrival inside the allowed
lateness, redelivered duplicates and ~300 late purchases; then the whole input once more.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import orjson

from stream_app.tools.batch import recompute
from stream_app.tools.generator import SyntheticShop
from stream_app.tools.verify import compare
from tests.conftest import metric_sum, produce, wait_for

CUSTOMERS = 5000
EVENTS = 50_000
STEP_MS = 100_000  # ~58 days of event time
LATENESS_MS = 3_600_000
DAY_MS = 86_400_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def workload(seed: int = 3) -> list[tuple[str, bytes, bytes]]:
    """(kind, key, value) in send order: shuffled blocks, duplicates and late purchases."""
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    shop = SyntheticShop(CUSTOMERS, seed=seed, start_ms=now - EVENTS * STEP_MS, step_ms=STEP_MS)
    events = [(e.kind, e.key, e.value) for e in shop.events(EVENTS)]
    # Out of order: shuffle blocks of 20 events (20 x 100 s < the 1 h allowed lateness).
    for i in range(0, len(events), 20):
        block = events[i:i + 20]
        rng.shuffle(block)
        events[i:i + 20] = block
    # Producers retry: 1,000 events are sent again, a little or a lot later.
    for _ in range(1000):
        i = rng.randrange(len(events) - 1)
        later = min(len(events), i + 1 + rng.choice((5, 5000)))
        events.insert(rng.randrange(i + 1, later), events[i])
    # Late purchases: about 300 orders stamped three days before the customer's newest one.
    out: list[tuple[str, bytes, bytes]] = []
    newest: dict[bytes, int] = {}
    for position, (kind, key, value) in enumerate(events):
        out.append((kind, key, value))
        if kind == "purchase":
            newest[key] = max(newest.get(key, 0), _ts(value))
        if position % 50 == 49 and key in newest:
            doc = {"event_id": f"late-{position}", "customer_id": key.decode(),
                   "ts": newest[key] - 3 * DAY_MS, "order_id": f"late-order-{position}",
                   "amount": 12.34, "discount": 0, "items": [{"category": "late", "quantity": 2}]}
            out.append(("purchase", key, orjson.dumps(doc)))
    return out


def _ts(value: bytes) -> int:
    ts = orjson.loads(value)["ts"]
    if isinstance(ts, int):
        return ts
    return (datetime.fromisoformat(ts) - EPOCH) // timedelta(milliseconds=1)


def expected_counts(events: list[tuple[str, bytes, bytes]]) -> tuple[int, int]:
    """(duplicates, late) the worker should count, by the documented rules: lateness is
    judged within each stream; a click is a duplicate while its first copy is within the
    lateness of the newest click, a purchase always."""
    newest: dict[tuple[bytes, str], int] = {}
    clicks: dict[bytes, dict[str, int]] = {}
    orders: dict[bytes, set[str]] = {}
    duplicates = late = 0
    for kind, key, value in events:
        if kind == "profile":
            continue
        doc = orjson.loads(value)
        ts, eid = _ts(value), doc["event_id"]
        before = newest.get((key, kind), 0)
        if kind == "purchase":
            if eid in orders.setdefault(key, set()):
                duplicates += 1
                continue
            orders[key].add(eid)
        else:
            seen = clicks.setdefault(key, {})
            if eid in seen and seen[eid] >= max(before, ts) - LATENESS_MS:
                duplicates += 1
                continue
            seen[eid] = ts
        if ts < before - LATENESS_MS:
            late += 1
            continue
        newest[(key, kind)] = max(before, ts)
    return duplicates, late


def check_against_batch(worker, events) -> int:
    batch = recompute([orjson.loads(v) for _, _, v in events], lateness_ms=LATENESS_MS)

    def fetch(customer_id: str):
        status, doc = worker.get(f"/customers/{customer_id}")
        return doc if status == 200 else None

    with ThreadPoolExecutor(16) as pool:
        documents = dict(zip(batch, pool.map(fetch, batch)))
    mismatches = compare(batch, documents.get)
    assert not mismatches, mismatches[:20]
    return len(documents)


def test_features_equal_batch_recomputation_with_duplicates_and_late_events(make_worker,
                                                                           broker):
    worker = make_worker().start()
    events = workload()
    assert len(events) >= 51_000
    sent = [(worker.topics[k], key, v) for k, key, v in events]
    produce(broker.bootstrap_servers, sent)
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
             == len(events), 600, "the first pass to be consumed", interval=2.0)
    customers = {key for _, key, _ in events}
    assert len(customers) > 0.99 * CUSTOMERS
    assert check_against_batch(worker, events) == len(customers)
    duplicates, late = expected_counts(events)
    m = worker.metrics()
    assert metric_sum(m, "stream_app_duplicate_events_total") == duplicates
    assert metric_sum(m, "stream_app_late_events_total") == late
    planted_late = sum(1 for _, _, v in events if v.startswith(b'{"event_id":"late-'))
    assert planted_late >= 250 and late >= planted_late and duplicates >= 200
    assert metric_sum(m, "stream_app_invalid_events_total") == 0

    # The whole input a second time (a replayed topic): every feature stays as it was.
    produce(broker.bootstrap_servers, sent)
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
             == 2 * len(events), 600, "the replay to be consumed", interval=2.0)
    check_against_batch(worker, events)
