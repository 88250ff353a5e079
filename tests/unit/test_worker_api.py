"""stream_app.client.worker_api: the plain-text renderers on hand-made documents, the HTTP
calls against a small local ``http.server`` (in a thread), and the two commands built on
them (``stream-app explain``, ``stream-app audiences preview``) with their exit statuses."""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from stream_app.client import worker_api
from stream_app.client.worker_api import (
    WorkerAccessError,
    WorkerError,
    condition_lines,
    explain,
    explain_text,
    preview,
    preview_text,
)
from stream_app.core.explain import explain_condition
from stream_app.tools import verify
from stream_app.tools.cli import main

TOKEN = "s3cret-token"
ATTRIBUTES = {"orders_30d": 1, "region": "Almaty", "views_7d": 2, "revenue_30d": 120.5,
              "days_since_last_order": None, "segment": 3, "segment_label": "browser"}


def explained(**overrides: Any) -> dict[str, Any]:
    """An explain document as the worker builds it (conditions by explain_condition)."""
    doc = {
        "customer_id": "c-17", "as_of": "2026-11-24T10:00:00.000Z", "segment": 3,
        "segment_label": "frequent buyer · big basket", "model_version": 12,
        "features": {"orders_30d": 1, "views_7d": 2}, "profile": {"region": "Almaty"},
        "audiences": ["buyers"], "consent": {"segmentation": True},
        "segment_detail": {"id": 3, "label": "frequent buyer · big basket", "active": True,
                           "typical": "last order 3 days ago, 5 orders in all"},
        "placement": {
            "nearest": [
                {"segment": 3, "label": "frequent buyer · big basket", "distance": 0.7023,
                 "relative_to_own": 1.0},
                {"segment": 5, "label": "deal seeker", "distance": 2.5205,
                 "relative_to_own": 3.589}],
            "runner_up": {"segment": 5, "label": "deal seeker", "distance": 2.5205,
                          "relative_to_own": 3.589, "moves_when_distance_below": 0.3862,
                          "margin": 0.45, "confirmations_needed": 2,
                          "confirmations_so_far": 1},
            "pending": {"segment": 5, "confirmations_so_far": 1},
            "holding_it_here": [{"feature": "orders_total", "value": 5, "z": 0.698,
                                 "segment_z": 1.091, "other_segment_z": 2.362}],
            "pulling_to_runner_up": [{"feature": "discount_share_90d", "value": 0.5,
                                      "z": 1.2, "segment_z": 1.8, "other_segment_z": -0.4}],
            "summary": "nearest to segment 3 (frequent buyer · big basket); the runner-up, "
                       "segment 5 (deal seeker), is 3.589 times as far."},
        "not_placed_because": None,
        "changes": [
            {"at": "2026-11-24T10:00:00.000Z", "trigger": "model_update", "from": 1,
             "from_label": "browser", "to": 3, "to_label": "frequent buyer · big basket",
             "model_version": 12, "reasons": ["revenue_total", "orders_90d"]},
            {"at": "2026-11-20T08:00:00.000Z", "trigger": "event", "from": None,
             "from_label": None, "to": 1, "to_label": "browser", "model_version": 9,
             "reasons": [{"feature": "views_7d", "value": 9, "z": 1.5, "segment_z": 1.2}]}],
        "audience_conditions": [
            {"name": "buyers", "member": True, "member_if_judged_now": False,
             "condition": explain_condition(
                 'orders_30d >= 1 and (region == "Almaty" or revenue_30d >= 500)',
                 ATTRIBUTES),
             "exit_condition": None, "rule": "member while the condition holds"},
            {"name": "heavy-browsers", "member": False, "member_if_judged_now": False,
             "condition": explain_condition("views_7d >= 20", ATTRIBUTES),
             "exit_condition": explain_condition(
                 "views_7d < 10 or days_since_last_order > 30", ATTRIBUTES),
             "rule": "enters when the condition holds and the exit condition does not"}],
    }
    return doc | overrides


