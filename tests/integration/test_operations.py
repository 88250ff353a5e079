"""Operations: the monitoring files against real tools and a live worker.

Prometheus, promtool and docker-compose are Debian packages (``make test`` installs them
when missing, through ``make ops-tools``). Prometheus runs for real here: the
project's scrape config pointed at a live worker, the project's alert rules loaded.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from stream_app.worker.broker import free_port
from tests.conftest import http, metric_sum, produce, wait_for
from tests.factories import shop_events

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
ALERTS = OPS / "prometheus" / "alerts.yml"
DASHBOARD = OPS / "grafana" / "dashboards" / "stream-app.json"
METRIC = re.compile(r"\bstream_app_[a-z0-9_]+")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make ops-tools` installs the Debian packages "
                    "prometheus and docker-compose")
    return path


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    doc = orjson.loads(DASHBOARD.read_bytes())
    return [(panel["title"], target["expr"])
            for panel in doc["panels"] for target in panel["targets"]]


# -- files, checked by the real tools ------------------------------------------------------

def test_alert_rules_and_prometheus_config_pass_promtool():
    promtool = tool("promtool")
    for args in (("check", "rules", str(ALERTS)),
                 ("check", "config", str(OPS / "prometheus" / "prometheus.yml")),
                 ("test", "rules", "alerts.test.yml")):
        result = run(promtool, *args, cwd=OPS / "prometheus")
        assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (OPS / "prometheus" / "alerts.test.yml")
                            .read_text()))
    assert tested == {rule["alert"] for rule in alert_rules()}  # every alert has a test


def test_compose_file_is_valid_for_docker_compose():
    result = run(tool("docker-compose"), "config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_services_agree_with_the_app_configuration():
    from stream_app.config import Settings
    from stream_app.tools.cli import main

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    known_env = set(Settings.env_names().values())
    workers = {name: s for name, s in services.items() if s.get("command") == ["worker"]}
    assert len(workers) == 2
    for name, service in services.items():
        if service.get("build") != ".":
            continue
        command, *args = service["command"]
        assert command in main.commands, (name, command)
        if command != "worker":  # options parse as the CLI would parse them
            main.commands[command].make_context(command, list(args))
        assert set(service["environment"]) <= known_env, (name, set(service["environment"])
                                                          - known_env)
        assert service["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    targets = []
    for name, service in workers.items():
        env = service["environment"]
        port = env["WEB_PORT"]
        assert env["WEB_HOST"] == service["hostname"] == name
        published = [p.split(":") for p in service["ports"]]
        assert [container for _, container in published] == [port], name
        assert port in str(service["healthcheck"]["test"]), name
        targets.append(f"{service['hostname']}:{port}")

    # Prometheus scrapes exactly the workers, with the rule file the compose mounts.
    prom = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert sorted(job["static_configs"][0]["targets"]) == sorted(targets)
    assert "./ops/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert all((OPS / "prometheus" / f).exists() for f in prom["rule_files"])

    # Grafana is provisioned with the dashboard and a datasource the panels name.
    grafana = services["grafana"]["volumes"]
    assert "./ops/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana
    datasources = yaml.safe_load((OPS / "grafana" / "provisioning" / "datasources"
                                  / "prometheus.yml").read_text())["datasources"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {datasources[0]["uid"]}
    provider = yaml.safe_load((OPS / "grafana" / "provisioning" / "dashboards"
                               / "stream-app.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dockerfile_installs_the_package_as_the_readme_says():
    dockerfile = (ROOT / "Dockerfile").read_text()
    (install,) = re.findall(r"pip install (?:--no-cache-dir )?('\.\[[a-z,]+\]')", dockerfile)
    readme = (ROOT / "README.md").read_text()
    assert f"pip install {install}" in readme
    for copied in re.findall(r"^COPY (.+) \./", dockerfile, flags=re.M):
        for path in copied.split():
            assert (ROOT / path).exists(), path
    assert re.search(r'^ENTRYPOINT \["stream-app"\]', dockerfile, flags=re.M)


# -- a live worker -------------------------------------------------------------------------


class Prometheus:
    """Debian's Prometheus server with the project's config, scraping ``target``."""

    def __init__(self, workdir: Path, target: str) -> None:
        config = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(OPS / "prometheus" / f) for f in config["rule_files"]]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = open(workdir / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={path}",
             f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http(f"http://127.0.0.1:{self.port}/api/v1/{path}{query}")
        doc = orjson.loads(body)
        assert status == 200 and doc["status"] == "success", doc
        return doc["data"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


@pytest.fixture()
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        started.append(Prometheus(tmp_path, target))
        return started[-1]

    yield start
    for p in started:
        p.stop()


def test_prometheus_scrapes_a_worker_and_evaluates_the_rules_and_dashboard(
        make_worker, broker, prometheus_for):
    worker = make_worker(SEGMENTS_K=6).start()
    events = shop_events(200, 4000, seed=11)
    bad = [(worker.topics["click"], b"c-bad", b'{"not": "an event"}'),
           (worker.topics["purchase"], b"c-bad", b"\xff\xfe")]
    produce(broker.bootstrap_servers,
            [(worker.topics[e.kind], e.key, e.value) for e in events] + bad)
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
             == len(events) + len(bad), 180, "every event to be consumed")
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_segment_changes_total") > 0,
             120, "segment changes")

    exported = {name for name, _ in worker.metrics()}
    for rule in alert_rules():
        missing = set(METRIC.findall(rule["expr"])) - exported
        assert not missing, (rule["alert"], missing)
    for title, expr in dashboard_exprs():
        missing = set(METRIC.findall(expr)) - exported
        assert not missing, (title, missing)

    prom = prometheus_for(f"127.0.0.1:{worker.web_port}")

    def target_up() -> bool:
        active = prom.api("targets")["activeTargets"]
        return len(active) == 1 and active[0]["health"] == "up"

    wait_for(target_up, 60, "Prometheus to scrape the worker")
    stored = wait_for(lambda: prom.api("query", query="sum(stream_app_events_consumed_total)")
                      ["result"], 30, "the worker's counters in Prometheus")
    assert float(stored[0]["value"][1]) == len(events) + len(bad)
    reasons = prom.api("query", query="stream_app_invalid_events_total")["result"]
    assert sum(float(r["value"][1]) for r in reasons) == len(bad)

    def rules_evaluated() -> list[dict[str, Any]] | None:
        groups = prom.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        done = rules and all(r["health"] == "ok" and not r["lastEvaluation"].startswith("0001")
                             for r in rules)
        return rules if done else None

    rules = wait_for(rules_evaluated, 30, "every alert rule to be evaluated")
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
    assert all(r["state"] == "inactive" for r in rules
               if r["name"] in ("StreamAppWorkerDown", "StreamAppDeadLetterRate")), rules

    # Every dashboard query returns data from the live worker (rates need two scrapes).
    def panels_with_data() -> bool:
        return all(prom.api("query", query=expr)["result"] for _, expr in dashboard_exprs())

    wait_for(panels_with_data, 60, "every dashboard query to return data", interval=1.0)


def test_readiness_reports_lag_and_sigterm_commits_offsets(make_worker, broker):
    # Commits only at shutdown: whatever is committed afterwards, the clean stop committed.
    worker = make_worker(SEGMENTS_K=6, COMMIT_INTERVAL_S="600", READY_MAX_LAG="500").start()
    events = shop_events(300, 12000, seed=12)
    produce(broker.bootstrap_servers, [(worker.topics[e.kind], e.key, e.value)
                                       for e in events[:2000]])
    wait_for(lambda: worker.get("/ready")[0] == 200, 120, "the worker to be ready")

    produce(broker.bootstrap_servers, [(worker.topics[e.kind], e.key, e.value)
                                       for e in events[2000:]])
    _, behind = wait_for(lambda: (r := worker.get("/ready"))[0] == 503 and r, 30,
                              "readiness to report the backlog", interval=0.05)
    assert behind["lag_ok"] is False and behind["lag"] > 500
    lag = metric_sum(worker.metrics(), "stream_app_consumer_lag")
    assert lag > 0
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
             == len(events), 180, "every event to be consumed")
    # (Re-scoring and sweep requests queued by the backlog may still be in flight: lag 0
    # comes once they are processed too.)
    _, ready = wait_for(lambda: (r := worker.get("/ready"))[0] == 200 and r[1]["lag"] == 0
                        and r, 60, "readiness with no lag after the backlog")
    assert ready["lag_ok"]
    assert metric_sum(worker.metrics(), "stream_app_consumer_lag") == 0

    started = time.monotonic()
    assert worker.stop(signal.SIGTERM, timeout=60) == 0, worker.log()
    assert time.monotonic() - started < 30

    committed = committed_offsets(broker.bootstrap_servers, worker.app_id,
                                  [worker.topics[k] for k in ("click", "purchase", "profile")])
    per_topic: dict[str, int] = {}
    for e in events:
        per_topic[worker.topics[e.kind]] = per_topic.get(worker.topics[e.kind], 0) + 1
    assert committed == per_topic


def committed_offsets(bootstrap: str, group: str, topics: list[str]) -> dict[str, int]:
    """Sum over partitions of the group's committed offsets, per topic."""
    async def read() -> dict[str, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            out = {}
            for topic in topics:
                await consumer.topics()  # fetches the cluster's metadata
                partitions = consumer.partitions_for_topic(topic) or set()
                total = 0
                for p in partitions:
                    total += await consumer.committed(TopicPartition(topic, p)) or 0
                out[topic] = total
            return {t: n for t, n in out.items() if n}
        finally:
            await consumer.stop()

    return asyncio.run(read())


def test_json_logs_carry_no_customer_data(make_worker, broker):
    worker = make_worker(SEGMENTS_K=6, LOG_FORMAT="json").start()
    secret_id, secret_city, secret_income = "cust-secret-4242", "Zanzibar-7731", 987_654
    profile = orjson.dumps({"event_id": "p-secret", "customer_id": secret_id,
                            "ts": int(time.time() * 1000), "city": secret_city,
                            "income": secret_income, "age": 77})
    bad = orjson.dumps({"customer_id": secret_id, "city": secret_city, "amount": "lots"})
    events = shop_events(100, 1500, seed=13)
    produce(broker.bootstrap_servers,
            [(worker.topics[e.kind], e.key, e.value) for e in events]
            + [(worker.topics["profile"], secret_id.encode(), profile),
               (worker.topics["purchase"], secret_id.encode(), bad)])
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total")
             == len(events) + 2, 120, "every event to be consumed")
    assert worker.stop(signal.SIGTERM) == 0
    lines = [line for line in worker.log_path.read_text().splitlines() if line.strip()]
    assert len(lines) > 5
    for line in lines:
        record = orjson.loads(line)  # every line is one JSON object
        assert {"time", "level", "logger", "message"} <= set(record), record
    text = "\n".join(lines)
    customer_ids = {e.key.decode() for e in events} | {secret_id}
    assert not [c for c in customer_ids if re.search(rf"\b{re.escape(c)}\b", text)]
    assert secret_city not in text and str(secret_income) not in text
