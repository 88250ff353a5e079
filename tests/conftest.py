"""Shared fixtures: a real Tansu broker per session, and real workers as child processes.

Nothing here mocks Kafka or Faust: the broker is the Tansu binary listening on a free
port, workers are ``stream-app worker`` processes, and tests talk to both over TCP.

The tests come in three tiers, one directory each, marked by :func:`pytest_collection_modifyitems`:
``tests/unit`` (no broker, no worker process: ``make test-fast`` runs them with the
doctests), ``tests/integration`` (a broker and workers) and ``tests/system`` (recovery,
outages, soak, bench, the browser). ``make test`` runs all of them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from stream_app.worker.broker import EmbeddedBroker, free_port

_ids = itertools.count()

TIERS = ("unit", "integration", "system")
#: Fixtures that start a broker or a worker process: not for the unit tier.
BROKER_FIXTURES = frozenset({"broker", "make_worker"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier (the directory under ``tests/``); a unit test that asks
    for a broker or a worker is a collection error, so ``make test-fast`` stays fast."""
    tests = Path(__file__).parent
    for item in items:
        path = Path(str(item.path))
        if tests not in path.parents:
            continue  # the doctests of stream_app
        parts = path.relative_to(tests).parts
        if len(parts) == 1 and not parts[0].startswith("test_"):
            continue  # doctests of the shared helpers (factories, faultproxy)
        tier = parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{path}: tests live in tests/{{{','.join(TIERS)}}}/")
        item.add_marker(getattr(pytest.mark, tier))
        wanted = BROKER_FIXTURES & set(getattr(item, "fixturenames", ()))
        if tier == "unit" and wanted:
            raise pytest.UsageError(f"{item.nodeid} is a unit test but uses {sorted(wanted)}: "
                                    "move it to tests/integration")


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except (OSError, ValueError, KeyError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: "
                         f"{last_error!r})")


def http(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None
         ) -> tuple[int, bytes]:
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse a Prometheus exposition into {(sample name, sorted labels): value}."""
    status, body = http(url)
    assert status == 200, body
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric_sum(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


class Worker:
    """A ``stream-app worker`` child process with its own topics and web port."""

    def __init__(self, broker: EmbeddedBroker, data_dir: Path, topics: dict[str, str],
                 app_id: str, **env: Any) -> None:
        self.web_port = free_port()
        self.data_dir = data_dir
        self.topics = topics
        self.app_id = app_id
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "STREAM_APP_EMBEDDED_BROKER": "true",
            "STREAM_APP_ID": app_id,
            "CLICKSTREAM_TOPIC": topics["click"],
            "PURCHASES_TOPIC": topics["purchase"],
            "PROFILES_TOPIC": topics["profile"],
            "SEGMENT_CHANGES_TOPIC": topics["changes"],
            "AUDIENCE_CHANGES_TOPIC": topics["audiences"],
            "SEGMENT_CATALOGUE_TOPIC": topics.get("catalogue", f"{app_id}-segment-catalogue"),
            "DLQ_TOPIC": topics["dlq"],
            "ERASURE_TOPIC": topics["erasure"],
            "WEB_PORT": str(self.web_port),
            "DATA_DIR": str(data_dir / "state"),
            "MODEL_PUBLISH_INTERVAL": "1",
            **{k: str(v) for k, v in env.items()},
        }
        self.log_path = data_dir / f"worker-{self.web_port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, wait_ready: bool = True) -> Worker:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stream_app.tools.cli", "worker"], env=self.env,
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        if wait_ready:
            wait_for(self.assigned, 90, f"worker on {self.web_port} to get partitions")
        return self

    def alive(self) -> None:
        """Fail at once, with the log, if the worker has exited (a poll would only time out
        on refused connections). A worker stopped by :meth:`stop` is not checked."""
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"worker on {self.web_port} exited with "
                                 f"{self.process.returncode}:\n{self.log()}")

    def assigned(self) -> bool:
        assert self.process is not None, "worker not started"
        self.alive()
        status, body = http(f"{self.url}/ready", 2)
        return status in (200, 503) and orjson.loads(body)["partitions_assigned"]

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        self.alive()
        status, body = http(self.url + path, headers=headers)
        return status, orjson.loads(body)

    def metrics(self) -> dict:
        self.alive()
        return scrape(f"{self.url}/metrics")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        code = self.process.returncode
        self.process = None
        return code


@pytest.fixture()
def make_worker(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Factory of workers with topics unique to the test (shared by its workers)."""
    n = next(_ids)
    prefix = f"t{os.getpid()}-{n}"
    topics = {"click": f"{prefix}-clickstream", "purchase": f"{prefix}-purchases",
              "profile": f"{prefix}-profiles", "changes": f"{prefix}-segment-changes",
              "dlq": f"{prefix}-dlq", "erasure": f"{prefix}-customer-erasure",
              "audiences": f"{prefix}-audience-changes",
              "catalogue": f"{prefix}-segment-catalogue"}
    workers: list[Worker] = []

    def make(**env: Any) -> Worker:
        w = Worker(broker, tmp_path / f"w{len(workers)}", topics, f"{prefix}-app", **env)
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.stop()


def produce(bootstrap: str, messages: list[tuple[str, bytes | None, bytes]]) -> None:
    """Send (topic, key, value) messages in order and wait for every acknowledgement."""
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(t, v, key=k) for t, k, v in messages]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def wait_until_settled(worker, timeout: float = 180) -> None:
    """Until the learner, its last model (the refinement once samples stop) and that
    model's re-scoring and sweeps are done."""
    previous: list[tuple[float, ...]] = [()]

    def settled() -> bool:
        m = worker.metrics()
        now = tuple(metric_sum(m, name) for name in (
            "stream_app_segment_changes_total", "stream_app_model_version",
            "stream_app_learner_samples_learned_total", "stream_app_learner_samples_sent_total"))
        done, previous[0] = now == previous[0], now
        return done and now[2] == now[3] and not metric_sum(m, "stream_app_rescore_waiting")

    # Polled less often than MODEL_PUBLISH_INTERVAL (1 s for the tests' workers, 5 s by
    # default): a quiet interval has no publish pending.
    wait_for(settled, timeout, "learning, model updates and re-scoring to settle",
             interval=6.0)


def consume_all(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list[Any]:
    """The first ``count`` messages of ``topic`` (all partitions); fails if fewer arrive."""
    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while len(out) < count:
                if time.monotonic() > deadline:
                    raise AssertionError(f"only {len(out)} of {count} messages on {topic}")
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    out.extend(messages)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(run())
