"""``stream-app evaluate``: how good are the segments?

Two modes:

* **live** (default): against running workers fed by the generator. Homogeneity,
  separation, silhouette and the WCSS ratio against batch k-means come from the applied
  model (the learner measures them on its sample of customers at every
  refinement); churn per hour and the flap rate from the workers' metrics; the adjusted
  Rand index against the generator's planted types from the customers' segments, and from
  the segments nearest to their features under the applied model (the two differ by the
  customers the margin holds in their segment: ``held_share``).
  Coverage (the share of customers in a segment), the number of segments with members,
  the smallest one and the number of distinct labels come from ``GET /segments``.
* **offline** (``--offline``): replays a workload (``--profile``: the planted shop, or a
  realistic retail history with or without clickstream) through the real pipeline,
  learner, re-scoring and sweeps in this process (:func:`simulate`), once per River
  clusterer, and judges the customers' final segments (:func:`segment_report`): coverage
  of the buyers, the partition against batch k-means in the model's space and in plain
  RFM terms, segment sizes and labels, flaps and changes per event (the comparison
  behind the defaults).
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
from stream_app.core.pipeline import Outcome
from stream_app.core.state import CustomerState
from stream_app.model.options import CLUSTERERS
from stream_app.model.quality import (
    adjusted_rand_index,
    assign,
    flap_rate,
    partition_ratio,
    rfm_space,
)
from stream_app.model.segmentation import FeatureTransform, SegmentModel
from stream_app.tools.generator import TYPES, SyntheticShop, make_shop
from stream_app.tools.local_loop import LocalLoop
from stream_app.tools.verify import access_error, fetch_customer
from stream_app.worker.metrics import scrape

#: Targets from the product's quality bar: (measure, comparison, threshold).
TARGETS = {
    "coverage": (">=", 0.99),
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


def _get(url: str, timeout: float = 10.0, token: str = "") -> Any:
    """``GET url`` decoded, None on 404; :class:`~stream_app.tools.verify.WorkerAccessError`
    when the worker cannot be reached or answers 401."""
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=timeout) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise access_error(_base(url), exc, token) or exc from None
    except OSError as exc:
        raise access_error(_base(url), exc, token) or exc from None


def _base(url: str) -> str:
    """A worker's address from the URL of one of its endpoints.

    >>> _base("http://127.0.0.1:6066/model")
    'http://127.0.0.1:6066'
    """
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _scrape(urls: Sequence[str]) -> dict[str, float]:
    """Sum of the relevant counters and gauges over every worker."""
    wanted = ("stream_app_segment_moves_total", "stream_app_segment_flaps_total",
              "stream_app_segment_changes_total", "stream_app_customers")
    totals = dict.fromkeys(wanted, 0.0)
    for url in urls:
        try:
            found = scrape(f"{url}/metrics")
        except OSError as exc:
            raise access_error(url, exc) or exc from None
        for name in wanted:
            totals[name] += found.get(name, 0.0)
    return totals


def _placement(segments: dict[str, Any]) -> dict[str, Any]:
    """Coverage and segment sizes from a ``GET /segments`` body (all workers)."""
    customers = segments.get("customers", 0)
    counted = customers - segments.get("excluded", 0)
    live = [s for s in segments.get("segments", []) if s["size"]]
    return {
        "coverage": 1 - segments.get("unassigned", 0) / counted if counted else 0.0,
        "segments": len(live),
        "smallest_segment": min((s["size"] for s in live), default=0),
        "distinct_labels": len({s["label"] for s in live}),
    }


def evaluate_live(urls: Sequence[str], window: float = 30.0,
                  planted: tuple[int, int] | None = None, token: str = "") -> dict[str, Any]:
    """Quality figures of running workers (see the module docstring). ``token`` is the
    workers' API token (``API_TOKEN``), needed to read customers (``planted``).

    Raises :class:`~stream_app.tools.verify.WorkerAccessError` when a worker cannot be reached,
    or refuses the token."""
    model = _get(f"{urls[0]}/model", token=token)
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
        "k": sum(model.get("active") or [True] * model["k"]),  # live segments
        "retired": model["k"] - sum(model.get("active") or [True] * model["k"]),
        **model.get("quality", {}),
        "churn_per_customer_hour": (after["stream_app_segment_moves_total"]
                                    - before["stream_app_segment_moves_total"])
        / customers / hours,
        "flap_rate": flap_rate(int(after["stream_app_segment_flaps_total"]),
                               int(after["stream_app_segment_changes_total"])),
        "changes": after["stream_app_segment_changes_total"],
        "customers": after["stream_app_customers"],
        **_placement(_get(f"{urls[0]}/segments", token=token) or {}),
    }
    if planted is not None:
        shop = SyntheticShop(planted[0], seed=planted[1], start_ms=0)

        snapshot = SegmentModel.from_dict(model)
        transform = FeatureTransform(snapshot.spec)

        def segments_of(customer: str) -> tuple[int, int] | None:
            """The customer's segment, and the segment nearest to its features."""
            try:
                doc = fetch_customer(urls[0], customer, token=token)
            except Exception as exc:
                raise access_error(urls[0], exc, token) or exc from None
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


