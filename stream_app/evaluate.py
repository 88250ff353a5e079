"""``stream-app evaluate``: how good are the segments?

Two modes:

* **live** (default): against running workers fed by the generator. Homogeneity,
  separation, silhouette and the WCSS ratio against batch k-means come from the applied
  model (the learner measures them on its sample of customers at every
  refinement); churn per hour and the flap rate from the workers' metrics; the adjusted
  Rand index against the generator's planted types from the customers' segments, and from
  the segments nearest to their features under the applied model (the two differ by the
  customers the margin holds in their segment: ``held_share``).
* **offline** (``--offline``): runs the synthetic shop through the real pipeline, learner
  and re-scoring loop in this process (:func:`simulate`), once per River clusterer, to
  compare them on the same figures (the comparison behind the default).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from stream_app.config import CLUSTERERS, Settings
from stream_app.generator import TYPES, SyntheticShop
from stream_app.local_loop import LocalLoop
from stream_app.metrics import scrape
from stream_app.pipeline import Outcome
from stream_app.quality import adjusted_rand_index, flap_rate
from stream_app.segmentation import FeatureTransform, SegmentModel
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
    wanted = ("stream_app_segment_moves_total", "stream_app_segment_flaps_total",
              "stream_app_segment_changes_total", "stream_app_customers")
    totals = dict.fromkeys(wanted, 0.0)
    for url in urls:
        found = scrape(f"{url}/metrics")
        for name in wanted:
            totals[name] += found.get(name, 0.0)
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

        snapshot = SegmentModel.from_dict(model)
        transform = FeatureTransform(snapshot.spec)

        def segments_of(customer: str) -> tuple[int, int] | None:
            """The customer's segment, and the segment nearest to its features."""
            doc = fetch_customer(urls[0], customer)
            if doc is None or doc["segment"] is None:
                return None
            raw = transform.vector(doc["features"], doc.get("profile") or {})
            return doc["segment"], snapshot.assign(raw, None)[0]

        with ThreadPoolExecutor(16) as pool:
            found = dict(zip(shop.customers, pool.map(segments_of, shop.customers)))
        known = {c: pair for c, pair in found.items() if pair is not None}
        truth = [TYPES.index(shop.planted[c]) for c in known]
        report["ari_planted"] = adjusted_rand_index(truth, [s for s, _ in known.values()])
        report["ari_planted_nearest"] = adjusted_rand_index(
            truth, [n for _, n in known.values()])
        report["held_share"] = sum(s != n for s, n in known.values()) / max(len(known), 1)
        report["customers_compared"] = len(known)
    return report


# -- offline: the whole loop in one process ----------------------------------------------------
#: Event time of a simulation's first event (fixed, so a seed gives the same figures any day).
SIMULATION_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def simulate(settings: Settings, customers: int = 2000, events: int = 80_000, seed: int = 7,
             span_days: float = 60.0, publish_every: int = 2000) -> dict[str, Any]:
    """Run the synthetic shop through the real pipeline and learner in this process
    (:class:`~stream_app.local_loop.LocalLoop`, a model version every ``publish_every``
    events). Deterministic for a seed. Returns the quality figures of the final model
    on the learner's customer sample, the adjusted Rand index of the customers' final
    segments against the planted types, the flap rate, segment changes per event by
    trigger, the share of customers the margin holds outside their nearest segment, and
    the learner's cost per sample.
    """
    step = int(span_days * 86_400_000) // events
    shop = SyntheticShop(customers, seed=seed, start_ms=SIMULATION_START_MS, step_ms=step)
    changes: dict[str, int] = {}
    flaps = 0

    def count(key: bytes | None, out: Outcome) -> None:
        nonlocal flaps
        if out.trigger is not None:
            changes[out.trigger] = changes.get(out.trigger, 0) + 1
        flaps += out.flap

    loop = LocalLoop(settings, publish_every, on_outcome=count)
    for offset, event in enumerate(shop.events(events)):
        loop.handle(event.kind, event.key, event.value, "simulated", 0, offset)
    pipeline, learner, store = loop.pipeline, loop.learner, loop.store
    final = {key.decode(): CustomerState.from_bytes(raw) for key, raw in store.items()}
    known = [c for c, state in final.items() if state.segment is not None]
    total = sum(changes.values())
    held = 0  # customers the margin keeps out of their nearest segment under the last model
    if pipeline.model is not None:
        transform = FeatureTransform(pipeline.model.spec)
        for c in known:
            state = final[c]
            raw = transform.vector(state.window.features(state.clock), state.profile)
            held += pipeline.model.assign(raw, None)[0] != state.segment
    return {
        "clusterer": settings.segment_clusterer, "k": settings.segments_k,
        **{m: learner.quality.get(m) for m in ("wcss_ratio", "homogeneity", "separation_min",
                                                "silhouette")},
        "ari_planted": adjusted_rand_index([TYPES.index(shop.planted[c]) for c in known],
                                           [final[c].segment for c in known]),
        "flap_rate": flap_rate(flaps, total),
        "changes_per_event": total / events,
        "held_share": held / max(len(known), 1),
        "changes": changes,
        "us_per_sample": 1e6 * loop.learning_s / max(learner.samples_seen, 1),
        "model_versions": loop.version, "customers": len(known), "events": events,
    }


def evaluate_offline(customers: int = 2000, events: int = 80_000, k: int = 4, seed: int = 7,
                     clusterers: Sequence[str] = CLUSTERERS, settings: Settings | None = None,
                     progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """:func:`simulate` once per clusterer, everything else equal (the comparison behind
    the default ``SEGMENT_CLUSTERER``)."""
    base = dataclasses.replace(settings or Settings(), segments_k=k, learn_sample_rate=1e12)
    rows = []
    for name in clusterers:
        if progress:
            progress(name)
        rows.append(simulate(dataclasses.replace(base, segment_clusterer=name), customers,
                             events, seed, publish_every=max(500, events // 40)))
    return rows


def print_live(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"segment quality (model v{report['model_version']}, "
                        f"K={report['k']}, {int(report['customers'])} customers)")
    for column in ("measure", "value", "target met"):
        table.add_column(column)
    for measure in ("wcss_ratio", "homogeneity", "separation_min", "separation_mean",
                    "silhouette", "churn_per_customer_hour", "flap_rate", "ari_planted",
                    "ari_planted_nearest", "held_share"):
        if measure in report:
            value = report[measure]
            met = _meets(measure, value)
            if measure == "ari_planted" and report["k"] != len(TYPES):
                met = f"n/a (K ≠ {len(TYPES)} planted types)"
            table.add_row(measure, f"{value:.4f}", met)
    console.print(table)


def print_offline(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"River clusterers in the whole loop, simulated "
                        f"({rows[0]['events']} events, {rows[0]['customers']} customers, "
                        f"K={rows[0]['k']})")
    columns = ("clusterer", "wcss_ratio", "silhouette", "homogeneity", "separation_min",
               "ari_planted", "flap_rate", "changes_per_event", "us_per_sample")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c])
                        for c in columns])
    console.print(table)
