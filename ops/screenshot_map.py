"""Take a screenshot of a worker's live segment map (``GET /``) in headless Chromium.

The picture in docs/segment-map.md: start ``make demo`` (its web port is 6066, or the one
it prints), let it run a few minutes so the size history has points, then

    python ops/screenshot_map.py --url http://127.0.0.1:6066/ --out docs/segment-map.png

Needs Debian's ``chromium`` and ``chromium-driver`` (``make ops-tools``) and the ``selenium``
package (the ``test`` extra). The segment to show in the details panel is the largest one
unless ``--segment`` names another; the whole page is captured (``--width`` wide).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--hide-scrollbars")


def open_chromium(profile: Path, width: int, height: int) -> Any:
    """Headless Chromium driven by Debian's chromedriver (never downloaded by Selenium)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def wait(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.5)
    raise SystemExit(f"screenshot_map: timed out after {timeout} s waiting for {what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:6066/", help="the worker's map")
    parser.add_argument("--out", type=Path, default=Path("docs/segment-map.png"))
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--samples", type=int, default=6,
                        help="wait for this many points of size history (one per 10 s)")
    parser.add_argument("--segment", type=int, help="segment shown in the details panel")
    parser.add_argument("--token", help="API token, to show customer ids (API_TOKEN)")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        print("Chromium not installed: `make ops-tools` installs the Debian packages chromium "
              "and chromium-driver", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="segment-map-shot-") as profile:
        driver = open_chromium(Path(profile), args.width, 1000)
        try:
            driver.get(args.url)
            if args.token:
                driver.execute_script(
                    "sessionStorage.setItem('stream-app-api-token', arguments[0]);", args.token)
                driver.get(args.url)
            sizes = wait(lambda: driver.execute_script(
                "return Object.fromEntries([...document.querySelectorAll('#map g.segment')]"
                ".map((g) => [g.dataset.segment, Number(g.dataset.size)]));"),
                args.timeout, "the segments on the map")
            wait(lambda: driver.execute_script(
                "const l = document.querySelector('#history polyline');"
                "return l && Number(l.dataset.points) >= arguments[0];", args.samples),
                args.timeout, f"{args.samples} points of size history")
            segment = args.segment if args.segment is not None else int(
                max(sizes, key=lambda s: sizes[s]))
            driver.execute_script(
                "document.querySelector(`#legend li[data-segment=\"${arguments[0]}\"] button`)"
                ".click();", segment)
            wait(lambda: driver.execute_script(
                "const d = document.getElementById('details');"
                "return d.dataset.segment === String(arguments[0]) && "
                "d.querySelector('#details-features');", segment),
                args.timeout, f"the details of segment {segment}")
            height = driver.execute_script("return document.documentElement.scrollHeight;")
            driver.set_window_size(args.width, height + 20)
            driver.execute_async_script(  # two frames: laid out and painted at the new size
                "requestAnimationFrame(() => requestAnimationFrame(arguments[0]));")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
    print(f"wrote {args.out} (segment {segment} in the details panel)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
