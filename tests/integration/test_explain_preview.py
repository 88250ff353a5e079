"""``GET /customers/{id}/explain`` and ``POST /audiences/preview`` on a running worker and a
real broker, through ``stream-app explain`` and ``stream-app audiences preview`` too.

* Explain (a worker with ``API_TOKEN``, ``PSEUDONYM_KEY`` and audiences, and a model):
  every clause of every audience's condition and exit condition says what the audience's
  own evaluation of that clause says, for customers in and out of each audience, a stored
  member kept by its exit condition (hysteresis) and a customer with null attributes;
  ``member`` is what ``GET /customers/{id}`` says; the real id appears nowhere in the
  answer; without the token both endpoints answer 401.
* Preview (a worker without a model, so nothing but the audience pass writes): a candidate
  file with a changed condition (with hysteresis), a new audience and a dropped one sends
  nothing and changes no customer; once the file is applied, the worker's members are the
  preview's, and the enter/exit messages of the definitions change are its
  ``would_enter``/``would_exit``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from stream_app.core.audiences import Audience
from stream_app.core.privacy import Pseudonymiser
from tests.conftest import Worker, _ids, consume_all, metric_sum, produce, wait_for
from tests.factories import click_msg, profile_msg, purchase_msg, shop_history

TOKEN = "explain-token-" + "y" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "pseudonym-key-of-the-explain-test"
MIN_MS = 60_000
STEP_MS = 600_000
CLI = [sys.executable, "-m", "stream_app.tools.cli"]

EXPLAINED = """\
audiences:
  - name: browsers
    condition: views_7d >= 3
  - name: almaty-buyers
    condition: orders_total >= 1 and (region == "Almaty" or revenue_total >= 500)
  - name: rich
    description: enter at an income of 5,000, leave below 3,000
    condition: income >= 5000
    exit_condition: income < 3000 or (region == "Nowhere" and orders_total > 100)
  - name: placed-lapsed
    condition: segment >= 0 and (orders_total == 0 or days_since_last_order > 30)