def previewed(**overrides: Any) -> dict[str, Any]:
    doc = {
        "version": "b758cf1f5af4", "applied_version": "356234ed5f24", "customers": 378,
        "audiences": [
            {"name": "browsers", "condition": "views_7d >= 10", "exit_condition": None,
             "members": 115, "would_enter": 0, "would_exit": 134,
             "segments": {"11": 105, "12": 9, "9": 1, "4": 1, "2": 1, "none": 1},
             "overlap": {"heavy-browsers": 75, "buyers-almaty": 4},
             "sample": ["c-1", "c-2"]},
            {"name": "app-buyers", "condition": "app_share_30d >= 0.5 and orders_30d >= 1",
             "exit_condition": "orders_30d == 0", "members": 11, "would_enter": 11,
             "would_exit": 0, "segments": {}, "overlap": {}, "sample": []}],
        "dropped": [{"name": "lapsed", "would_exit": 7}],
        "complete": True, "partitions_reporting": [0, 1, 2, 3], "workers": 2,
        "seconds": 0.04,
    }
    return doc | overrides


# -- the renderers ------------------------------------------------------------------------

def test_explain_text_shows_the_segment_placement_changes_and_every_clause():
    text = explain_text(explained())
    lines = text.splitlines()
    assert lines[0] == "customer c-17, as of 2026-11-24T10:00:00.000Z"
    assert "segment: 3 (frequent buyer · big basket), from model version 12" in lines
    assert "  typical: last order 3 days ago, 5 orders in all" in lines
    assert any(line.startswith("placement: nearest to segment 3") for line in lines)
    assert "    segment 5 (deal seeker): distance 2.521  (3.589 × its own)" in lines
    assert ("  runner-up: segment 5 (deal seeker); a move needs its distance below 0.3862 "
            "(now 2.521; margin 0.45, 1 of 2 confirmations)") in lines
    assert "  pending: a move to segment 5, 1 confirmation(s) so far" in lines
    assert "orders_total = 5 (z 0.698; own 1.091, runner-up 2.362)" in text
    assert "discount_share_90d = 0.5 (z 1.2; runner-up 1.8, own -0.4)" in text
    # Changes, newest first, with triggers and reasons (names, or features with values).
    assert ("  2026-11-24T10:00:00.000Z  model_update: segment 1 (browser) → 3 (frequent "
            "buyer · big basket), model 12; reasons: revenue_total, orders_90d") in lines
    assert ("  2026-11-20T08:00:00.000Z  event: segment none → 1 (browser), model 9; "
            "reasons: views_7d = 9 (z 1.5; segment 1.2)") in lines
    # Each audience: membership, rule, then every clause indented by its depth.
    start = lines.index("  buyers: member (would leave if judged now)")
    assert lines[start + 1:start + 8] == [
        "    rule: member while the condition holds",
        "    condition:",
        "      all of 2 → true",
        "        orders_30d >= 1: 1 → true",
        "        any of 2 → true",
        "          region == \"Almaty\": 'Almaty' → true",
        "          revenue_30d >= 500: 120.5 → false",
    ]
    assert lines[start + 8] == ("    exit condition: none (leaves when the condition no "
                                "longer holds)")
    heavy = lines.index("  heavy-browsers: not a member")
    assert lines[heavy + 1:heavy + 8] == [
        "    rule: enters when the condition holds and the exit condition does not",
        "    condition:",
        "      views_7d >= 20: 2 → false",
        "    exit condition:",
        "      any of 2 → true",
        "        views_7d < 10: 2 → true",
        "        days_since_last_order > 30: null → cannot be evaluated (null), does not hold",
    ]


def test_explain_text_of_a_customer_not_placed_and_without_audiences():
    doc = explained(segment=None, segment_label=None, segment_detail=None, placement=None,
                    not_placed_because="too little behaviour: a purchase, or 3 clicks in 90 "
                                       "days, places a customer",
                    changes=[], audience_conditions=[], consent={"segmentation": False})
    lines = explain_text(doc).splitlines()
    assert lines[1:] == [
        "consent to segmentation withdrawn", "segment: none",
        "not placed: too little behaviour: a purchase, or 3 clicks in 90 days, places a "
        "customer", "last changes: none", "audiences: none defined"]


def test_condition_lines_follow_the_tree_depth_first():
    tree = explain_condition("orders_30d >= 1 or (views_7d < 2 and age == 3)",
                             {"orders_30d": 0, "views_7d": 1, "age": 3})
    assert condition_lines(tree, 1) == [
        "  any of 2 → true", "    orders_30d >= 1: 0 → false", "    all of 2 → true",
        "      views_7d < 2: 1 → true", "      age == 3: 3 → true"]
    assert condition_lines(None) == []


