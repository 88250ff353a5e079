"""``stream-app evaluate``: how good are the segments?

Two modes:

* **live** (default): against running workers fed by the generator. Homogeneity,
  separation, silhouette and the WCSS ratio against batch k-means come from the applied
  model (the learner measures them on its reservoir sample of customers at every
  refinement); churn per hour and the flap rate from the workers' metrics; the adjusted
  Rand index against the generator's planted types from the customers' segments.
* **offline** (``--offline``): runs the synthetic shop through the real pipeline in this
  process and feeds the same sample stream to several River clusterers, to compare them
  on the same figures (the comparison behind the default).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from stream_app.config import Settings
from stream_app.generator import TYPES, SyntheticShop
from stream_app.pipeline import CustomerPipeline
from stream_app.quality import adjusted_rand_index, assign, flap_rate, quality_report
from stream_app.segmentation import FeatureTransform, SegmentLearner
from stream_app.state import CustomerState
from stream_app.verify import fetch_customer

#: Targets from the product's quality bar: (measure, comparison, threshold).
TARGETS = {
    "wcss_ratio": ("<=", 1.15),
    "ari_planted": (">=", 0.9),
    "flap_rate": ("<=", 0.01),
}


def _meets(measure: str, value: float | None) -> str:
    if measure not in TARGETS or value is None:
        return ""
    op, threshold = TARGETS[measure]
    ok = value <= threshold if op == "<=" else value >= threshold
    return f"{'yes' if ok else 'NO'} ({op} {threshold})"


def _get(url: str, timeout: float = 10.0) -> Any:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def _scrape(urls: Sequence[str]) -> dict[str, float]:
    """Sum of the relevant counters and gauges over every worker."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"stream_app_segment_moves_total", "stream_app_segment_flaps_total",
              "stream_app_segment_changes_total", "stream_app_customers"}
    totals = dict.fromkeys(wanted, 0.0)
    for url in urls:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted:
                    totals[sample.name] += sample.value
    return totals


def evaluate_live(urls: Sequence[str], window: float = 30.0,
                  planted: tuple[int, int] | None = None) -> dict[str, Any]:
    """Quality figures of running workers (see the module docstring)."""
    model = _get(f"{urls[0]}/model")
    if model is None:
        raise RuntimeError("the worker has no segment model yet")
    before = _scrape(urls)
    started = time.monotonic()
    time.sleep(window)
    after = _scrape(urls)
    hours = (time.monotonic() - started) / 3600
    customers = after["stream_app_customers"] or 1.0
    report: dict[str, Any] = {
        "model_version": model["version"],
        "k": model["k"],
        **model.get("quality", {}),
        "churn_per_customer_hour": (after["stream_app_segment_moves_total"]
                                    - before["stream_app_segment_moves_total"])
        / customers / hours,
        "flap_rate": flap_rate(int(after["stream_app_segment_flaps_total"]),
                               int(after["stream_app_segment_changes_total"])),
        "changes": after["stream_app_segment_changes_total"],
        "customers": after["stream_app_customers"],
    }
    if planted is not None:
        shop = SyntheticShop(planted[0], seed=planted[1], start_ms=0)

        def segment_of(customer: str) -> int | None:
            doc = fetch_customer(urls[0], customer)
            return None if doc is None else doc["segment"]

        with ThreadPoolExecutor(16) as pool:
            segments = dict(zip(shop.customers, pool.map(segment_of, shop.customers)))
        known = [c for c, s in segments.items() if s is not None]
        report["ari_planted"] = adjusted_rand_index(
            [TYPES.index(shop.planted[c]) for c in known], [segments[c] for c in known])
        report["customers_compared"] = len(known)
    return report


# -- offline comparison of River clusterers ----------------------------------------------------
def _river_clusterer(name: str, k: int, seed: int) -> Any:
    from river import cluster

    if name == "streamkmeans":
        return cluster.STREAMKMeans(chunk_size=max(100, 10 * k), n_clusters=k, seed=seed)
    if name == "clustream":
        return cluster.CluStream(n_macro_clusters=k, max_micro_clusters=max(100, 10 * k),
                                 time_gap=1000, seed=seed)
    if name == "dbstream":
        return cluster.DBSTREAM(clustering_threshold=1.5, fading_factor=0.001,
                                cleanup_interval=1000, intersection_factor=0.3,
                                minimum_weight=2.0)
    if name == "kmeans-plain":
        return cluster.KMeans(n_clusters=k, halflife=0.5, seed=seed)
    raise ValueError(f"unknown clusterer {name!r}")


