"""The live segment map (``GET /``) in headless Chromium against a real worker and broker.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make ops-tools`` installs them); the
Selenium client is told where the driver is, so it never tries to download one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_app.tools.generator import SyntheticShop
from tests.conftest import http, produce, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--window-size=1440,1100")
TOKEN = "map-test-token-5d1c"
K = 6
CUSTOMERS = 200
EVENTS = 5000
LATER_CUSTOMERS = 40
LATER_EVENTS = 1200
AUDIENCES = """\
audiences:
  - name: browsers
    condition: views_7d >= 3
  - name: buyers
    condition: orders_90d >= 1
"""
STEP_MS = 300_000  # 5 minutes of event time per event


@pytest.fixture()
def chromium(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium driven by Debian's chromedriver, with a fresh profile."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Chromium not installed: `make ops-tools` installs the Debian packages "
                    "chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_segments(driver: Any) -> dict[int, dict[str, Any]]:
    """The segment circles drawn on the map: id → label, size."""
    return {int(s["id"]): s for s in driver.execute_script(
        "return [...document.querySelectorAll('#map g.segment')].map((g) => ({id: "
        "g.dataset.segment, label: g.dataset.label, size: Number(g.dataset.size)}));")}


def page_changes(driver: Any) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#changes li')].map((li) => li.textContent);")


def page_customer_ids(driver: Any) -> set[str]:
    return set(driver.execute_script(
        "return [...document.querySelectorAll('#changes .who')].map((e) => e.textContent);"))


def api(worker: Any, path: str, token: str | None = None) -> Any:
    status, body = http(worker.url + path,
                        headers={"Authorization": f"Bearer {token}"} if token else None)
    assert status == 200, (path, status, body[:300])
    return orjson.loads(body)


def settled(worker: Any) -> dict[str, Any]:
    """Wait until the segments stop changing (model learned, everybody assigned)."""
    last: list[Any] = [None]

    def same_twice() -> dict[str, Any] | None:
        body = api(worker, "/segments")
        if not body["model_version"] or body["unassigned"]:
            return None
        seen = (body["model_version"], [(s["label"], s["size"]) for s in body["segments"]])
        stable, last[0] = seen == last[0], seen
        return body if stable else None

    return wait_for(same_twice, 180, "the segments to settle", interval=3.0)


def test_segment_map_in_chromium(make_worker, broker, chromium, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    audiences = tmp_path / "audiences.yaml"
    audiences.write_text(AUDIENCES)
    worker = make_worker(SEGMENTS_K=K, API_TOKEN=TOKEN, AUDIENCES_FILE=audiences).start()
    now = int(time.time() * 1000)
    start = now - (EVENTS + LATER_EVENTS) * STEP_MS
    shop = SyntheticShop(CUSTOMERS, seed=5, start_ms=start, step_ms=STEP_MS)
    events = list(shop.events(EVENTS))
    produce(broker.bootstrap_servers, [(worker.topics[e.kind], e.key, e.value) for e in events])
    customers = {e.key.decode() for e in events}
    segments = settled(worker)

    # The page itself: HTML, with a policy that allows no other origin.
    status, html = http(worker.url + "/")
    assert status == 200 and b'id="map"' in html
    head = http_headers(worker.url + "/")
    assert head["Content-Type"] == "text/html; charset=utf-8"
    assert head["Content-Security-Policy"].startswith("default-src 'none'")
    assert "http" not in head["Content-Security-Policy"]

    driver = chromium
    driver.get(worker.url + "/")
    wait = WebDriverWait(driver, 60, poll_frequency=0.5)

    # K circles, labelled as GET /segments labels them; the sizes add up to its customers.
    def map_matches_api() -> bool:
        body = api(worker, "/segments")
        drawn = page_segments(driver)
        return (len(drawn) == K and {i: s["label"] for i, s in drawn.items()}
                == {s["id"]: s["label"] for s in body["segments"]}
                and sum(s["size"] for s in drawn.values())
                == body["customers"] - body["unassigned"] - body["excluded"])

    wait.until(lambda _: map_matches_api(), "the map to show GET /segments")
    drawn = page_segments(driver)
    assert sum(s["size"] for s in drawn.values()) == len(customers) == segments["customers"]
    legend = driver.find_elements(By.CSS_SELECTOR, "#legend li[data-segment]")
    assert len(legend) == K
    assert driver.find_element(By.ID, "segment-count").text == str(K)
    assert driver.find_element(By.ID, "customers").text == f"{len(customers):,}"

    # The history chart has a line per segment with at least one sampled point.
    def history_lines() -> dict[int, int]:
        return {int(k): v for k, v in driver.execute_script(
            "return Object.fromEntries([...document.querySelectorAll("
            "'#history polyline[data-segment]')].map((l) => [l.dataset.segment, "
            "Number(l.dataset.points)]));").items()}

    wait.until(lambda _: len(history_lines()) == K and min(history_lines().values()) >= 1,
               "a sampled point per segment in the size history")

    # The audiences, with the members GET /audiences counts.
    def audiences_match() -> bool:
        shown = {item.get_attribute("data-audience"): item.find_element(
                     By.CSS_SELECTOR, ".num").text
                 for item in driver.find_elements(By.CSS_SELECTOR, "#audiences li")}
        expected = {a["name"]: f"{a['members']:,}" for a in api(worker, "/audiences")["audiences"]}
        return shown == expected and len(shown) == 2

    wait.until(lambda _: audiences_match(), "the audiences panel to show GET /audiences")
    assert api(worker, "/audiences")["audiences"][0]["members"] > 0

    # Without the token: changes are listed, but no customer id anywhere on the page.
    wait.until(lambda _: len(page_changes(driver)) > 0, "the list of latest moves")
    text = driver.find_element(By.TAG_NAME, "body").text
    assert not [c for c in customers if c in text]
    assert not page_customer_ids(driver)
    assert all(" → " in line for line in page_changes(driver))
    assert "customer_id" not in orjson.dumps(api(worker, "/map/data")["changes"]).decode()
    assert driver.find_element(By.ID, "token-form").is_displayed()

    # With the token (typed into the page, kept in sessionStorage, never in the URL).
    field = driver.find_element(By.ID, "token")
    field.send_keys(TOKEN)
    field.send_keys(Keys.ENTER)
    wait.until(lambda _: page_customer_ids(driver), "customer ids with the token")
    shown = page_customer_ids(driver)
    assert shown and shown <= customers
    assert TOKEN not in driver.current_url
    assert driver.execute_script(
        "return sessionStorage.getItem('stream-app-api-token')") == TOKEN
    assert driver.find_element(By.ID, "token-state").is_displayed()

    # More events (new customers): the list of moves and the sizes follow.
    before_changes = page_changes(driver)
    before_total = sum(s["size"] for s in page_segments(driver).values())
    later = SyntheticShop(LATER_CUSTOMERS, seed=6, start_ms=start + EVENTS * STEP_MS,
                          step_ms=STEP_MS)
    later_events = list(later.events(LATER_EVENTS))
    produce(broker.bootstrap_servers,
            [(worker.topics[e.kind], e.key, e.value) for e in later_events])
    newcomers = {e.key.decode() for e in later_events}
    wait.until(lambda _: page_changes(driver)[:1] != before_changes[:1]
               and newcomers & page_customer_ids(driver),
               "the newcomers' moves in the list")
    wait.until(lambda _: sum(s["size"] for s in page_segments(driver).values()) > before_total,
               "the sizes to grow")
    settled(worker)
    wait.until(lambda _: map_matches_api(), "the map to show GET /segments again")
    assert sum(s["size"] for s in page_segments(driver).values()) == len(customers | newcomers)

    # A click on a segment shows its label and what distinguishes it (GET /segments/{id}).
    target = topmost_segment(driver)
    driver.find_element(By.CSS_SELECTOR, f'#map g.segment[data-segment="{target}"] circle').click()
    check_details(driver, wait, worker, target)
    assert driver.find_element(
        By.CSS_SELECTOR, f'#map g.segment[data-segment="{target}"]').get_attribute(
        "class").split() == ["segment", "selected"]
    # Segments are reachable by keyboard too: focus a circle, press Enter.
    other = next(i for i in sorted(page_segments(driver)) if i != target)
    circle = driver.find_element(By.CSS_SELECTOR, f'#map g.segment[data-segment="{other}"]')
    driver.execute_script("arguments[0].focus();", circle)
    assert driver.switch_to.active_element == circle
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    check_details(driver, wait, worker, other)
    examples = driver.find_elements(By.CSS_SELECTOR, "#details .examples")
    if api(worker, f"/segments/{other}", TOKEN)["examples"]:
        assert examples and examples[0].text.startswith("Members, for example:")

    # Nothing was loaded from elsewhere, and nothing went wrong in the page.
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map((r) => r.name);")
    assert resources and all(r.startswith(worker.url + "/") for r in resources), resources
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    assert driver.find_element(By.ID, "status").text == "live"

    shot = tmp_path / "segment-map.png"
    assert driver.save_screenshot(str(shot))
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == tuple(driver.execute_script(
        "return [window.innerWidth * devicePixelRatio, window.innerHeight * devicePixelRatio];"))
    assert len(png) > 30_000  # a drawn page, not a blank one (a white 1440 × 1100 is ~10 KB)


def http_headers(url: str) -> dict[str, str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return dict(resp.headers)


def topmost_segment(driver: Any) -> int:
    """A segment whose circle is on top at its own centre (circles may overlap)."""
    found = driver.execute_script("""
        for (const g of document.querySelectorAll('#map g.segment')) {
          const box = g.querySelector('circle').getBoundingClientRect();
          const hit = document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2);
          if (hit && hit.closest('g.segment') === g && box.width > 12) return g.dataset.segment;
        }
        return null;""")
    assert found is not None, "every circle is covered by another one"
    return int(found)


def check_details(driver: Any, wait: Any, worker: Any, segment: int) -> None:
    explained = api(worker, f"/segments/{segment}", TOKEN)
    first = explained["distinguishing"][0]

    def shown() -> dict[str, Any] | None:
        panel = driver.execute_script("""
            const panel = document.getElementById('details');
            const row = panel.querySelector('#details-features tbody tr');
            const label = panel.querySelector('#details-label');
            const size = panel.querySelector('#details-size');
            return {segment: panel.dataset.segment, label: label && label.textContent,
                    feature: row && row.dataset.feature, row: row && row.textContent,
                    size: size && size.textContent};""")
        return panel if (panel["segment"] == str(segment) and panel["label"] == explained["label"]
                         and panel["feature"] == first["feature"]) else None

    panel = wait.until(lambda _: shown(), f"the details of segment {segment}")
    expected_word = first["word"] if abs(first["z"]) >= 0.5 else "about average"
    assert expected_word in panel["row"]
    assert f"{explained['size']:,} customers" in panel["size"]
