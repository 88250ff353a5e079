"""Safe by default: no customer data on the network without a token, and no request a
client can send makes a worker answer 5xx, echo the request, or log a traceback or an id.

Real workers on the embedded broker (see conftest): the bind check runs the ``stream-app
worker`` command; the HTTP checks talk to one worker (token and ``PSEUDONYM_KEY`` set, the
default bind) over raw sockets, so that bytes no HTTP client would send (NUL, invalid
UTF-8, request lines over aiohttp's 8,190-byte limit) reach the server as written.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_app.config import Settings
from stream_app.tools.generator import SyntheticShop
from stream_app.worker.http_guard import BAD_REQUEST_BODY
from tests.conftest import Worker, http, metric_sum, produce, wait_for

TOKEN = "t0k-" + "s" * 28
#: Every id the fuzz invents starts with this, so one search of the log finds any echo.
MARK = "zqx7"
#: The customer of the attacker probe that found the echo (seed 11 below).
PROBED_ID = "c11-0000042"
STEP_MS = 600_000
_ids = itertools.count()


# -- the bind: refuse to serve customer data to the network without a token ----------------

@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "192.0.2.10", "no-such-host.invalid"])
def test_a_worker_without_token_refuses_a_non_loopback_bind(make_worker, bind):
    worker = make_worker(WEB_BIND=bind, API_TOKEN="", API_OPEN="")
    worker.start(wait_ready=False)
    assert worker.process is not None
    wait_for(lambda: worker.process.poll() is not None, 60, "the worker to refuse to start")
    assert worker.process.returncode == 2, worker.log()
    lines = [line for line in worker.log().splitlines() if "API_TOKEN" in line]
    assert len(lines) == 1, worker.log()
    assert lines[0].startswith("stream-app worker: API_TOKEN is empty and WEB_BIND=" + bind)
    assert "API_OPEN=true" in lines[0] and "Traceback" not in worker.log()


def test_the_opt_out_serves_on_every_interface_and_says_so(make_worker):
    worker = make_worker(WEB_BIND="0.0.0.0", API_TOKEN="", API_OPEN="true").start()
    assert listening_addresses(worker.web_port) == {"0.0.0.0"}
    assert worker.get("/health") == (200, {"status": "ok"})
    assert worker.get("/customers/c-1")[0] == 404  # open: no token asked
    assert "API_OPEN=true: customer data is served without a token" in (
        worker.log_path.read_text(errors="replace"))


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on TCP ``port`` (Linux ``/proc/net``)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            if len(raw) == 4:  # little-endian 32-bit words, as the kernel prints them
                found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
            else:
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


# -- one worker with a token and pseudonyms, probed over HTTP -------------------------------

@pytest.fixture(scope="module")
def api_worker(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker with ``API_TOKEN`` and ``PSEUDONYM_KEY``, default bind, and a model (so
    ``/segments/{id}`` gets past its "no model yet" answer), fed 60 customers of seed 11."""
    prefix = f"sec{os.getpid()}-{next(_ids)}"
    topics = {name: f"{prefix}-{name}" for name in ("click", "purchase", "profile", "changes",
                                                     "dlq", "erasure", "audiences")}
    worker = Worker(broker, tmp_path_factory.mktemp("security"), topics, f"{prefix}-app",
                    SEGMENTS_K=4, API_TOKEN=TOKEN, PSEUDONYM_KEY="pseudonym-key-of-the-test",
                    API_OPEN="", WEB_BIND="").start()
    now = int(time.time() * 1000)
    shop = SyntheticShop(60, seed=11, start_ms=now - 1500 * STEP_MS, step_ms=STEP_MS)
    events = list(shop.events(1500))
    produce(broker.bootstrap_servers, [(topics[e.kind], e.key, e.value) for e in events])
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
             == len(events), 120, "every event to be consumed")
    wait_for(lambda: worker.get("/model")[0] == 200, 120, "a model")
    worker.customer_ids = list(shop.customers)  # type: ignore[attr-defined]
    yield worker
    worker.stop()