CLUSTERERS = ("kmeans", "kmeans-plain", "streamkmeans", "clustream", "dbstream")


def evaluate_offline(customers: int = 2000, events: int = 40_000, k: int = 4, seed: int = 7,
                     clusterers: Sequence[str] = CLUSTERERS,
                     progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Feed one synthetic sample stream to each clusterer; quality figures for each."""
    from river import compose, preprocessing

    settings = dataclasses.replace(Settings(), segments_k=k, learn_sample_rate=1e12)
    pipeline = CustomerPipeline(settings)
    step = 60 * 86_400_000 // events
    shop = SyntheticShop(customers, seed=seed,
                         start_ms=int(time.time() * 1000) - events * step, step_ms=step)
    store: dict[bytes, bytes] = {}
    samples: list[list[float | None]] = []
    for i, event in enumerate(shop.events(events)):
        out = pipeline.process(event.kind, event.key, event.value, store.get(event.key),
                               "offline", 0, i)
        if out.state is not None:
            store[event.key] = out.state
        if out.sample is not None:
            samples.append(orjson.loads(out.sample)["x"])
    transform = FeatureTransform(settings.segment_features)
    final = {key.decode(): CustomerState.from_bytes(raw) for key, raw in store.items()}
    final = {c: s for c, s in final.items() if s.window.as_of}
    vectors = [transform.vector(s.window.features(s.clock), s.profile) for s in final.values()]
    truth = [TYPES.index(shop.planted[c]) for c in final]
    rows = []
    for name in clusterers:
        if progress:
            progress(name)
        learner = SegmentLearner(transform, k, seed=seed)
        started = time.perf_counter()
        if name == "kmeans":
            for x in samples:
                learner.learn_one(x)
            model = learner.snapshot(1)
            scale, centres = model.scale, model.centres
        else:
            river_model = compose.Pipeline(preprocessing.StandardScaler(),
                                           _river_clusterer(name, k, seed))
            for x in samples:
                imputed = learner.impute(x)  # the same imputation as the learner
                learner.reservoir.add([imputed[n] for n in transform.names])
                river_model.learn_one(imputed)
            scaler = river_model.steps["StandardScaler"]
            found = river_model.steps[list(river_model.steps)[-1]].centers
            centres = np.array([[c.get(n, 0.0) for n in transform.names]
                                for c in found.values()]) if found else np.zeros((1, 1))

            def scale(raw: list[float | None], scaler: Any = scaler) -> np.ndarray:
                x = {n: (0.0 if v is None else v) for n, v in zip(transform.names, raw)}
                t = scaler.transform_one(x)
                return np.array([t[n] for n in transform.names])
        elapsed = time.perf_counter() - started
        sample_x = np.array([scale(list(r)) for r in learner.reservoir.array()])
        assigned = assign(np.array([scale(v) for v in vectors]), centres)
        quality = quality_report(sample_x, centres, seed=seed)
        rows.append({"clusterer": name, "segments": len(centres),
                     "wcss_ratio": quality["wcss_ratio"], "silhouette": quality["silhouette"],
                     "homogeneity": quality["homogeneity"],
                     "separation_min": quality["separation_min"],
                     "ari_planted": adjusted_rand_index(truth, assigned.tolist()),
                     "us_per_sample": 1e6 * elapsed / max(len(samples), 1),
                     "samples": len(samples), "customers": len(final)})
    return rows


def print_live(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"segment quality (model v{report['model_version']}, "
                        f"K={report['k']}, {int(report['customers'])} customers)")
    for column in ("measure", "value", "target met"):
        table.add_column(column)
    for measure in ("wcss_ratio", "homogeneity", "separation_min", "separation_mean",
                    "silhouette", "churn_per_customer_hour", "flap_rate", "ari_planted"):
        if measure in report:
            value = report[measure]
            table.add_row(measure, f"{value:.4f}", _meets(measure, value))
    console.print(table)


def print_offline(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"River clusterers on the same sample stream "
                        f"({rows[0]['samples']} samples, {rows[0]['customers']} customers)")
    columns = ("clusterer", "segments", "wcss_ratio", "silhouette", "homogeneity",
               "separation_min", "ari_planted", "us_per_sample")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c])
                        for c in columns])
    console.print(table)
