"""Render the Grafana dashboard's panels to one PNG from a Prometheus that scraped a run.

Every panel's queries (``ops/grafana/dashboards/stream-app.json``) are run as range queries
against ``--prometheus`` and drawn with matplotlib, in the dashboard's order: docs/operations.md's
picture shows what the dashboard shows, from real metrics, without a Grafana server.

    pip install -e '.[docs]'
    python ops/render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 10 \\
        --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import math
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).parent / "grafana" / "dashboards" / "stream-app.json"
MAX_SERIES = 12  # per panel: the largest, so segment sizes stay readable


def query_range(base: str, expr: str, start: float, end: float, step: float
                ) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end,
                                     "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as resp:
        doc = json.load(resp)
    if doc["status"] != "success":
        raise RuntimeError(f"{expr}: {doc}")
    return doc["data"]["result"]


def legend(template: str, labels: dict[str, str]) -> str:
    out = template
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    args = parser.parse_args()

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    end = time.time()
    start = end - 60 * args.minutes
    step = max(5.0, 60 * args.minutes / 300)
    rows = math.ceil(len(panels) / 2)
    fig, axes = plt.subplots(rows, 2, figsize=(16, 3.1 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        lines = []
        for target in panel["targets"]:
            for series in query_range(args.prometheus.rstrip("/"), target["expr"], start,
                                      end, step):
                xs = [(float(t) - end) / 60 for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                lines.append((max(ys, default=0.0), xs, ys,
                              legend(target["legendFormat"], series["metric"])))
        lines.sort(key=lambda line: -line[0] if math.isfinite(line[0]) else 0.0)
        for _, xs, ys, label in lines[:MAX_SERIES]:
            ax.plot(xs, ys, label=label, linewidth=1.2)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        shown = f" (of {len(lines)})" if len(lines) > MAX_SERIES else ""
        ax.set_title(panel["title"] + shown, fontsize=10, loc="left")
        ax.set_xlabel("minutes before the end of the run", fontsize=8)
        if unit == "s":
            ax.set_ylabel("seconds", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=7, ncol=3, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(dashboard["title"], fontsize=13)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