"""
#: Customers of the explain test with real ids that cannot appear in a document by chance.
IN, OUT, NULLS, KEPT = ("ann-real-4711", "bob-real-4712", "cat-real-4713", "dan-real-4714")


def http_call(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
              timeout: float = 60.0) -> tuple[int, bytes]:
    """``GET`` (``POST`` with ``data``) ``url``: status and body."""
    request = urllib.request.Request(url, data=data, headers=headers or {},
                                     method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The end offset of every partition of ``topic``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            found = consumer.partitions_for_topic(topic)
            if not found:
                await consumer.force_metadata_update()
                found = consumer.partitions_for_topic(topic) or set()
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in found])
            return {tp.partition: offset for tp, offset in ends.items()}
        finally:
            await consumer.stop()

    return asyncio.run(run())


def attributes_of(doc: dict[str, Any]) -> dict[str, object]:
    """What the audiences see of a customer, rebuilt from its explain document: features
    (the ``*_ts`` ones back to epoch milliseconds), profile, segment and its label."""
    features = dict(doc["features"])
    for name in ("first_order_ts", "last_order_ts"):
        if features.get(name) is not None:
            features[name] = int(datetime.fromisoformat(features[name]).timestamp() * 1000)
    return {**features, **doc["profile"], "segment": doc["segment"],
            "segment_label": doc["segment_label"]}


def nodes(tree: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    """Every node of a condition tree, the root first."""
    if tree is None:
        return
    yield tree
    for child in tree.get("all", tree.get("any", ())):
        yield from nodes(child)


def check_clauses(doc: dict[str, Any], definitions: dict[str, dict[str, Any]],
                  stored_audiences: list[str]) -> int:
    """Every node of every audience's trees against the audience's own evaluation; the
    roots against the whole conditions; ``member`` against the stored memberships. The
    number of clauses (leaves) checked."""
    attributes = attributes_of(doc)
    leaves = 0
    assert [a["name"] for a in doc["audience_conditions"]] == list(definitions)
    for explained in doc["audience_conditions"]:
        name = explained["name"]
        spec = definitions[name]
        audience = Audience(name, "", spec["condition"], spec.get("exit_condition"))
        for key, whole in (("condition", spec["condition"]),
                           ("exit_condition", spec.get("exit_condition"))):
            tree = explained[key]
            assert (tree is None) == (whole is None), (name, key)
            if tree is None:
                continue
            root = Audience(name, "", whole, None).holds(attributes)
            assert (tree["holds"] is True) == root, (doc["customer_id"], name, key, tree)
            for node in nodes(tree):
                own = Audience(name, "", node["text"], None).holds(attributes)
                assert (node["holds"] is True) == own, (doc["customer_id"], name, node)
                if node["holds"] is None:  # null: it met a value the customer lacks
                    assert own is False
                if "values" in node:
                    leaves += 1
                    assert node["line"].startswith(node["text"] + ": ")
                    assert node["values"] == {n: attributes.get(n) for n in node["values"]}
                    if node["holds"] is None:
                        assert None in node["values"].values(), node
        assert explained["member"] == (name in stored_audiences), (doc["customer_id"], name)
        assert explained["member_if_judged_now"] == audience.member_after(
            explained["member"], attributes), (doc["customer_id"], name)
    return leaves


@pytest.fixture(scope="module")
def explained_worker(broker, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[tuple[Worker, list[str], dict[str, dict[str, Any]]]]:
    """A worker with ``API_TOKEN``, ``PSEUDONYM_KEY``, the audiences of :data:`EXPLAINED`
    and a model, fed a synthetic shop of 60 customers and the four customers of the test;
    every customer placed. Yields it, some of the shop's customer ids and the definitions
    by name."""
    prefix = f"xp{os.getpid()}-{next(_ids)}"
    topics = {name: f"{prefix}-{name}" for name in ("click", "purchase", "profile", "changes",
                                                     "dlq", "erasure", "audiences", "catalogue")}
    home = tmp_path_factory.mktemp("explain")
    definitions = home / "audiences.yaml"
    definitions.write_text(EXPLAINED)
    worker = Worker(broker, home, topics, f"{prefix}-app", SEGMENTS_K=4, API_TOKEN=TOKEN,
                    PSEUDONYM_KEY=SECRET, AUDIENCES_FILE=definitions).start()
    shop, events = shop_history(60, 1500, seed=23, step_ms=STEP_MS)
    now = int(time.time() * 1000)
    mine: list[tuple[str, str, bytes]] = [
        ("profile", IN, profile_msg(IN, now - 90 * MIN_MS, region="Almaty", income=6000)),
        ("profile", OUT, profile_msg(OUT, now - 90 * MIN_MS, region="South", income=1000)),
        ("profile", KEPT, profile_msg(KEPT, now - 90 * MIN_MS, region="North", income=6000)),
        # Later, below the condition but above the exit condition: a member stays.
        ("profile", KEPT, profile_msg(KEPT, now - 5 * MIN_MS, income=4000)),
    ]
    for customer, views in ((IN, 4), (OUT, 1), (NULLS, 3), (KEPT, 3)):
        mine += [("click", customer, click_msg(customer, now - (60 - n) * MIN_MS, n,
                                               "product_view", product_id=f"p{n}",
                                               category="shoes")) for n in range(views)]
    mine += [("purchase", IN, purchase_msg(IN, now - 30 * MIN_MS, 0, 600.0)),
             ("purchase", OUT, purchase_msg(OUT, now - 30 * MIN_MS, 0, 40.0)),
             ("purchase", KEPT, purchase_msg(KEPT, now - 30 * MIN_MS, 0, 80.0))]
    messages = [(topics[e.kind], e.key, e.value) for e in events] + [
        (topics[kind], customer.encode(), value) for kind, customer, value in mine]
    produce(broker.bootstrap_servers, messages)
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
             == len(messages), 180, "every event to be consumed")
    wait_for(lambda: worker.get("/segments")[1]["unassigned"] == 0, 180, "every assignment")
    definitions = {a["name"]: a for a in yaml.safe_load(EXPLAINED)["audiences"]}
    try:
        yield worker, sorted(shop.planted)[:4], definitions
    finally:
        worker.stop()


def explain_doc(worker: Worker, customer: str) -> dict[str, Any]:
    status, doc = worker.get(f"/customers/{urllib.parse.quote(customer, safe='')}/explain",
                             AUTH)
    assert status == 200, doc
    return doc


def test_every_clause_says_what_the_audience_decides(explained_worker):
    worker, shop_customers, definitions = explained_worker

    def consistent(customer: str) -> dict[str, Any] | None:
        """The explain document, once it and ``GET /customers/{id}`` agree (a model
        update between the two may move the customer; poll until they match)."""
        doc = explain_doc(worker, customer)
        stored = worker.get(f"/customers/{customer}", AUTH)[1]
        same = {k: stored[k] for k in stored} == {k: doc[k] for k in stored}
        return doc | {"stored": stored} if same else None

    docs = {c: wait_for(lambda c=c: consistent(c), 60, f"a steady document of {c}")
            for c in (IN, OUT, NULLS, KEPT, *shop_customers)}
    leaves = sum(check_clauses(doc, definitions, doc["stored"]["audiences"])
                 for doc in docs.values())
    assert leaves >= 8 * len(docs)

    def audience(customer: str, name: str) -> dict[str, Any]:
        return next(a for a in docs[customer]["audience_conditions"] if a["name"] == name)

    # In and out, clause by clause.
    assert audience(IN, "almaty-buyers")["member"] is True
    assert [n["holds"] for n in nodes(audience(IN, "almaty-buyers")["condition"])] == [
        True, True, True, True, True]
    out = audience(OUT, "almaty-buyers")
    assert out["member"] is False
    assert [(n["text"], n["holds"]) for n in nodes(out["condition"])] == [
        ('orders_total >= 1 and (region == "Almaty" or revenue_total >= 500)', False),
        ("orders_total >= 1", True),
        ('region == "Almaty" or revenue_total >= 500', False),
        ('region == "Almaty"', False),
        ("revenue_total >= 500", False)]
    assert audience(IN, "browsers")["member"] and not audience(OUT, "browsers")["member"]
    # Nulls: a comparison with a missing income cannot be evaluated, and does not hold.
    nulls = audience(NULLS, "rich")
    assert nulls["member"] is False and nulls["condition"]["holds"] is None
    assert nulls["condition"]["line"] == (
        "income >= 5000: null → cannot be evaluated (null), does not hold")
    lapsed = audience(NULLS, "placed-lapsed")
    assert lapsed["member"] is True and lapsed["condition"]["holds"] is True
    assert [n["holds"] for n in nodes(lapsed["condition"])] == [True, True, True, True, None]
    assert audience(IN, "placed-lapsed")["member"] is False
    # Hysteresis: below the condition, above the exit condition, still a member.
    kept = audience(KEPT, "rich")
    assert kept["member"] is True and kept["member_if_judged_now"] is True
    assert kept["condition"]["holds"] is False and kept["exit_condition"]["holds"] is False
    assert kept["rule"] == "member until the exit condition holds (hysteresis)"
    assert "rich" in docs[KEPT]["stored"]["audiences"]
    # The rest of the explanation is there for a placed customer.
    for doc in docs.values():
        assert doc["segment"] is not None and doc["segment_detail"]["id"] == doc["segment"]
        placement = doc["placement"]
        assert placement["nearest"] and placement["summary"]
        if doc["segment_detail"]["active"]:
            assert placement["runner_up"]["segment"] != doc["segment"]
            assert f"to segment {doc['segment']} (" in placement["summary"]
        else:  # a segment the newest model retired: where the next evaluation puts it
            assert placement["runner_up"] is None
            assert placement["summary"].startswith(f"its segment {doc['segment']} is ")
        assert doc["not_placed_because"] is None and doc["changes"]
        assert doc["changes"][0]["to"] == doc["segment"]


def test_stream_app_explain_shows_the_same_document(explained_worker):
    worker, _, _ = explained_worker
    env = {**worker.env, "API_TOKEN": TOKEN}

    def same() -> tuple[dict[str, Any], dict[str, Any]] | None:
        shown = subprocess.run([*CLI, "explain", IN, "--url", worker.url, "--json"], env=env,
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        cli_doc, http_doc = orjson.loads(shown.stdout), explain_doc(worker, IN)
        return (cli_doc, http_doc) if cli_doc == http_doc else None

    cli_doc, _ = wait_for(same, 60, "the command's document to be the endpoint's")
    text = subprocess.run([*CLI, "explain", IN, "--url", worker.url], env=env,
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"customer {cli_doc['customer_id']}, as of ")
    assert any(line.startswith("segment: ") for line in lines), text.stdout
    assert "  almaty-buyers: member" in lines
    assert "        orders_total >= 1: 1 → true" in lines
    assert "          region == \"Almaty\": 'Almaty' → true" in lines
    unknown = subprocess.run([*CLI, "explain", "nobody-at-all", "--url", worker.url],
                             env=env, capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 1 and "does not know customer" in unknown.stderr


def test_explain_with_pseudonyms_never_shows_the_real_id(explained_worker):
    worker, shop_customers, _ = explained_worker
    alias = Pseudonymiser(SECRET).pseudonym
    for customer in (IN, OUT, NULLS, KEPT, *shop_customers):
        status, body = http_call(
            f"{worker.url}/customers/{urllib.parse.quote(customer, safe='')}/explain",
            headers=AUTH)
        assert status == 200, body
        assert orjson.loads(body)["customer_id"] == alias(customer)
        assert customer.encode() not in body, customer
        assert alias(customer).encode() in body
    text = subprocess.run([*CLI, "explain", IN, "--url", worker.url, "--token", TOKEN],
                          env=worker.env, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and IN not in text.stdout
    assert f"customer {alias(IN)}" in text.stdout


def test_explain_and_preview_need_the_token(explained_worker, tmp_path: Path):
    worker, _, _ = explained_worker
    path = f"/customers/{IN}/explain"
    document = orjson.dumps({"audiences": [{"name": "x", "condition": "views_7d >= 1"}]})
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, body = http_call(worker.url + path, headers=headers)
        assert status == 401 and IN.encode() not in body
        assert http_call(f"{worker.url}/customers/nobody/explain", headers=headers)[0] == 401
        status, body = http_call(f"{worker.url}/audiences/preview", document,
                                 {**headers, "Content-Type": "application/json"})
        assert status == 401, body
    assert http_call(worker.url + path, headers=AUTH)[0] == 200
    status, body = http_call(f"{worker.url}/audiences/preview", document,
                             {**AUTH, "Content-Type": "application/json"})
    assert status == 200 and orjson.loads(body)["audiences"][0]["name"] == "x"
    # The commands: status 2 with one line, without the token or with a wrong one.
    env = {k: v for k, v in worker.env.items() if k != "API_TOKEN"}
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text("audiences:\n  - name: x\n    condition: views_7d >= 1\n")
    for command in (["explain", IN], ["audiences", "preview", str(candidate)]):
        for token in ([], ["--token", "wrong"]):
            run = subprocess.run([*CLI, *command, "--url", worker.url, *token], env=env,
                                 capture_output=True, text=True, timeout=60)
            assert run.returncode == 2 and run.stdout == "", (command, run.stderr)
            assert ("refused the API token" if token else "needs an API token") in run.stderr


# -- preview --------------------------------------------------------------------------------

APPLIED = """\
audiences:
  - name: browsers
    condition: views_7d >= 3
  - name: buyers
    condition: orders_total >= 1
  - name: heavy-browsers
    condition: views_7d >= 5
  - name: window-shoppers
    condition: orders_total == 0
