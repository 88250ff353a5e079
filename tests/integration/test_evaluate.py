"""`stream-app evaluate` against a live worker fed by the generator meets the quality bar."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import orjson
import pytest

from stream_app.config import Settings
from stream_app.tools.evaluate import simulate
from tests.conftest import metric_sum, wait_for, wait_until_settled

CUSTOMERS = 400
RATE = 400
DURATION = 40  # 16,000 events: 40 per customer
TIME_SCALE = 129_600  # 60 days of event time across the run


def cli(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_app.tools.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_evaluate_reports_quality_against_planted_types(make_worker):
    worker = make_worker(SEGMENTS_K=4).start()
    result = cli("generate", "--customers", str(CUSTOMERS), "--rate", str(RATE),
                 "--duration", str(DURATION), "--seed", "7", "--time-scale", str(TIME_SCALE),
                 "--max-speed", env=worker.env)
    assert result.returncode == 0, result.stderr
    events = RATE * DURATION
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total") == events,
             240, "the generated events to be consumed", interval=1.0)
    wait_for(lambda: worker.get("/segments")[1]["unassigned"] == 0, 60, "all assigned")
    wait_until_settled(worker)

    result = cli("evaluate", "--url", worker.url, "--window", "2", "--planted-customers",
                 str(CUSTOMERS), "--planted-seed", "7", "--json", env=worker.env)
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["k"] == 4 and report["customers_compared"] == CUSTOMERS
    assert report["wcss_ratio"] <= 1.15, report
    # The model recovers the planted types (0.94-0.97 in seven runs); the customers' own
    # segments lag it by those the margin holds where they were (1-5 % measured on this
    # fast replay, ARI 0.77-0.97): guarded as regression bounds.
    assert report["ari_planted_nearest"] >= 0.9, report
    assert report["held_share"] <= 0.1 and report["ari_planted"] >= 0.7, report
    # Issue 4's target: 1 % (five runs measured 0). A return from a segment the model
    # retired meanwhile is forced, not a flap: this replay retires several early on.
    assert report["flap_rate"] <= 0.01, report
    assert report["silhouette"] > 0.2 and report["separation_min"] > 0, report
    assert report["homogeneity"] > 0 and report["churn_per_customer_hour"] >= 0

    # The segments explain themselves.
    _, segments = worker.get("/segments")
    biggest = max(segments["segments"], key=lambda s: s["size"])
    status, explained = worker.get(f"/segments/{biggest['id']}")
    assert status == 200 and explained["size"] == biggest["size"]
    assert explained["label"] == biggest["label"]
    zs = [abs(d["z"]) for d in explained["distinguishing"]]
    assert zs == sorted(zs, reverse=True) and len(zs) == len(explained["centre"])
    assert explained["examples"]
    for customer in explained["examples"]:
        assert worker.get(f"/customers/{customer}")[1]["segment"] == biggest["id"]
    assert worker.get("/segments/99")[0] == 404

    table = cli("evaluate", "--url", worker.url, "--window", "1", env=worker.env)
    assert table.returncode == 0 and "wcss_ratio" in table.stdout


def test_offline_comparison_runs_the_whole_loop_per_clusterer():
    args = ("evaluate", "--offline", "--customers", "200", "--events", "8000", "--k", "4",
            "--clusterers", "kmeans,streamkmeans", "--json")
    result = cli(*args, env={**os.environ, "SEGMENT_MARGIN": "0.4"}, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = orjson.loads(result.stdout)
    assert [r["clusterer"] for r in rows] == ["kmeans", "streamkmeans"]
    for row in rows:
        assert row["customers"] == 200 and row["events"] == 8000 and row["k"] == 4
        assert 0 <= row["flap_rate"] <= 1 and row["changes_per_event"] > 0
        assert sum(row["changes"].values()) == round(row["changes_per_event"] * 8000)
    kmeans = rows[0]
    assert kmeans["wcss_ratio"] <= 1.15 and kmeans["ari_planted"] >= 0.8
    # The simulation is deterministic for a seed (the basis of docs/segmentation.md's table).
    again = cli(*args[:-2], "kmeans", "--json", env={**os.environ, "SEGMENT_MARGIN": "0.4"},
                timeout=600)
    assert again.returncode == 0, again.stderr
    repeated = orjson.loads(again.stdout)
    assert len(repeated) == 1 and repeated[0].pop("us_per_sample") > 0
    assert repeated[0] == {m: v for m, v in kmeans.items() if m != "us_per_sample"}
    bad = cli("evaluate", "--offline", "--clusterers", "dbstream", env=dict(os.environ))
    assert bad.returncode == 2 and "dbstream" in bad.stderr


def test_a_fast_backfill_of_a_retail_history_places_every_buyer(make_worker):
    """A shop's purchase history (540 days, half the customers buying once) replayed at
    full speed ends as a live run would: every buyer in a segment, segments named apart
    and none below the minimum size, a model refined once the backlog was drained."""
    customers, min_share = 800, 0.02
    worker = make_worker(SEGMENTS_K=8, SEGMENT_MIN_SHARE=str(min_share)).start()
    result = cli("generate", "--profile", "retail", "--customers", str(customers),
                 "--seed", "11", "--max-speed", env=worker.env)
    assert result.returncode == 0, result.stderr
    sent = int(re.search(r"sent (\d+) messages", result.stdout).group(1))
    assert sent > 2 * customers  # about 3.4 orders a customer
    wait_for(lambda: metric_sum(worker.metrics(), "stream_app_events_consumed_total") == sent,
             240, "the history to be consumed", interval=1.0)
    wait_until_settled(worker)
    _, doc = worker.get("/segments")
    assert doc["customers"] == customers and doc["unassigned"] == 0  # every buyer placed
    live = [s for s in doc["segments"] if s["size"]]
    assert len({s["label"] for s in live}) == len(live), [s["label"] for s in live]
    # The learner's sample is the population here, and assignments follow its centres
    # up to the margin: no segment far below the minimum share.
    assert min(s["size"] for s in live) >= min_share * customers / 2, live
    assert all(" in all" in s["typical"] for s in live), [s["typical"] for s in live]
    _, model = worker.get("/model")
    assert model["version"] >= 2 and model["quality"]["wcss_ratio"] <= 1.15, model
    _, segment = worker.get(f"/segments/{live[0]['id']}")
    assert segment["active"] and segment["typical"] == live[0]["typical"]


@pytest.mark.parametrize("profile", ["retail", "retail-mixed"])
def test_a_retail_history_is_segmented_close_to_batch_k_means(profile):
    """The whole loop on a realistic shop (purchases only, or with clicks): every buyer
    placed, segments named apart and none below the minimum share, the partition close to
    batch k-means in the model's space and in plain RFM terms. docs/segmentation.md's figures are
    the same simulation on 5,000 customers at K = 32; here 600 at K = 8, with bounds
    a little looser than what was measured (printed on failure)."""
    settings = dataclasses.replace(Settings(), segments_k=8, learn_sample_rate=1e12,
                                   segment_min_share=0.02)
    row = simulate(settings, customers=600, events=None, seed=5, span_days=540.0,
                   publish_every=300, profile=profile)
    assert row["buyers"] == row["customers"] == 600, row  # every customer buys once at least
    assert row["coverage_buyers"] == 1.0, row
    assert row["distinct_labels"] == row["segments"] >= 6, row
    assert row["smallest_segment"] >= 0.02 * 600 / 2, row
    assert row["partition_ratio_model"] <= 1.2, row  # measured 1.07 and 1.14
    assert row["partition_ratio_rfm"] <= 1.5, row  # measured 1.23 and 1.31
    assert row["flap_rate"] <= 0.02, row
    assert row["model_versions"] > row["versions_before_drain"]  # refined once drained
