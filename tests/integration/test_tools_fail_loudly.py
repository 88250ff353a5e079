"""The command-line tools fail loudly and say why (issue 17).

* No broker (or no worker) answering: one line on stderr, a non-zero status, no traceback,
  for every tool that talks to Kafka or to a worker.
* ``replay`` waits for the worker and reports what it processed and what it rejected to the
  DLQ, by reason; any rejection is status 1.
* ``verify`` and ``evaluate`` against a worker with ``API_TOKEN``: ``--token`` (or
  ``API_TOKEN``) is sent; without it, or with a wrong one, one line saying so, status 2.
* ``audiences check`` lists every problem of a file, with the line and the audience.
* ``generate`` shows its progress while it sends.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from stream_app.core.validation import EventDecoder, InvalidEvent
from stream_app.tools.generator import SyntheticShop
from stream_app.tools.replay import read_lines
from stream_app.worker.broker import free_port
from tests.conftest import wait_for

TOKEN = "tok-loud-7d1c"
STEP_MS = 400_000


def cli(*args: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_app.tools.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def history(customers: int, events: int, seed: int = 23) -> list[bytes]:
    """Valid events of the synthetic shop, ending now (one JSON document each)."""
    now = int(time.time() * 1000)
    shop = SyntheticShop(customers, seed=seed, start_ms=now - events * STEP_MS,
                         step_ms=STEP_MS)
    return [e.value for e in shop.events(events)]


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


#: Lines the worker rejects, one reason each (the expected reasons are asked of the
#: decoder, not written down here).
BAD_LINES = [
    b"{not json",
    b'{"customer_id": "bad-1", "event_type": "page_view"',
    b'{"customer_id": "bad-2", "event_type": "page_view"}',
    b'{"customer_id": "bad-3", "order_id": "o-3", "amount": "lots"}',
    b'{"customer_id": "bad-4", "event_id": "e-4", "event_type": "page_view",'
    b' "ts": "3026-01-01T00:00:00Z"}',
    b"[]",
]


def expected_reasons(path: Path) -> Counter[str]:
    """The DLQ reasons of the lines of ``path``, read as ``replay`` reads them."""
    decoder = EventDecoder()
    reasons: Counter[str] = Counter()
    for key, value, kind in read_lines(path):
        try:
            decoder.decode_all(kind, key, value, "test")
        except InvalidEvent as exc:
            reasons[exc.reason] += 1
    return reasons


def no_broker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "API_TOKEN"}
    return {**env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}


@pytest.mark.parametrize("args", [
    ("replay", "{file}"),
    ("replay", "{file}", "--no-wait"),
    ("generate", "--customers", "5", "--duration", "1"),
    ("forget", "c-1"),
    ("watch", "--count", "1"),
    ("verify", "{file}", "--url", "{url}"),
    ("evaluate", "--url", "{url}", "--window", "0"),
])
def test_no_broker_or_worker_is_one_line_and_a_non_zero_status(args: tuple[str, ...],
                                                                tmp_path: Path) -> None:
    file = write(tmp_path / "events.jsonl", history(3, 10))
    url = f"http://127.0.0.1:{free_port()}"
    result = cli(*(a.format(file=file, url=url) for a in args), env=no_broker_env(),
                 timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach" in lines[0]
    assert result.stdout == ""


def test_replay_reports_what_the_worker_rejected_and_why(make_worker, tmp_path: Path) -> None:
    worker = make_worker().start()
    good = history(40, 300)
    mixed = write(tmp_path / "mixed.jsonl", good[:150] + BAD_LINES + good[150:])
    reasons = expected_reasons(write(tmp_path / "bad.jsonl", BAD_LINES))
    assert sum(reasons.values()) == len(BAD_LINES) and len(reasons) >= 3

    result = cli("replay", str(mixed), "--no-progress", "--url", worker.url, "--wait", "60",
                 env=worker.env)
    assert result.returncode == 1, result.stdout + result.stderr
    total = len(good) + len(BAD_LINES)
    breakdown = ", ".join(f"{n} {reason}" for reason, n in
                          sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    assert (f"replayed {total} messages from {mixed}: {len(good)} processed, "
            f"{len(BAD_LINES)} rejected ({breakdown}); DLQ topic {worker.topics['dlq']}"
            in result.stdout), result.stdout

    clean = write(tmp_path / "clean.jsonl", history(40, 200, seed=29))
    result = cli("replay", str(clean), "--no-progress", "--url", worker.url, env=worker.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "200 processed, 0 rejected" in result.stdout
    # The worker's model at the end (or that it has none yet) is the last line.
    assert "model version" in result.stdout or "no segment model yet" in result.stdout


def test_replay_without_a_worker_says_nothing_was_confirmed(broker, tmp_path: Path) -> None:
    file = write(tmp_path / "events.jsonl", history(3, 10))
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
           "STREAM_APP_ID": f"nobody-{os.getpid()}",
           **{var: f"nobody-{os.getpid()}-{var.lower()}" for var in
              ("CLICKSTREAM_TOPIC", "PURCHASES_TOPIC", "PROFILES_TOPIC", "DLQ_TOPIC")}}
    result = cli("replay", str(file), "--no-progress", "--wait", "2", env=env)
    assert result.returncode == 1
    assert "the worker consumed 0 of them" in result.stdout
    assert "not confirmed: 10 messages not consumed" in result.stderr
    assert "Traceback" not in result.stderr


def test_verify_and_evaluate_say_when_the_worker_wants_a_token(make_worker,
                                                                tmp_path: Path) -> None:
    worker = make_worker(API_TOKEN=TOKEN, SEGMENTS_K=4, MODEL_WARMUP_SAMPLES=20).start()
    events = write(tmp_path / "events.jsonl", history(30, 400))
    assert cli("replay", str(events), "--no-progress", "--url", worker.url,
               env=worker.env).returncode == 0
    without = {k: v for k, v in worker.env.items() if k != "API_TOKEN"}

    result = cli("verify", str(events), "--url", worker.url, env=without)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (f"stream-app verify: the worker at {worker.url} needs an "
                                     "API token (401 Unauthorized): pass --token or set "
                                     "API_TOKEN")
    assert "mismatch" not in result.stdout

    result = cli("verify", str(events), "--url", worker.url, "--token", "wrong", env=without)
    assert result.returncode == 2
    assert "refused the API token" in result.stderr and TOKEN not in result.stderr

    result = cli("verify", str(events), "--url", worker.url, "--token", TOKEN, env=without)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 mismatches" in result.stdout
    assert cli("verify", str(events), "--url", worker.url, env=worker.env).returncode == 0

    # evaluate reads customers for the ARI against the planted types: the same rule.
    wait_for(lambda: worker.get("/model")[0] == 200, 90, "a segment model")
    args = ("evaluate", "--url", worker.url, "--window", "0", "--planted-customers", "30",
            "--planted-seed", "23")
    result = cli(*args, env=without)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "needs an API token" in result.stderr and len(result.stderr.splitlines()) == 1
    result = cli(*args, "--token", TOKEN, env=without)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ari_planted" in result.stdout


def test_audiences_check_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "audiences.yaml"
    path.write_text(
        "audiences:\n"
        "  - name: lapsed\n"
        '    condition: days_since_last_order > 30 and regoin == "Almaty"\n'
        "  - name: recent\n"
        "    condition: $now > 1\n"
        "    exit_condition: views_7d\n"
        "  - name: fine\n"
        "    condition: views_7d >= 10\n"
        "  - name: lapsed\n"
        "    condition: views_7d >\n")
    result = subprocess.run([sys.executable, "-m", "stream_app.tools.cli", "audiences", "check",
                             str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [
        f"stream-app audiences check: {path}:3: audience 'lapsed': condition "
        "'days_since_last_order > 30 and regoin == \"Almaty\"': unknown name 'regoin' "
        "(did you mean 'region'?)",
        f"stream-app audiences check: {path}:5: audience 'recent': condition '$now > 1': "
        "builtin $now is not allowed: membership must depend only on the customer's "
        "attributes",
        f"stream-app audiences check: {path}:6: audience 'recent': exit_condition "
        "'views_7d': is not a true/false expression (its type is FLOAT)",
        f"stream-app audiences check: {path}:9: audience 'lapsed': the name is used twice",
        f"stream-app audiences check: {path}:10: audience 'lapsed': condition 'views_7d >': "
        "syntax error (incomplete expression)",
        f"stream-app audiences check: {path}: 5 problems; the worker would not load it",
    ]


def test_generate_shows_its_progress_while_it_sends(broker) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
           "CLICKSTREAM_TOPIC": f"gen-{os.getpid()}-clicks",
           "PURCHASES_TOPIC": f"gen-{os.getpid()}-purchases",
           "PROFILES_TOPIC": f"gen-{os.getpid()}-profiles",
           "FORCE_COLOR": "1", "COLUMNS": "120"}  # a terminal, as rich sees it
    result = cli("generate", "--customers", "20", "--rate", "200", "--duration", "3", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sent 600 messages for 20 customers"
    shown = {int(n) for n in re.findall(r"(\d+)/600", result.stderr)}
    assert 600 in shown and any(0 < n < 600 for n in shown), result.stderr
