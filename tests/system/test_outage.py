"""Broker outages as they happen in production: the network to the broker goes away.

The broker here is Tansu behind :class:`tests.faultproxy.FaultProxy`: it listens on one
port and advertises the proxy's, so workers reach it only through the proxy, and the test
cuts every connection (the broker and its in-memory data stay up) and restores them.
(Restarting the embedded broker would not be an outage: it keeps data in memory only.)

What a worker does (see :mod:`stream_app.worker.connectivity`): it keeps running, logs that Kafka
is unreachable and, when it answers again, that it is back; it then resumes from its last
committed offsets by itself, and the features are exact. SIGTERM during an outage exits
with status 75 after ``SHUTDOWN_TIMEOUT_S``. Without a broker at start-up: status 2.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import orjson
import pytest

from stream_app.tools.batch import recompute
from stream_app.tools.verify import compare
from stream_app.worker.broker import EmbeddedBroker, free_port
from stream_app.worker.connectivity import PROBE_INTERVAL_S, PROBE_TIMEOUT_S
from tests.conftest import metric_sum, produce, wait_for
from tests.factories import as_triples, shop_events
from tests.faultproxy import CutMode, FaultProxy

LATENESS_MS = 3_600_000


@pytest.fixture(scope="module")
def proxied_broker(tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[EmbeddedBroker, FaultProxy]]:
    """Tansu on its own port, advertising the port of a fault proxy in front of it."""
    broker_port = free_port()
    with FaultProxy("127.0.0.1", broker_port) as proxy:
        log = tmp_path_factory.mktemp("proxied-broker") / "tansu.log"
        with EmbeddedBroker(port=broker_port, advertised_port=proxy.port,
                            log_path=log) as broker:
            yield broker, proxy


@pytest.fixture(scope="module")
def broker(proxied_broker: tuple[EmbeddedBroker, FaultProxy]) -> EmbeddedBroker:
    """Overrides conftest's session broker: this module's workers connect via the proxy."""
    return proxied_broker[0]


@pytest.fixture()
def proxy(proxied_broker: tuple[EmbeddedBroker, FaultProxy]) -> Iterator[FaultProxy]:
    fault_proxy = proxied_broker[1]
    yield fault_proxy
    fault_proxy.restore()  # a failed test leaves the next one a working network



def mismatches(worker, events: list[tuple[str, bytes, bytes]]) -> list:
    batch = recompute([orjson.loads(v) for _, _, v in events], lateness_ms=LATENESS_MS)

    def fetch(customer_id: str) -> dict | None:
        status, doc = worker.get(f"/customers/{customer_id}")
        return doc if status == 200 else None

    return compare(batch, fetch)


def consumed(worker) -> float:
    return metric_sum(worker.metrics(), "stream_app_events_consumed_total")


def log_since(worker, offset: int) -> str:
    with open(worker.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


@pytest.mark.parametrize(("mode", "outage_s"), [("blackhole", 60.0), ("refuse", 15.0)])
def test_worker_rides_out_a_network_outage_mid_stream(make_worker, broker, proxy,
                                                      mode: CutMode, outage_s: float):
    """Black hole: connections accepted, never answered, for 60 s (longer than aiokafka's
    40 s request timeout). Refuse: every connection closed at once, for 15 s."""
    worker = make_worker().start()
    events = as_triples(shop_events(1500, 12_000, seed=11, step_ms=60_000))
    first, second = events[:10_000], events[10_000:]
    produce(broker.bootstrap_servers, [(worker.topics[k], key, v) for k, key, v in first])
    wait_for(lambda: consumed(worker) >= 1000, 120, "the worker to be processing")

    log_at_cut = worker.log_path.stat().st_size
    proxy.cut(mode)
    at_cut = consumed(worker)
    assert at_cut < len(first), "the outage must come mid-stream"
    unreachable = f"Kafka at 127.0.0.1:{proxy.port} is unreachable"
    wait_for(lambda: unreachable in log_since(worker, log_at_cut), 15,
             "the worker to log that Kafka is unreachable")
    time.sleep(max(0.0, outage_s - (time.monotonic() - proxy.cut_at)))  # the outage itself
    attempts_per_s = proxy.attempts_per_second()
    during = log_since(worker, log_at_cut)
    at_restore = consumed(worker)
    proxy.restore()
    restored = time.monotonic()

    assert worker.process.poll() is None, worker.log()
    # Retries with a backoff, not a spin (aiokafka's 100 ms made ~75 per second), and a
    # log that says what happens rather than ~190 connection errors a second.
    assert attempts_per_s < 20, attempts_per_s
    assert during.count("[ERROR]") < 30, during[-3000:]

    wait_for(lambda: consumed(worker) > at_restore, 120, "consumption to resume")
    resumed_after = time.monotonic() - restored
    produce(broker.bootstrap_servers, [(worker.topics[k], key, v) for k, key, v in second])
    wait_for(lambda: consumed(worker) >= len(events), 300, "every event", interval=1.0)
    wait_for(lambda: not mismatches(worker, events), 120, "features equal to the batch "
             "recomputation", interval=2.0)
    # The watch's probe in flight at the restore may still time out (its connection was
    # cut); the next one, an interval later, finds the broker: the line comes within
    # one probe timeout and one interval of the restore.
    back = f"Kafka at 127.0.0.1:{proxy.port} is reachable again after"
    deadline = restored + PROBE_TIMEOUT_S + PROBE_INTERVAL_S + 20  # 20 s: a busy machine
    wait_for(lambda: back in log_since(worker, log_at_cut),
             max(1.0, deadline - time.monotonic()), "the worker to log that Kafka is "
             "reachable again")
    # Input read again after the outage (offsets not yet committed) is recognised by
    # event_id: every message consumed beyond the input's own count is a dropped duplicate.
    m = worker.metrics()
    assert (metric_sum(m, "stream_app_duplicate_events_total")
            == metric_sum(m, "stream_app_events_consumed_total") - len(events))
    print(f"outage {mode} {outage_s:.0f} s: {attempts_per_s:.1f} connection attempts/s, "
          f"{during.count('[ERROR]')} ERROR lines, consumption resumed {resumed_after:.1f} s after "
          f"the restore, {metric_sum(m, 'stream_app_duplicate_events_total'):.0f} redelivered")


def test_sigterm_stops_a_worker_while_the_broker_is_unreachable(make_worker, broker, proxy):
    worker = make_worker(SHUTDOWN_TIMEOUT_S="10").start()
    events = as_triples(shop_events(200, 500, seed=5, step_ms=60_000))
    produce(broker.bootstrap_servers, [(worker.topics[k], key, v) for k, key, v in events])
    wait_for(lambda: consumed(worker) == len(events), 120, "the events to be consumed")
    proxy.cut("blackhole")
    wait_for(lambda: "is unreachable" in worker.log(), 60, "the worker to notice the outage")
    started = time.monotonic()
    code = worker.stop(timeout=60)
    took = time.monotonic() - started
    print(f"SIGTERM during an outage: exit status {code} after {took:.1f} s")
    assert code == 75, worker.log()
    assert took < 30
    assert "did not stop within SHUTDOWN_TIMEOUT_S=10 s" in worker.log()


def test_worker_against_a_black_holed_broker_fails_fast_with_a_clear_message(make_worker,
                                                                              proxy):
    worker = make_worker()
    proxy.cut("blackhole")  # connections are accepted and never answered
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "stream_app.tools.cli", "worker"],
                            env=worker.env, capture_output=True, text=True, timeout=180)
    took = time.monotonic() - started
    print(f"start-up against a black hole: exit status {result.returncode} after {took:.1f} s")
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"cannot reach Kafka at 127.0.0.1:{proxy.port} within 30 s" in result.stderr
    assert "no answer" in result.stderr and "KAFKA_BOOTSTRAP_SERVERS" in result.stderr
    assert took < 60
    assert proxy.attempts_while_cut >= 1  # it did try, through the proxy