def simulate(settings: Settings, customers: int = 2000, events: int | None = 80_000,
             seed: int = 7, span_days: float = 60.0, publish_every: int | None = None,
             profile: str = "planted") -> dict[str, Any]:
    """Replay a workload through the real pipeline, learner, re-scoring and sweeps in this
    process (:class:`~stream_app.tools.local_loop.LocalLoop`, a model version every
    ``publish_every`` events (default: 40 versions over the replay, at least 500 events
    apart), then :meth:`~stream_app.tools.local_loop.LocalLoop.drain` as a
    worker ends a backlog) and measure the result (:func:`segment_report`).

    ``profile`` is a workload of :func:`~stream_app.tools.generator.make_shop`: ``planted``
    (``events`` events over ``span_days``) or ``retail`` / ``retail-mixed`` (a customer
    history of ``span_days``, all of it unless ``events`` is given). Deterministic for a
    seed.
    """
    end = SIMULATION_START_MS
    if profile == "planted":
        count = events or 80_000
        step = int(span_days * 86_400_000) // count
        shop: Any = make_shop(profile, customers, seed, SIMULATION_START_MS - count * step,
                              step_ms=step)
    else:
        shop = make_shop(profile, customers, seed, end - int(span_days * 86_400_000),
                         span_days=span_days)
        count = events or shop.total_events
    changes: dict[str, int] = {}
    mature: dict[str, int] = {}
    flaps = 0
    mature_from = count * 3 // 4  # the last quarter of the replay: a mature population

    def count_change(key: bytes | None, out: Outcome) -> None:
        nonlocal flaps
        if out.trigger is not None:
            changes[out.trigger] = changes.get(out.trigger, 0) + 1
            if loop.processed >= mature_from:
                mature[out.trigger] = mature.get(out.trigger, 0) + 1
        flaps += out.flap

    loop = LocalLoop(settings, publish_every or max(500, count // 40),
                     on_outcome=count_change, sweeps=True)
    for offset, event in enumerate(shop.events(count)):
        loop.handle(event.kind, event.key, event.value, "simulated", 0, offset)
    backlog_versions = loop.version
    mature_changes = dict(mature)
    loop.drain()
    report = segment_report(loop, shop.planted if profile == "planted" else None, seed)
    total = sum(changes.values())
    report.update({
        "profile": profile, "clusterer": settings.segment_clusterer,
        "k": settings.segments_k, "events": count,
        "flap_rate": flap_rate(flaps, total),
        "changes_per_event": total / max(count, 1),
        "changes_per_event_mature": sum(mature_changes.values()) / max(count - mature_from, 1),
        "changes_mature": mature_changes,
        "changes": changes,
        "us_per_sample": 1e6 * loop.learning_s / max(loop.learner.samples_seen, 1),
        "model_versions": loop.version, "versions_before_drain": backlog_versions,
    })
    return report


def segment_report(loop: LocalLoop, planted: dict[str, str] | None = None,
                   seed: int = 0) -> dict[str, Any]:
    """How good the segments of every stored customer are under the loop's last model.

    * ``coverage_buyers`` / ``coverage``: share of the customers with a purchase / of all
      customers that have a segment;
    * ``partition_ratio_model``: within-segment sum of squares of the customers' segments
      over batch k-means (scikit-learn, k-means++, 10 restarts) with as many segments, in
      the model's own space; ``partition_ratio_rfm`` the same in the plain
      ``log1p``-standardised RFM space (:data:`~stream_app.model.quality.RFM_FEATURES`,
      evaluated at the end of the replay);
    * ``segments`` (non-empty), ``smallest_segment`` and ``distinct_labels``;
    * the learner's own figures on its sample (``wcss_ratio``, ``silhouette``, ...);
    * ``ari_planted`` against ``planted`` types, and ``held_share``: customers the margin
      keeps out of their nearest segment.
    """
    model = loop.pipeline.model
    states = {key.decode(): CustomerState.from_bytes(raw) for key, raw in loop.store.items()}
    buyers = [c for c, s in states.items() if s.window.orders_total > 0]
    placed = [c for c, s in states.items() if s.segment is not None]
    end = max((s.clock for s in states.values()), default=0)
    report: dict[str, Any] = {
        "customers": len(states), "buyers": len(buyers), "placed": len(placed),
        "coverage": len(placed) / max(len(states), 1),
        "coverage_buyers": sum(states[c].segment is not None for c in buyers)
        / max(len(buyers), 1),
        **{m: loop.learner.quality.get(m) for m in ("wcss_ratio", "homogeneity",
                                                     "separation_min", "silhouette")},
    }
    if model is None or len(placed) < 2:
        return report
    transform = FeatureTransform(model.spec)
    segments = np.array([states[c].segment for c in placed])
    raw = np.array([[np.nan if v is None else v for v in transform.vector(
        states[c].window.features(states[c].clock), states[c].profile)] for c in placed])
    x = model.scale_rows(raw)
    rfm = rfm_space(states[c].window.features(end) for c in placed)
    live = np.array(model.active_ids)
    nearest = live[assign(x, model.centres[live])]
    sizes = np.unique(segments, return_counts=True)[1]
    used = sorted(set(segments.tolist()))
    labels = [model.labels[s] for s in used if s < model.k]
    report.update({
        "partition_ratio_model": partition_ratio(x, segments, seed),
        "partition_ratio_rfm": partition_ratio(rfm, segments, seed),
        "segments": len(used), "smallest_segment": int(sizes.min()),
        "distinct_labels": len(set(labels)),
        "held_share": float(np.mean(nearest != segments)),
        "partition_ratio_nearest": partition_ratio(x, nearest, seed),
    })
    if planted is not None:
        report["ari_planted"] = adjusted_rand_index(
            [TYPES.index(planted[c]) for c in placed], segments)
    return report


def evaluate_offline(customers: int = 2000, events: int | None = 80_000, k: int = 4,
                     seed: int = 7, clusterers: Sequence[str] = CLUSTERERS,
                     settings: Settings | None = None,
                     progress: Callable[[str], None] | None = None,
                     profile: str = "planted") -> list[dict[str, Any]]:
    """:func:`simulate` once per clusterer, everything else equal (the comparison behind
    the default ``SEGMENT_CLUSTERER``), on the workload ``profile`` (``planted``: ``events``
    events over 60 days; ``retail`` / ``retail-mixed``: a 540-day history, all of it)."""
    base = dataclasses.replace(settings or Settings(), segments_k=k, learn_sample_rate=1e12)
    planted = profile == "planted"
    span = 60.0 if planted else 540.0
    count = (events or 80_000) if planted else None
    rows = []
    for name in clusterers:
        if progress:
            progress(name)
        rows.append(simulate(dataclasses.replace(base, segment_clusterer=name), customers,
                             count, seed, span_days=span, profile=profile))
    return rows


def print_live(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"segment quality (model v{report['model_version']}, "
                        f"K={report['k']}, {int(report['customers'])} customers)")
    for column in ("measure", "value", "target met"):
        table.add_column(column)
    for measure in ("coverage", "segments", "smallest_segment", "distinct_labels",
                    "retired", "wcss_ratio", "homogeneity", "separation_min", "separation_mean",
                    "silhouette", "churn_per_customer_hour", "flap_rate", "ari_planted",
                    "ari_planted_nearest", "held_share"):
        if measure in report:
            value = report[measure]
            if isinstance(value, int):
                table.add_row(measure, str(value), "")
                continue
            met = _meets(measure, value)
            if measure == "ari_planted" and report["k"] != len(TYPES):
                met = f"n/a (K ≠ {len(TYPES)} planted types)"
            table.add_row(measure, f"{value:.4f}", met)
    console.print(table)


def print_offline(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    console = console or Console()
    first = rows[0]
    table = Table(title=f"the whole loop, simulated: {first['profile']} workload "
                        f"({first['events']} events, {first['customers']} customers, "
                        f"K={first['k']})")
    columns = ["clusterer", "coverage_buyers", "partition_ratio_model",
               "partition_ratio_rfm", "segments", "smallest_segment", "distinct_labels",
               "silhouette", "flap_rate", "changes_per_event", "changes_per_event_mature",
               "held_share", "us_per_sample"]
    if "ari_planted" in first:
        columns.insert(4, "ari_planted")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[f"{row.get(c):.4f}" if isinstance(row.get(c), float)
                        else str(row.get(c)) for c in columns])
    console.print(table)
