"""Cost of judging audiences (docs/audiences.md, Cost).

Prints the µs per customer update of ``AudienceSet.memberships`` with 1, 10 and 50
audiences (the five of ``examples/audiences.yaml``, cycled), judged on the features of
2,000 customers after three days of the synthetic shop, best of five passes; then the load
time of a file of 256 audiences, first and again (parsed conditions are cached by text).

Run from the repository root: ``.venv/bin/python ops/bench_audiences.py``.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import orjson
import yaml

from stream_app.core.audiences import AudienceSet, compile_condition
from stream_app.tools.batch import recompute
from stream_app.tools.generator import SyntheticShop

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "audiences.yaml"


def main() -> None:
    shop = SyntheticShop(2000, seed=11, start_ms=1_790_000_000_000, step_ms=4800)
    rng = random.Random(1)
    customers = [
        {**c.features(), **c.profile, "segment": rng.randrange(32), "segment_label": "x"}
        for c in recompute(orjson.loads(e.value) for e in shop.events(54_000)).values()
    ]
    examples = yaml.safe_load(EXAMPLES.read_text())["audiences"]
    for n in (1, 10, 50):
        audiences = AudienceSet.from_document(
            {"audiences": [dict(examples[i % len(examples)], name=f"a{i}") for i in range(n)]})
        members = [audiences.memberships(c, []) for c in customers]
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for i, c in enumerate(customers):
                members[i] = audiences.memberships(c, members[i])
            best = min(best, (time.perf_counter() - started) / len(customers))
        print(f"{n} audiences: {best * 1e6:.1f} µs per update")

    many = {"audiences": [
        dict(examples[i % len(examples)], name=f"a{i}",
             condition=examples[i % len(examples)]["condition"] + f" and age != {i}")
        for i in range(256)]}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audiences.yaml"
        path.write_text(yaml.safe_dump(many))
        compile_condition.cache_clear()
        for label in ("first load", "reload"):
            started = time.perf_counter()
            AudienceSet.load(path)
            print(f"256 audiences, {label}: {(time.perf_counter() - started) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
