"""Existing input topics decide the partition count, or the worker refuses clearly."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_app.config import Settings
from stream_app.worker.topics import changelog_topics, existing_topics
from tests.conftest import produce, wait_for


def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(t, n, 1) for t, n in topics.items()])
        finally:
            await admin.close()

    asyncio.run(run())


def test_worker_adapts_to_existing_input_partitions(make_worker, broker):
    worker = make_worker(TOPIC_PARTITIONS="4")
    t = worker.topics
    create_topics(broker.bootstrap_servers, {t["click"]: 6, t["purchase"]: 6})
    worker.start()
    settings = Settings.from_env(worker.env)
    layout = asyncio.run(existing_topics(settings))
    for topic in (t["profile"], settings.control_topic, *changelog_topics(settings)):
        assert layout[topic] == 6, (topic, layout.get(topic))
    ts = int(time.time() * 1000)
    produce(broker.bootstrap_servers, [
        (t["click"], f"c{i}".encode(), orjson.dumps({
            "event_id": f"e{i}", "customer_id": f"c{i}", "ts": ts, "event_type": "page_view"}))
        for i in range(40)
    ])
    for i in (0, 17, 39):
        wait_for(lambda i=i: worker.get(f"/customers/c{i}")[0] == 200, 60, f"customer c{i}")
        assert worker.get(f"/customers/c{i}")[1]["features"]["views_24h"] == 1


def test_worker_refuses_inputs_that_are_not_co_partitioned(make_worker, broker):
    worker = make_worker()
    t = worker.topics
    create_topics(broker.bootstrap_servers, {t["click"]: 6, t["purchase"]: 3})
    result = subprocess.run([sys.executable, "-m", "stream_app.tools.cli", "worker"],
                            env=worker.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "not co-partitioned" in result.stderr
    assert f"{t['click']} has 6" in result.stderr and f"{t['purchase']} has 3" in result.stderr


def test_worker_without_a_broker_fails_fast_with_a_clear_message(make_worker):
    worker = make_worker()
    env = {**worker.env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "stream_app.tools.cli", "worker"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "cannot reach Kafka at 127.0.0.1:1" in result.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.stderr
    assert time.monotonic() - started < 60