def exchange(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, bytes, bytes]:
    """Send raw ``request`` bytes on a new connection; the answer's status, head and body
    (read to the close: every request says ``Connection: close`` or is refused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)  # refused before the end: the answer is still to be read
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    assert status, f"no HTTP answer to {request[:80]!r}: {head[:200]!r}"
    return int(status.group(1)), head, body


def get(target: bytes, headers: bytes = b"") -> bytes:
    return (b"GET " + target + b" HTTP/1.1\r\nHost: worker\r\n" + headers
            + b"Connection: close\r\n\r\n")


def test_the_default_bind_is_loopback_only(api_worker):
    assert Settings().web_bind == Settings.from_env({}).web_bind == "127.0.0.1"
    assert listening_addresses(api_worker.web_port) == {"127.0.0.1"}
    assert http(f"{api_worker.url}/health")[0] == 200


def test_an_oversize_request_line_gets_a_400_without_echo_or_traceback(api_worker):
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    padding = b"A" * 9000  # the request line is over aiohttp's 8,190 bytes
    status, head, body = exchange(api_worker.web_port,
                                  get(f"/customers/{PROBED_ID}?pad=".encode() + padding, auth))
    assert status == 400 and body == BAD_REQUEST_BODY and b"application/json" in head
    status, _, body = exchange(api_worker.web_port, get(b"/health", b"X-Pad: " + padding
                                                        + b"\r\n"))
    assert status == 400 and body == BAD_REQUEST_BODY  # and a header over 8,190 bytes
    # Python's int() limit (4,300 digits) and non-ASCII digits in a segment id: a 404.
    for segment in (b"9" * 4301, b"9" * 4300, b"%C2%B2", b"-1", b"1.5"):
        status, _, body = exchange(api_worker.web_port, get(b"/segments/" + segment))
        assert status == 404 and body == b'{"error":"unknown segment"}', (segment[:10], body)
    def logged() -> str | None:
        text = api_worker.log_path.read_text(errors="replace")
        return text if "rejected a malformed HTTP request" in text else None

    log = wait_for(logged, 30, "the warning about the malformed request")
    assert PROBED_ID not in log and "AAAAAAAA" not in log
    assert "Traceback" not in log and "Error handling request" not in log


# Routes of the worker (docs/interfaces.md, HTTP) and Faust's own pages, which are turned off.
ROUTES = ("/health", "/ready", "/metrics", "/model", "/segments", "/segments/{}",
          "/segments/_local", "/customers/{}", "/map/data", "/", "/audiences",
          "/table/{}", "/router/{}", "/graph/", "/stats/", "/{}", "/customers/{}/{}")


def percent_encoded(data: bytes) -> bytes:
    return urllib.parse.quote_from_bytes(data, safe=b"").encode()


def path_parts(customer_ids: list[str]) -> st.SearchStrategy[bytes]:
    """A path segment as sent: what a mistaken or hostile client might put there."""
    text = st.one_of(
        st.integers(4290, 4400).map(lambda n: "9" * n),  # Python's int() limit is 4,300
        st.integers().map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(str),
        st.text(max_size=40).map(lambda t: MARK + t),
        st.integers(8000, 9500).map(lambda n: MARK + "x" * n),  # over the 8,190-byte line
        st.sampled_from(customer_ids),
        st.sampled_from(["_local", "..", ".", "%", "%zz", "²", "٣", "0x1f", "1e999", " "]),
    )
    escaped = st.one_of(
        text.map(lambda t: percent_encoded(t.encode())),  # UTF-8, %-escaped
        text.map(lambda t: t.encode("utf-8")),  # raw bytes: the parser rejects non-ASCII
        st.binary(max_size=24).map(lambda b: percent_encoded(MARK.encode() + b)),  # %00, %FF
        st.binary(max_size=24).map(lambda b: MARK.encode() + b.replace(b" ", b"")
                                   .replace(b"\r", b"").replace(b"\n", b"")),
    )
    return escaped


HEADER_NAMES = st.sampled_from(["Authorization", "Accept", "Accept-Encoding", "Cookie",
                                "X-Forwarded-For", "Content-Type", "Range", "If-None-Match"])
HEADER_VALUES = st.one_of(
    st.just(f"Bearer {TOKEN}".encode()),
    st.text(max_size=30).map(lambda t: f"Bearer {MARK}{t}".encode()),  # UTF-8
    st.binary(max_size=40).map(lambda b: MARK.encode() + b),  # any byte but CR and LF
    st.integers(8200, 9000).map(lambda n: b"v" * n),  # over the 8,190-byte field limit
    st.sampled_from([b"text/html", b"*/*", b"bytes=0-1"]),
).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def requests(draw: st.DrawFn, customer_ids: list[str]) -> tuple[bytes, bytes]:
    """A request's bytes and the path template it fills (for the failure message)."""
    template = draw(st.sampled_from(ROUTES))
    parts = path_parts(customer_ids)
    path = template.encode()
    while b"{}" in path:
        path = path.replace(b"{}", draw(parts), 1)
    if draw(st.booleans()):
        pairs = draw(st.lists(st.tuples(st.sampled_from([b"since", b"x", b"pad", MARK.encode()]),
                                        parts), max_size=3))
        path += b"?" + b"&".join(k + b"=" + v for k, v in pairs)
    method = draw(st.sampled_from([b"GET", b"GET", b"GET", b"HEAD", b"POST", b"DELETE",
                                   b"OPTIONS"]))
    headers = draw(st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=3))
    head = b"".join(f"{k}: ".encode() + v + b"\r\n" for k, v in headers.items())
    return (method + b" " + path + b" HTTP/1.1\r\nHost: worker\r\n" + head
            + b"Connection: close\r\n\r\n"), template.encode()


def test_fuzzed_requests_never_get_a_5xx_an_echo_or_a_traceback(api_worker):
    customer_ids: list[str] = api_worker.customer_ids  # type: ignore[attr-defined]
    sent: list[bytes] = []
    statuses: dict[int, int] = {}

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(requests(customer_ids))
    def probe(request: tuple[bytes, bytes]) -> None:
        raw, template = request
        sent.append(raw)
        status, _, body = exchange(api_worker.web_port, raw)
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, (template, raw[:200], body[:300])
        assert b"Traceback" not in body and b"File \"" not in body, (raw[:200], body[:300])
        assert MARK.encode() not in body, (raw[:200], body[:300])  # nothing echoed
        assert not any(c.encode() in body for c in customer_ids), (raw[:200], body[:300])

    probe()
    assert any(400 <= s < 500 for s in statuses) and 200 in statuses, statuses
    api_worker.alive()
    log = api_worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Error handling request" not in log
    assert MARK not in log  # no invented id, raw or decoded
    sent_ids = {c for c in customer_ids if any(c.encode() in raw for raw in sent)}
    assert sent_ids and not [c for c in sent_ids if c in log]  # pseudonyms only, if any
