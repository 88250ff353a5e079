"""Audiences on a running worker and a real broker: enter events as customers meet a
condition, copies of redelivered causes with the same ids, exits on erasure, a changed
definitions file applied without a restart (stored customers judged again), a broken one
rejected while the applied definitions stay, and a worker that will not start with one.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
from jsonschema import Draft7Validator, FormatChecker

from stream_app.core.schemas import load_schema
from tests.conftest import consume_all, metric_sum, produce, wait_for
from tests.factories import click_msg, purchase_msg

MIN_MS = 60_000
FIRST = """\
audiences:
  - name: browsers
    description: viewed at least three products this week
    condition: views_7d >= 3
  - name: buyers
    condition: orders_total >= 1
"""
SECOND = """\
audiences:
  - name: browsers
    condition: views_7d >= 100
  - name: repeat-buyers
    condition: orders_total >= 2
  - name: buyers
    condition: orders_total >= 1
"""
BROKEN = """\
audiences:
  - name: browsers
    condition: view_count >= 3
"""


def shop(now: int) -> tuple[list[tuple[str, bytes, bytes]], dict[str, set[str]]]:
    """40 customers: c-0..c-19 view 5 products, c-10..c-29 buy once, c-10..c-14 twice;
    the rest view one product. Returns ``(kind, key, value)`` and who should be in what."""
    events: list[tuple[str, bytes, bytes]] = []
    for i in range(40):
        c = f"c-{i}"
        views = 5 if i < 20 else 1
        for n in range(views):
            events.append(("click", c.encode(),
                           click_msg(c, now - (60 - n) * MIN_MS, n, "product_view",
                                     product_id=f"p{n}", category="shoes")))
        orders = 2 if 10 <= i < 15 else 1 if 10 <= i < 30 else 0
        for n in range(orders):
            events.append(("purchase", c.encode(),
                           purchase_msg(c, now - (30 - n) * MIN_MS, n, 40.0,
                                        items=[{"category": "shoes", "quantity": 1}])))
    members = {"browsers": {f"c-{i}" for i in range(20)},
               "buyers": {f"c-{i}" for i in range(10, 30)},
               "repeat-buyers": {f"c-{i}" for i in range(10, 15)}}
    return events, members


def audience_messages(broker, worker, count: int) -> list[dict]:
    validator = Draft7Validator(load_schema("audience-change.schema.json"),
                                format_checker=FormatChecker())
    out = []
    for m in consume_all(broker.bootstrap_servers, worker.topics["audiences"], count):
        doc = orjson.loads(m.value)
        validator.validate(doc)
        assert m.key.decode() == doc["customer_id"]
        out.append(doc)
    return out


def distinct(messages: list[dict]) -> list[dict]:
    """``messages`` without copies (same event id), each copy checked to say the same as
    the first (all but ``emitted_at``: a copy sent again after a redelivered cause is
    emitted later)."""
    by_id: dict[str, dict] = {}
    for doc in messages:
        first = by_id.setdefault(doc["event_id"], doc)
        assert {**first, "emitted_at": None} == {**doc, "emitted_at": None}, (first, doc)
        # One key, one partition, read in order: a copy comes after what it copies.
        assert first["emitted_at"] <= doc["emitted_at"], (first, doc)
    return list(by_id.values())


def published(worker) -> int:
    return int(metric_sum(worker.metrics(), "stream_app_audience_changes_total"))


def test_audiences_on_a_running_worker_with_a_reloaded_file(make_worker, broker,
                                                            tmp_path: Path):
    path = tmp_path / "audiences.yaml"
    path.write_text(FIRST)
    worker = make_worker(AUDIENCES_FILE=path, AUDIENCES_RELOAD_S="0.5").start()
    events, members = shop(int(time.time() * 1000))
    produce(broker.bootstrap_servers, [(worker.topics[k], key, v) for k, key, v in events])
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
             == len(events), 120, "the events to be consumed")
    first_count = len(members["browsers"]) + len(members["buyers"])
    # At least once: a rebalance of a loaded machine may redeliver a cause, whose message
    # is then sent again with the same event id (a copy, never a second enter).
    wait_for(lambda: published(worker) >= first_count, 60, "the audience enter events")

    def all_entered() -> list[dict] | None:
        docs = distinct(audience_messages(broker, worker, published(worker)))
        return docs if len(docs) == first_count else None

    first = wait_for(all_entered, 60, "one enter event per member")
    assert {(d["audience"], d["customer_id"]) for d in first} == {
        (a, c) for a in ("browsers", "buyers") for c in members[a]}
    assert {d["action"] for d in first} == {"enter"} and {d["trigger"] for d in first} == {
        "event"}
    assert len({d["event_id"] for d in first}) == first_count
    status, body = worker.get("/audiences")
    assert status == 200 and [(a["name"], a["members"]) for a in body["audiences"]] == [
        ("browsers", 20), ("buyers", 20)]
    version = body["version"]
    assert {d["definitions_version"] for d in first} == {version}
    assert worker.get("/customers/c-12")[1]["audiences"] == ["browsers", "buyers"]

    # The whole input again (a replay): no customer enters twice; the messages whose
    # cause came again are sent again with their event ids.
    produce(broker.bootstrap_servers, [(worker.topics[k], key, v) for k, key, v in events])
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
             == 2 * len(events), 120, "the replay to be consumed")
    base = published(worker)
    assert base > first_count  # some copies
    assert {d["event_id"] for d in audience_messages(broker, worker, base)} == {
        d["event_id"] for d in first}
    assert worker.get("/audiences")[1]["audiences"][0]["members"] == 20

    # A new definitions file is applied without a restart: stored customers are judged
    # again (trigger "definitions") with no new event.
    path.write_text(SECOND)
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_audience_reloads_total",
                                result="applied") == 1, 30, "the reload")
    second_count = len(members["browsers"]) + len(members["repeat-buyers"])
    wait_for(lambda: published(worker) == base + second_count, 60,
             "the changes the new definitions make")
    after = [d for d in audience_messages(broker, worker, base + second_count)
             if d["trigger"] == "definitions"]
    new_version = worker.get("/audiences")[1]["version"]
    assert new_version != version
    assert sorted((d["audience"], d["action"], d["customer_id"]) for d in after) == sorted(
        [("browsers", "exit", c) for c in members["browsers"]]
        + [("repeat-buyers", "enter", c) for c in members["repeat-buyers"]])
    assert {(d["trigger"], d["definitions_version"]) for d in after} == {
        ("definitions", new_version)}
    status, body = worker.get("/audiences")
    assert {a["name"]: a["members"] for a in body["audiences"]} == {
        "browsers": 0, "repeat-buyers": 5, "buyers": 20}

    # A broken file is rejected; the applied definitions stay and still work.
    path.write_text(BROKEN)
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_audience_reloads_total",
                                result="rejected") == 1, 30, "the rejected reload")
    assert worker.get("/audiences")[1]["version"] == new_version
    assert "view_count" in worker.log()
    newcomer = [("purchase", b"c-99", purchase_msg("c-99", int(time.time() * 1000), n, 20.0))
                for n in range(2)]
    produce(broker.bootstrap_servers, [(worker.topics[k], key, v) for k, key, v in newcomer])
    wait_for(lambda: published(worker) == base + second_count + 2, 60,
             "the newcomer's enter events")

    # Erasure: the customer leaves its audiences first.
    produce(broker.bootstrap_servers, [(worker.topics["erasure"], b"c-12",
                                        orjson.dumps({"customer_id": "c-12"}))])
    total = base + second_count + 4
    wait_for(lambda: published(worker) == total, 60, "the erased customer's exits")
    assert sorted((d["customer_id"], d["audience"], d["action"], d["trigger"])
                  for d in audience_messages(broker, worker, total)
                  if d["trigger"] == "erasure") == [
        ("c-12", "buyers", "exit", "erasure"), ("c-12", "repeat-buyers", "exit", "erasure")]


def test_a_worker_with_a_broken_definitions_file_does_not_start(make_worker, tmp_path: Path):
    path = tmp_path / "audiences.yaml"
    path.write_text(BROKEN)
    worker = make_worker(AUDIENCES_FILE=path).start(wait_ready=False)
    assert worker.process is not None
    try:
        code = worker.process.wait(60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker kept running:\n{worker.log()}") from None
    assert code == 2, worker.log()
    assert "view_count" in worker.log() and str(path) in worker.log()


def test_audiences_check_validates_a_file_as_the_worker_does(tmp_path: Path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(SECOND)
    bad.write_text(BROKEN)
    cli = [sys.executable, "-m", "stream_app.tools.cli", "audiences", "check"]
    ok = subprocess.run([*cli, str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert "3 audiences" in lines[0] and [line.split()[0] for line in lines[1:]] == [
        "browsers", "repeat-buyers", "buyers"]
    failed = subprocess.run([*cli, str(bad)], capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2 and "view_count" in failed.stderr and failed.stdout == ""
