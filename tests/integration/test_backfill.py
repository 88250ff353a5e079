"""`stream-app replay` backfills a JSONL file; `stream-app verify` checks a worker with it."""

from __future__ import annotations

import subprocess
import sys
import time

import orjson

from stream_app.tools.generator import SyntheticShop
from tests.conftest import metric_sum, produce, wait_for

STEP_MS = 400_000


def cli(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_app.tools.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_backfill_equals_live_and_verify_reports_mismatches(make_worker, broker, tmp_path):
    worker = make_worker().start()
    now = int(time.time() * 1000)
    shop = SyntheticShop(300, seed=17, start_ms=now - 4000 * STEP_MS, step_ms=STEP_MS)
    events = list(shop.events(4000))
    history = tmp_path / "history.jsonl"
    history.write_bytes(b"\n".join(e.value for e in events) + b"\n")

    result = cli("replay", str(history), "--no-progress", env=worker.env)
    assert result.returncode == 0, result.stderr
    assert f"replayed {len(events)} messages" in result.stdout
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
             == len(events), 120, "the backfill to be consumed")
    per_topic = {worker.topics[k]: sum(1 for e in events if e.kind == k)
                 for k in ("click", "purchase", "profile")}
    m = worker.metrics()
    for topic, count in per_topic.items():
        assert metric_sum(m, "stream_app_events_consumed_total", topic=topic) == count

    result = cli("verify", str(history), "--url", worker.url, env=worker.env)
    assert result.returncode == 0, result.stdout + result.stderr
    active = len({e.key for e in events if e.kind != "profile"})
    assert f"checked {active} customers" in result.stdout and "0 mismatches" in result.stdout

    # The same events arriving live, on another worker, give the same features.
    live = make_worker(STREAM_APP_ID=worker.app_id + "-live",
                       CLICKSTREAM_TOPIC=worker.topics["click"] + "-live",
                       PURCHASES_TOPIC=worker.topics["purchase"] + "-live",
                       PROFILES_TOPIC=worker.topics["profile"] + "-live").start()
    produce(broker.bootstrap_servers, [(live.env[{"click": "CLICKSTREAM_TOPIC",
                                                  "purchase": "PURCHASES_TOPIC",
                                                  "profile": "PROFILES_TOPIC"}[e.kind]],
                                        e.key, e.value) for e in events])
    wait_for(lambda: metric_sum(live.metrics(), "stream_app_events_consumed_total")
             == len(events), 120, "the live copy to be consumed")
    # Both equal the batch recomputation at their own clocks (sweeps may have moved them).
    result = cli("verify", str(history), "--url", live.url, env=live.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"checked {active} customers" in result.stdout and "0 mismatches" in result.stdout
    for customer in sorted(shop.planted)[:40]:
        backfilled, arrived = worker.get(f"/customers/{customer}"), live.get(
            f"/customers/{customer}")
        assert backfilled[0] == arrived[0] == 200
        if backfilled[1]["as_of"] == arrived[1]["as_of"]:
            assert backfilled[1]["features"] == arrived[1]["features"]

    # A file that disagrees with what the worker saw: verify says where, and exits 1.
    purchases = [e for e in events if e.kind == "purchase"]
    changed = orjson.loads(purchases[0].value)
    changed["amount"] = round(changed["amount"] + 1.0, 2)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(b"\n".join(orjson.dumps(changed) if e is purchases[0] else e.value
                                    for e in events))
    result = cli("verify", str(tampered), "--url", worker.url, env=worker.env)
    assert result.returncode == 1
    assert changed["customer_id"] in result.stdout and "revenue_total" in result.stdout
