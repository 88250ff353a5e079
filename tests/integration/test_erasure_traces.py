"""No trace of a customer where it should not be: on a running worker and a real broker.

* With ``PSEUDONYM_KEY``, hostile input whose event, session and order ids, nested fields
  and non-JSON bodies hold raw customer ids: no topic the worker writes (every topic of the
  test's app, listed from the broker), nor its log, metrics, map or API, holds a raw id.
* Without a key, a customer that was re-scored and swept (so control messages for it were
  queued) is erased: the control topic names no customer at all, and the map, the segment
  examples and the changelog do not name the erased one any more.

docs/privacy.md lists every place a customer id lives and what erasure does to it.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from aiokafka.admin import AIOKafkaAdminClient

from stream_app.client.erasure import erasure_request
from stream_app.core.privacy import Pseudonymiser
from tests.conftest import http, metric_sum, produce, wait_for
from tests.factories import shop_history
from tests.integration.test_privacy_integration import STEP_MS, topic_records

TOKEN = "t0k-" + "y" * 28
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def topics_of(bootstrap: str, prefix: str) -> list[str]:
    """Every topic in the cluster whose name starts with ``prefix``."""
    async def run() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return sorted(t for t in await admin.list_topics() if t.startswith(prefix))
        finally:
            await admin.close()

    return asyncio.run(run())


def record_bytes(records: list) -> bytes:
    """Keys, values and headers of ``records``, in one byte string to search."""
    return b"".join((r.key or b"") + b"\x00" + (r.value or b"") + b"\x00"
                    + b"".join(k.encode() + v for k, v in (r.headers or ())) for r in records)


def hostile_inputs(topics: dict[str, str], customers: list[str], now: int
                   ) -> list[tuple[str, bytes, bytes]]:
    """Rejected messages whose every field, and bytes that are not JSON, hold raw ids."""
    out = []
    for i, c in enumerate(customers):
        other = customers[(i + 1) % len(customers)]
        nested = {"ref": f"https://shop.example/?u={c}", c: [f"x{c}y", {"customer_id": other}],
                  "order_id": f"o-{c}", "request_id": f"r-{other}"}
        bad_ts = {"event_id": f"{c}-e17", "customer_id": c, "ts": f"yesterday {c}",
                  "event_type": "page_view", "session_id": f"{c}-s3", "meta": nested,
                  "query": f"{other} {c}"}
        good = {"event_id": f"{c}-ok-{i}", "customer_id": c, "ts": now - 1000 * i,
                "event_type": "search", "session_id": f"{c}-s9", "query": f"{c} gift"}
        out += [
            (topics["click"], c.encode(), orjson.dumps(bad_ts)),
            (topics["purchase"], c.encode(), orjson.dumps(
                {"event_id": f"{c}-o1", "customer_id": c, "ts": now, "order_id": f"{c}-ord",
                 "amount": -5, "items": [{"product_id": c, "category": f"for {c}"}]})),
            (topics["click"], c.encode(), b"{broken " + c.encode() + b" " + other.encode()),
            (topics["click"], c.encode(), b"\xff\xfe" + c.encode() + b"\x00"),
            (topics["click"], c.encode(), orjson.dumps(f"{c} clicked")),
            (topics["click"], c.encode(), orjson.dumps([good, {**bad_ts, "ts": -1}])),
            # key_mismatch: the value names another customer
            (topics["click"], c.encode(), orjson.dumps({**good, "customer_id": other,
                                                        "event_id": f"{other}-x"})),
        ]
    return out


def test_with_a_key_no_raw_id_in_any_topic_log_metric_or_page(make_worker, broker):
    secret = "traces-secret"
    worker = make_worker(SEGMENTS_K=4, PSEUDONYM_KEY=secret, API_TOKEN=TOKEN,
                         LOG_FORMAT="json").start()
    alias = Pseudonymiser(secret).pseudonym
    shop, events = shop_history(40, 1000, seed=41, step_ms=STEP_MS)
    customers = sorted(shop.planted)
    now = int(time.time() * 1000)
    bad = hostile_inputs(worker.topics, customers[:8], now)
    produce(broker.bootstrap_servers,
            [(worker.topics[e.kind], e.key, e.value) for e in events] + bad)
    consumed = len(events) + sum(len(orjson.loads(v)) if v.startswith(b"[") else 1
                                 for _, _, v in bad)  # an array's elements count one by one
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
             == consumed, 120, "every message to be consumed")
    wait_for(lambda: worker.get("/segments")[1]["unassigned"] == 0, 120, "every assignment")
    rejected = int(metric_sum(worker.metrics(), "stream_app_dlq_messages_total"))
    assert rejected >= 6 * 8

    # Everything the worker serves, with the token (ids shown where the API shows any).
    served = [http(worker.url + "/metrics")[1], http(worker.url + "/map/data", headers=AUTH)[1]]
    model = worker.get("/model")[1]
    served += [http(f"{worker.url}/segments/{s}", headers=AUTH)[1] for s in range(model["k"])]
    served += [http(f"{worker.url}/customers/{c}", headers=AUTH)[1] for c in customers[:8]]
    assert alias(customers[0]).encode() in b"".join(served[2:])  # the check can see ids

    # Every topic of the test except the inputs the test itself wrote.
    prefix = worker.topics["click"].rsplit("-", 1)[0] + "-"
    inputs = {worker.topics[k] for k in ("click", "purchase", "profile", "erasure")}
    written = [t for t in topics_of(broker.bootstrap_servers, prefix) if t not in inputs]
    app = worker.app_id
    assert {worker.topics["dlq"], worker.topics["changes"], f"{app}-control",
            f"{app}-customers-changelog", f"{app}-model-samples"} <= set(written), written
    everything = {t: record_bytes(topic_records(broker.bootstrap_servers, t)) for t in written}
    dead = [orjson.loads(r.value)
            for r in topic_records(broker.bootstrap_servers, worker.topics["dlq"])]
    assert len(dead) == rejected
    assert worker.stop() == 0
    log = worker.log_path.read_bytes()
    for c in customers:
        for name, data in [*everything.items(), ("log", log),
                           *((f"served {n}", body) for n, body in enumerate(served))]:
            assert c.encode() not in data, (c, name)
    assert {d.get("redaction") for d in dead} == {"pseudonymised", "withheld"}


def test_an_erased_customer_leaves_no_trace_in_control_messages_map_or_examples(
        make_worker, broker):
    worker = make_worker(SEGMENTS_K=4, API_TOKEN=TOKEN, SWEEP_INTERVAL_S=1).start()
    # 8 days of event time: sweeps at midnights
    shop, events = shop_history(60, 1200, seed=43, step_ms=STEP_MS)
    customers = sorted(shop.planted)
    produce(broker.bootstrap_servers, [(worker.topics[e.kind], e.key, e.value) for e in events])
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
             == len(events), 120, "every event to be consumed")
    wait_for(lambda: worker.get("/segments")[1]["unassigned"] == 0, 120, "every assignment")
    # The first model re-scores every customer; midnights passed in event time sweep them.
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_rescore_requests_total")
             >= len(customers), 60, "the first model's re-scoring pass")
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_sweep_requests_total") > 0, 60,
             "a sweep")
    control_topic = f"{worker.app_id}-control"
    wait_for(lambda: topic_records(broker.bootstrap_servers, control_topic), 30,
             "control messages on their topic")

    def named_on_map_and_in_examples() -> tuple[str, int] | None:
        """A customer named both by the map's recent changes and as a segment example."""
        recent = {c.get("customer_id")
                  for c in worker.get("/map/data", AUTH)[1]["changes"]}
        for segment in range(worker.get("/model")[1]["k"]):
            for example in worker.get(f"/segments/{segment}", AUTH)[1].get("examples", []):
                if example in recent:
                    return example, segment
        return None

    victim, segment = wait_for(named_on_map_and_in_examples, 30,
                               "a customer on the map and among the examples")
    status, doc = worker.get(f"/customers/{victim}", AUTH)
    assert status == 200 and doc["segment"] == segment

    now = int(time.time() * 1000)
    produce(broker.bootstrap_servers, [(worker.topics["erasure"], victim.encode(),
                                        erasure_request(victim, "r-trace", now))])
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_erasures_total",
                                result="erased") == 1, 60, "the erasure")
    assert worker.get(f"/customers/{victim}", AUTH)[0] == 404

    # The map and the examples (all segments, with the token) name it no more.
    map_data = http(worker.url + "/map/data", headers=AUTH)[1]
    assert victim.encode() not in map_data
    assert b"customer_id" in map_data  # with the token, the map names customers at all
    for s in range(worker.get("/model")[1]["k"]):
        assert victim not in worker.get(f"/segments/{s}", AUTH)[1].get("examples", [])
    # The control topic names no customer at all (the work named, the customers held in
    # the worker's memory), neither in keys nor in values.
    control = topic_records(broker.bootstrap_servers, control_topic)
    assert control
    data = record_bytes(control)
    assert [c for c in customers if c.encode() in data] == []
    assert all(set(orjson.loads(r.value)) <= {"op", "worker", "batch", "n", "model", "at",
                                               "version"} for r in control)
    # The changelog's last record for the customer is a tombstone.
    changelog = topic_records(broker.bootstrap_servers, f"{worker.app_id}-customers-changelog")
    last = max((r for r in changelog if r.key == victim.encode()), key=lambda r: r.offset)
    assert last.value is None
    # Erased, it is no longer named even in the log.
    assert worker.stop() == 0
    assert victim.encode() not in worker.log_path.read_bytes()