def test_preview_text_shows_every_figure():
    lines = preview_text(previewed()).splitlines()
    assert lines == [
        "definitions b758cf1f5af4 (applied now: 356234ed5f24), judged on 378 customers",
        "browsers: 115 members, 0 would enter, 134 would exit",
        "  condition: views_7d >= 10",
        "  segments: segment 11: 105, segment 12: 9, segment 9: 1, segment 4: 1, "
        "segment 2: 1, … (1 more)",
        "  overlap: heavy-browsers: 75, buyers-almaty: 4",
        "  sample: c-1, c-2",
        "app-buyers: 11 members, 11 would enter, 0 would exit",
        "  condition: app_share_30d >= 0.5 and orders_30d >= 1",
        "  exit condition: orders_30d == 0",
        "  segments: none",
        "  overlap: none",
        "  sample: none",
        "dropped: lapsed (7 members would exit)",
        "complete: every partition reported (4), 2 workers, 0.04 s",
    ]


def test_preview_text_names_segments_with_their_labels():
    lines = preview_text(previewed(segment_labels={"11": "heavy browser", "9": "big spender"})
                         ).splitlines()
    assert lines[3] == ("  segments: segment 11 (heavy browser): 105, segment 12: 9, segment 9 "
                        "(big spender): 1, segment 4: 1, segment 2: 1, … (1 more)")


def test_explain_text_of_a_customer_in_a_retired_segment():
    placement = {"nearest": [{"segment": 2, "label": "browser", "distance": 0.5,
                              "relative_to_own": None}],
                 "runner_up": None, "pending": None,
                 "summary": "its segment 3 is retired: at its next evaluation it moves to the "
                            "nearest live segment, 2 (browser)."}
    lines = explain_text(explained(
        placement=placement, segment_detail={"id": 3, "label": "old", "active": False,
                                             "typical": "5 orders in all"})).splitlines()
    assert "segment: 3 (frequent buyer · big basket) (retired), from model version 12" in lines
    start = lines.index("placement: its segment 3 is retired: at its next evaluation it moves "
                        "to the nearest live segment, 2 (browser).")
    assert lines[start + 1:start + 4] == ["  nearest segments:",
                                          "    segment 2 (browser): distance 0.5",
                                          "last changes (newest first):"]


def test_preview_text_says_when_the_answer_is_partial():
    last = preview_text(previewed(complete=False, partitions_reporting=[0, 2], workers=1,
                                  dropped=[])).splitlines()
    assert not any(line.startswith("dropped") for line in last)
    assert last[-1].startswith("PARTIAL: not every customer was judged (partitions "
                               "reporting: 0, 2;")
    assert last[-1].endswith(", 1 worker, 0.04 s")


def test_verify_still_offers_the_access_errors():
    assert verify.WorkerAccessError is WorkerAccessError
    assert verify.access_error is worker_api.access_error