"""
CANDIDATE = """\
audiences:
  - name: browsers
    description: the condition changed (3 views before)
    condition: views_7d >= 5
  - name: buyers
    condition: orders_total >= 1
  - name: heavy-browsers
    description: stricter entry, and hysteresis; its members with 5 to 7 views stay
    condition: views_7d >= 8
    exit_condition: views_7d < 5
  - name: repeat-buyers
    condition: orders_total >= 2
"""


def preview_shop(now: int) -> list[tuple[str, bytes, bytes]]:
    """40 customers: c-0..c-9 view 6 products, c-10..c-19 four, the rest one; c-10..c-29
    buy once, c-10..c-14 twice."""
    events: list[tuple[str, bytes, bytes]] = []
    for i in range(40):
        c = f"c-{i}"
        views = 6 if i < 10 else 4 if i < 20 else 1
        events += [("click", c.encode(), click_msg(c, now - (60 - n) * MIN_MS, n,
                                                   "product_view", product_id=f"p{n}"))
                   for n in range(views)]
        orders = 2 if 10 <= i < 15 else 1 if 10 <= i < 30 else 0
        events += [("purchase", c.encode(), purchase_msg(c, now - (30 - n) * MIN_MS, n, 40.0))
                   for n in range(orders)]
    return events


def audience_docs(broker, worker: Worker, count: int) -> list[dict[str, Any]]:
    return [orjson.loads(m.value) for m in
            consume_all(broker.bootstrap_servers, worker.topics["audiences"], count)]


def published(worker: Worker) -> int:
    return int(metric_sum(worker.metrics(), "stream_app_audience_changes_total"))


def test_a_preview_changes_nothing_and_says_what_applying_the_file_does(make_worker, broker,
                                                                      tmp_path: Path):
    path = tmp_path / "audiences.yaml"
    path.write_text(APPLIED)
    # No model (a warm-up it never reaches): no re-scoring writes a customer meanwhile.
    worker = make_worker(AUDIENCES_FILE=path, AUDIENCES_RELOAD_S="0.5",
                         MODEL_WARMUP_SAMPLES="1000000").start()
    events = preview_shop(int(time.time() * 1000))
    produce(broker.bootstrap_servers, [(worker.topics[k], key, v) for k, key, v in events])
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
             == len(events), 120, "the events to be consumed")
    customers = [f"c-{i}" for i in range(40)]
    applied_members = {"browsers": 20, "buyers": 20, "heavy-browsers": 10,
                       "window-shoppers": 20}

    def applied_and_sent() -> bool:
        """The file's members are in place and every audience change is on the topic. At
        least one enter per member (70); a buyer whose click the worker took before its
        purchase (another topic, so either order) also entered and left window-shoppers."""
        reported = {a["name"]: a["members"] for a in worker.get("/audiences")[1]["audiences"]}
        sent = published(worker)
        return (reported == applied_members and sent >= sum(applied_members.values())
                and (sent - sum(applied_members.values())) % 2 == 0
                and len(audience_docs(broker, worker, sent)) == sent)

    wait_for(applied_and_sent, 90, "the file's members and their enter events")
    bootstrap = broker.bootstrap_servers
    changelog = f"{worker.app_id}-customers-changelog"
    watched = (worker.topics["audiences"], worker.topics["changes"], changelog)

    def snapshot() -> tuple[Any, ...]:
        return (tuple(tuple(sorted(end_offsets(bootstrap, t).items())) for t in watched),
                [worker.get(f"/customers/{c}")[1] for c in customers],
                worker.get("/audiences")[1], published(worker))

    before = snapshot()
    assert before[0][2] and sum(end for _, end in before[0][2]) > 0  # the changelog is seen
    assert {a["name"]: a["members"] for a in before[2]["audiences"]} == applied_members

    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(CANDIDATE)
    shown = subprocess.run([*CLI, "audiences", "preview", str(candidate), "--url", worker.url,
                            "--json"], env=worker.env, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    answer = orjson.loads(shown.stdout)
    text = subprocess.run([*CLI, "audiences", "preview", str(candidate), "--url", worker.url],
                          env=worker.env, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "heavy-browsers: 10 members, 0 would enter, 0 would exit" in text.stdout
    assert "dropped: window-shoppers (20 members would exit)" in text.stdout
    # Read-only: nothing sent, no customer written, the applied definitions unchanged.
    assert snapshot() == before

    applied_version = before[2]["version"]
    assert answer["complete"] is True and answer["workers"] == 1
    assert answer["applied_version"] == applied_version and answer["customers"] == 40
    figures = {a["name"]: (a["members"], a["would_enter"], a["would_exit"])
               for a in answer["audiences"]}
    assert figures == {"browsers": (10, 0, 10), "buyers": (20, 0, 0),
                       "heavy-browsers": (10, 0, 0), "repeat-buyers": (5, 5, 0)}
    assert answer["dropped"] == [{"name": "window-shoppers", "would_exit": 20}]
    by_name = {a["name"]: a for a in answer["audiences"]}
    assert by_name["buyers"]["overlap"] == {"repeat-buyers": 5}
    assert by_name["browsers"]["overlap"] == {"heavy-browsers": 10}
    assert by_name["browsers"]["segments"] == {"none": 10}  # no model: nobody placed
    assert set(by_name["repeat-buyers"]["sample"]) == {f"c-{i}" for i in range(10, 15)}

    # Apply the candidate: the worker reloads it and judges every stored customer again.
    path.write_text(CANDIDATE)
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_audience_reloads_total",
                                result="applied") == 1, 30, "the reload")
    version = worker.get("/audiences")[1]["version"]
    assert version == answer["version"] != applied_version
    names = [a["name"] for a in answer["audiences"]]

    def judged_again() -> dict[str, list[str]] | None:
        """Every customer's audiences, once each is as the new definitions judge it (in no
        dropped audience, and none that would change if judged now) and the worker's
        member counts say the same."""
        now: dict[str, list[str]] = {}
        for c in customers:
            status, doc = worker.get(f"/customers/{c}/explain")
            if status != 200 or not set(doc["audiences"]) <= set(names):
                return None
            if any(a["member"] != a["member_if_judged_now"] for a in doc["audience_conditions"]):
                return None
            now[c] = doc["audiences"]
        counted = Counter(name for inside in now.values() for name in inside)
        reported = {a["name"]: a["members"] for a in worker.get("/audiences")[1]["audiences"]}
        return now if reported == {n: counted[n] for n in names} else None

    after = wait_for(judged_again, 120, "the audience pass of the new definitions")
    reported = {a["name"]: a["members"] for a in worker.get("/audiences")[1]["audiences"]}
    assert reported == {name: members for name, (members, _, _) in figures.items()}

    # The enter/exit messages of the definitions change: one per membership that changed
    # (from the customers' states before and after), and what the preview said.
    was = {doc["customer_id"]: doc["audiences"] for doc in before[1]}
    moved: Counter[tuple[str, str]] = Counter()
    for c in customers:
        moved.update((name, "enter") for name in set(after[c]) - set(was[c]))
        moved.update((name, "exit") for name in set(was[c]) - set(after[c]))

    def definitions_changes() -> list[dict[str, Any]] | None:
        docs = audience_docs(broker, worker, published(worker))
        distinct = {d["event_id"]: d for d in docs if d["trigger"] == "definitions"}
        return list(distinct.values()) if len(distinct) == sum(moved.values()) else None

    changes = wait_for(definitions_changes, 60, "the definitions change's messages")
    assert {d["definitions_version"] for d in changes} == {version}
    sent = Counter((d["audience"], d["action"]) for d in changes)
    assert sent == moved
    for name, (_, enter, leave) in figures.items():
        assert (sent[(name, "enter")], sent[(name, "exit")]) == (enter, leave), name
    for dropped in answer["dropped"]:
        assert sent[(dropped["name"], "exit")] == dropped["would_exit"]
        assert sent[(dropped["name"], "enter")] == 0
    assert sum(sent.values()) == 10 + 5 + 20
