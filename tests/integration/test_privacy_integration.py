"""Privacy on a running worker and a real broker: erasure, pseudonyms, consent, API auth."""

from __future__ import annotations

import subprocess
import sys
import time

import orjson

from stream_app.core.privacy import Pseudonymiser
from tests.conftest import consume_all, http, metric_sum, produce, wait_for
from tests.factories import shop_history

STEP_MS = 600_000
TOKEN = "t0k-" + "x" * 28
AUTH = {"Authorization": f"Bearer {TOKEN}"}



def topic_records(bootstrap: str, topic: str) -> list:
    """Every record of ``topic`` up to its end now (partitions read to their high water)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> list:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p)
                          for p in consumer.partitions_for_topic(topic) or ()]
            if not partitions:
                await consumer.force_metadata_update()
                partitions = [TopicPartition(topic, p)
                              for p in consumer.partitions_for_topic(topic) or ()]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            out: list = []
            deadline = time.monotonic() + 60
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                assert time.monotonic() < deadline, f"{topic} not read to its end"
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend(records)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(run())


def compacted(records: list) -> dict[bytes, bytes | None]:
    """What log compaction would keep: the last value of each key (None: a tombstone)."""
    return {r.key: r.value for r in sorted(records, key=lambda r: (r.partition, r.offset))}


def test_erasure_removes_the_customer_everywhere_and_the_api_needs_a_token(make_worker, broker):
    worker = make_worker(SEGMENTS_K=4, API_TOKEN=TOKEN).start()
    shop, events = shop_history(60, 1500, seed=31, step_ms=STEP_MS)
    produce(broker.bootstrap_servers, [(worker.topics[e.kind], e.key, e.value) for e in events])
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
             == len(events), 120, "every event to be consumed")
    wait_for(lambda: worker.get("/segments")[1]["unassigned"] == 0, 120, "every assignment")
    customers = sorted(shop.planted)

    # -- the API: customer data only with the token, and no way to list customers ----------
    victim = customers[0]
    assert worker.get(f"/customers/{victim}")[0] == 401
    assert worker.get(f"/customers/{victim}", {"Authorization": "Bearer wrong"})[0] == 401
    assert worker.get(f"/customers/nobody-{victim}")[0] == 401  # no probing for existence
    status, doc = worker.get(f"/customers/{victim}", AUTH)
    assert status == 200 and doc["segment"] is not None
    segment = doc["segment"]
    status, explained = worker.get(f"/segments/{segment}")
    assert status == 200 and "examples" not in explained and explained["size"] >= 1
    assert worker.get(f"/segments/{segment}", AUTH)[1]["examples"]
    assert worker.get("/segments/_local")[0] == 401
    # Nothing else names a customer: our views, Faust's default pages (turned off), junk.
    for path in ("/", "/health", "/ready", "/metrics", "/model", "/segments", "/segments/0",
                 "/table/", "/table/customers/", f"/table/customers/{victim}/", "/router/",
                 "/router/customers/", f"/router/customers/{victim}/", "/graph/", "/stats/",
                 "/assignments/", "/customers/", "/customers"):
        status, body = http(worker.url + path)
        assert not any(c.encode() in body for c in customers), (path, status, body[:200])

    # -- erasure through the CLI (a message on the erasure topic) ------------------------
    env = {**worker.env}
    result = subprocess.run([sys.executable, "-m", "stream_app.tools.cli", "forget", victim,
                             "unknown-customer"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"erasure of {victim} requested" in result.stdout
    wait_for(lambda: worker.get(f"/customers/{victim}", AUTH)[0] == 404, 60,
             "the customer to be gone from the API")
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_erasures_total") == 2, 30,
             "both erasure requests to be applied")
    m = worker.metrics()
    assert metric_sum(m, "stream_app_erasures_total", result="erased") == 1
    assert metric_sum(m, "stream_app_erasures_total", result="unknown") == 1
    others = customers[1:]
    assert all(worker.get(f"/customers/{c}", AUTH)[0] == 200 for c in others[:10])
    wait_for(lambda: worker.get("/segments")[1]["customers"] == len(others), 30,
             "segment sizes without the erased customer")

    # The last segment change of the customer says it left: segment null, trigger erasure.
    total = int(metric_sum(worker.metrics(), "stream_app_segment_changes_total"))
    changes = [orjson.loads(m.value) for m in
               consume_all(broker.bootstrap_servers, worker.topics["changes"], total)]
    mine = [c for c in changes if c["customer_id"] == victim]
    assert mine[-1]["trigger"] == "erasure" and mine[-1]["segment"] is None
    assert mine[-1]["previous_segment"] == segment and mine[-1]["features"] == {}
    assert sum(c["trigger"] == "erasure" for c in changes) == 1

    # The changelog, compacted: the customer's key ends in a tombstone, nobody else's does.
    changelog = topic_records(broker.bootstrap_servers, f"{worker.app_id}-customers-changelog")
    kept = compacted(changelog)
    assert kept[victim.encode()] is None
    assert all(kept[c.encode()] is not None for c in others)
    last_of_victim = max(r.offset for r in changelog if r.key == victim.encode())
    assert [r.value for r in changelog if r.key == victim.encode()
            and r.offset == last_of_victim] == [None]

    # Replay: a new worker restores its tables from the changelog; the customer stays gone.
    assert worker.stop() == 0
    fresh = make_worker(SEGMENTS_K=4, API_TOKEN=TOKEN).start()
    wait_for(lambda: fresh.get("/ready")[0] == 200, 90, "the new worker to be ready")
    assert fresh.get(f"/customers/{victim}", AUTH)[0] == 404
    assert all(fresh.get(f"/customers/{c}", AUTH)[0] == 200 for c in others[:10])
    assert fresh.get("/segments")[1]["customers"] == len(others)


def test_pseudonyms_and_consent_keep_ids_and_attributes_out_of_everything(make_worker, broker):
    secret = "pseudonym-secret-for-the-test"
    worker = make_worker(SEGMENTS_K=4, PSEUDONYM_KEY=secret, LOG_FORMAT="json",
                         LEARN_SAMPLE_INTERVAL_HOURS="0.1").start()
    alias = Pseudonymiser(secret).pseudonym
    shop, events = shop_history(50, 1500, seed=37, step_ms=STEP_MS)
    customers = sorted(shop.planted)
    private = customers[0]  # withdraws consent, then keeps shopping
    bad = [(worker.topics["click"], c.encode(), b"{not json " + c.encode() + b"}")
           for c in customers[:5]]
    bad.append((worker.topics["purchase"], customers[1].encode(), orjson.dumps(
        {"event_id": "x", "customer_id": customers[1], "ts": "yesterday", "order_id": "o",
         "amount": 1})))
    produce(broker.bootstrap_servers,
            [(worker.topics[e.kind], e.key, e.value) for e in events] + bad)
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
             == len(events) + len(bad), 120, "every message to be consumed")
    wait_for(lambda: worker.get("/segments")[1]["unassigned"] == 0, 120, "every assignment")

    # The API takes the real id and answers with the pseudonym.
    status, doc = worker.get(f"/customers/{private}")
    assert status == 200 and doc["customer_id"] == alias(private)
    assert doc["segment"] is not None and doc["consent"] == {"segmentation": True}
    segment = doc["segment"]

    now = int(time.time() * 1000)
    withdrawal = orjson.dumps({"customer_id": private, "ts": now,
                               "consent": {"segmentation": False}})
    later = [e for e in shop.events(1000) if e.key == private.encode() and e.kind != "profile"]
    produce(broker.bootstrap_servers, [(worker.topics["profile"], private.encode(), withdrawal)])
    wait_for(lambda: worker.get(f"/customers/{private}")[1]["consent"]["segmentation"] is False,
             60, "the withdrawal to be applied")
    produce(broker.bootstrap_servers, [(worker.topics[e.kind], e.key, e.value) for e in later])
    assert later
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_consent_excluded_events_total")
             == len(later), 60, "the later events to be excluded")
    doc = worker.get(f"/customers/{private}")[1]
    assert doc["segment"] is None and doc["profile"] == {} and doc["as_of"] is None
    assert doc["features"]["orders_total"] == doc["features"]["views_7d"] == 0
    assert worker.get("/segments")[1]["excluded"] == 1

    total = int(metric_sum(worker.metrics(), "stream_app_segment_changes_total"))
    change_records = consume_all(broker.bootstrap_servers, worker.topics["changes"], total)
    changes = [orjson.loads(r.value) for r in change_records]
    mine = [c for c in changes if c["customer_id"] == alias(private)]
    assert mine[-1]["trigger"] == "consent" and mine[-1]["segment"] is None
    assert mine[-1]["previous_segment"] == segment
    assert {c["customer_id"] for c in changes} == {alias(c) for c in customers}
    assert {r.key.decode() for r in change_records} == {alias(c) for c in customers}

    # No raw id anywhere the app writes: output and internal topics, changelogs, metrics,
    # logs. No profile attribute in logs or metrics either.
    app = worker.app_id
    written = b"".join(
        (r.key or b"") + b"\x00" + (r.value or b"")
        for topic in (worker.topics["changes"], worker.topics["dlq"], f"{app}-customers-changelog",
                      f"{app}-model-samples", f"{app}-segment-model", f"{app}-control")
        for r in topic_records(broker.bootstrap_servers, topic))
    dead = [orjson.loads(r.value) for r in topic_records(broker.bootstrap_servers,
                                                         worker.topics["dlq"])]
    assert len(dead) == len(bad)
    assert {d["reason"] for d in dead} == {"invalid_json", "invalid_timestamp"}
    assert all(d["key"] in {alias(c) for c in customers} for d in dead)
    metrics_text = http(worker.url + "/metrics")[1]
    assert worker.stop() == 0
    log = worker.log_path.read_bytes()
    assert alias(customers[2]).encode() in written  # the check below can see ids at all
    for c in customers:
        assert c.encode() not in written, c
        assert c.encode() not in metrics_text and c.encode() not in log, c
    attributes = {orjson.loads(e.value).get(name) for e in events if e.kind == "profile"
                  for name in ("city", "region") if orjson.loads(e.value).get(name)}
    assert attributes
    for value in attributes:
        assert value.encode() not in log and value.encode() not in metrics_text, value