# -- HTTP against a local server ------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    """Answers like a worker with ``API_TOKEN``: one known customer, previews, errors."""

    seen: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorised(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        self.answer(401, {"error": "this endpoint needs a bearer token"})
        return False

    def do_GET(self) -> None:
        self.seen.append({"method": "GET", "path": self.path})
        if self.path.startswith("/customers/boom"):
            self.answer(500, {"error": "something broke"})
            return
        if not self.authorised():
            return
        if self.path == "/customers/a%20b%2Fc%C3%A9/explain":
            self.answer(200, explained(customer_id="a b/cé"))
        else:
            self.answer(404, {"error": "unknown customer"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        self.seen.append({"method": "POST", "path": self.path, "body": body,
                          "type": self.headers.get("Content-Type")})
        if not self.authorised():
            return
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        names = [a["name"] for a in body["audiences"]]
        if "refused" in names:
            self.answer(400, {"error": "<preview>: audience 'refused': condition 'x': "
                                       "unknown name"})
            return
        partial = float(query["time_limit"][0]) < 1
        self.answer(200, previewed(complete=not partial))


@pytest.fixture()
def server() -> Iterator[str]:
    Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_explain_quotes_the_id_and_sends_the_token(server: str):
    doc = explain(server + "/", "a b/cé", token=TOKEN)
    assert doc is not None and doc["customer_id"] == "a b/cé"
    assert Handler.seen[-1]["path"] == "/customers/a%20b%2Fc%C3%A9/explain"


def test_explain_of_an_unknown_customer_is_none(server: str):
    assert explain(server, "nobody", token=TOKEN) is None


def test_explain_without_or_with_a_wrong_token_is_an_access_error(server: str):
    with pytest.raises(WorkerAccessError, match=re.escape(
            "needs an API token (401 Unauthorized): pass --token or set API_TOKEN")):
        explain(server, "a b/cé")
    with pytest.raises(WorkerAccessError, match="refused the API token"):
        explain(server, "a b/cé", token="wrong")
    assert WorkerAccessError.status == 2


def test_a_worker_error_and_no_worker_at_all(server: str):
    with pytest.raises(WorkerError, match="answered 500: something broke"):
        explain(server, "boom", token=TOKEN)
    with pytest.raises(WorkerAccessError,
                       match=r"cannot reach the worker at .*: connection refused"):
        explain("http://127.0.0.1:1", "c-1")


def test_preview_posts_the_document_with_the_time_limit(server: str):
    document = {"audiences": [{"name": "browsers", "condition": "views_7d >= 10"}]}
    answer = preview(server, document, token=TOKEN, time_limit_s=12.5)
    assert answer["complete"] is True and answer["audiences"][0]["members"] == 115
    request = Handler.seen[-1]
    assert request["method"] == "POST" and request["body"] == document
    assert request["path"] == "/audiences/preview?time_limit=12.5"
    assert request["type"] == "application/json"


def test_preview_refused_by_the_worker_is_a_value_error_with_its_text(server: str):
    with pytest.raises(ValueError, match="audience 'refused': condition 'x': unknown name"):
        preview(server, {"audiences": [{"name": "refused", "condition": "x"}]}, token=TOKEN)
    with pytest.raises(WorkerAccessError, match="needs an API token"):
        preview(server, {"audiences": []})


# -- the commands ---------------------------------------------------------------------------

def run_cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), env={"API_TOKEN": TOKEN})


def test_stream_app_explain(server: str):
    shown = run_cli("explain", "a b/cé", "--url", server)
    assert shown.exit_code == 0, shown.output
    assert "          revenue_30d >= 500: 120.5 → false" in shown.output.splitlines()
    as_json = run_cli("explain", "a b/cé", "--url", server, "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.output) == json.loads(
        json.dumps(explained(customer_id="a b/cé")))
    unknown = run_cli("explain", "nobody", "--url", server)
    assert unknown.exit_code == 1
    assert "does not know customer 'nobody'" in unknown.output
    refused = run_cli("explain", "a b/cé", "--url", server, "--token", "wrong")
    assert refused.exit_code == 2 and "refused the API token" in refused.output


def test_stream_app_audiences_preview(server: str, tmp_path: Path):
    good = tmp_path / "candidate.yaml"
    good.write_text("audiences:\n  - name: browsers\n    description: ten views\n"
                    "    condition: views_7d >= 10\n    exit_condition: views_7d < 5\n")
    shown = run_cli("audiences", "preview", str(good), "--url", server)
    assert shown.exit_code == 0, shown.output
    assert "browsers: 115 members, 0 would enter, 134 would exit" in shown.output
    assert Handler.seen[-1]["body"] == {"audiences": [
        {"name": "browsers", "description": "ten views", "condition": "views_7d >= 10",
         "exit_condition": "views_7d < 5"}]}
    as_json = run_cli("audiences", "preview", str(good), "--url", server, "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.output)["customers"] == 378
    partial = run_cli("audiences", "preview", str(good), "--url", server,
                      "--time-limit", "0.5")
    assert partial.exit_code == 3 and "PARTIAL" in partial.output
    refused = run_cli("audiences", "preview", str(good), "--url", server, "--token", "no")
    assert refused.exit_code == 2 and "refused the API token" in refused.output
    unreachable = run_cli("audiences", "preview", str(good), "--url", "http://127.0.0.1:1")
    assert unreachable.exit_code == 2 and "cannot reach the worker" in unreachable.output


def test_stream_app_audiences_preview_of_an_invalid_file_sends_nothing(server: str,
                                                                        tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("audiences:\n  - name: browsers\n    condition: view_count >= 3\n")
    failed = run_cli("audiences", "preview", str(bad), "--url", server)
    assert failed.exit_code == 2 and "view_count" in failed.output
    assert "nothing previewed" in failed.output
    assert Handler.seen == []
    refused = tmp_path / "refused.yaml"  # valid here, refused by the (fake) worker
    refused.write_text("audiences:\n  - name: refused\n    condition: views_7d > 1\n")
    answer = run_cli("audiences", "preview", str(refused), "--url", server)
    assert answer.exit_code == 2 and "the worker refused" in answer.output
