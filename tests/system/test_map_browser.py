"""The live segment map (``GET /``) in headless Chromium against a real worker and broker,
and its catalogue and customer explanation against canned answers of every kind.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make ops-tools`` installs them); the
Selenium client is told where the driver is, so it never tries to download one.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_app.core.catalogue import CATALOGUE_KINDS
from stream_app.tools.generator import SyntheticShop
from stream_app.web.segment_map import map_page
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
UNKNOWN = "nobody/at all?#&"  # characters a URL path must not take as they are
MARKS = {True: "✓", False: "✗", None: "?"}


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
    # Looking up a customer needs the token: no search box, a note saying so.
    assert not driver.find_element(By.ID, "customer-form").is_displayed()
    assert "needs the API token" in driver.find_element(By.ID, "customer-hint").text
    # The catalogue panel lists events, or says that there are none.
    assert (not driver.find_elements(By.CSS_SELECTOR, "#catalogue li")) == (
        "No catalogue events yet" in driver.find_element(By.ID, "catalogue-hint").text)

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

    # The customer search: a known customer explained, an unknown one said to be unknown.
    wait.until(lambda _: driver.find_element(By.ID, "customer-form").is_displayed(),
               "the customer search with the token")
    known = sorted(customers)[0]
    search(driver, known)
    wait.until(lambda _: explain_matches_api(driver, worker, known),
               f"the explanation of {known} as GET /customers/{{id}}/explain gives it")
    explained = api(worker, f"/customers/{urllib.parse.quote(known, safe='')}/explain", TOKEN)
    assert explained["audience_conditions"], "the test worker has audiences"
    assert driver.find_elements(By.CSS_SELECTOR, "#explain .clause .line")
    search(driver, UNKNOWN)
    wait.until(lambda _: driver.find_element(By.ID, "explain").get_attribute("data-state")
               == "unknown", "the unknown customer's message")
    note = driver.find_element(By.ID, "explain-unknown").text
    assert "Unknown customer" in note and UNKNOWN in note
    driver.execute_script("window.scrollTo(0, 0);")  # typing scrolled down to the search box

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
    assert page_errors(driver) == []
    assert driver.find_element(By.ID, "status").text == "live"

    shot = tmp_path / "segment-map.png"
    assert driver.save_screenshot(str(shot))
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == tuple(driver.execute_script(
        "return [window.innerWidth * devicePixelRatio, window.innerHeight * devicePixelRatio];"))
    assert len(png) > 30_000  # a drawn page, not a blank one (a white 1440 × 1100 is ~10 KB)

    # The segment catalogue: the first model announced every segment as created, so the
    # panel lists events (the newest 10 of GET /map/data's "catalogue").
    wait_for(lambda: api(worker, "/map/data").get("catalogue"), 60,
             "GET /map/data to serve catalogue events (its \"catalogue\" key, views.py)")

    def catalogue_matches_api() -> list[dict[str, Any]] | None:
        served = api(worker, "/map/data")["catalogue"]
        shown = page_catalogue(driver)
        return shown if shown and [e["event_id"] for e in shown] == [
            e["event_id"] for e in served] else None

    shown = wait.until(lambda _: catalogue_matches_api(), "the catalogue panel")
    assert {e["kind"] for e in shown} <= set(CATALOGUE_KINDS)
    served = {e["event_id"]: e for e in api(worker, "/map/data")["catalogue"]}
    for entry in shown:
        event = served[entry["event_id"]]
        assert f"{event['segment']} · {event['label']}" in entry["text"]
        assert event["kind"] in entry["text"] and f"model v{event['model_version']}" in entry[
            "text"]
    assert "No catalogue events yet" not in driver.find_element(By.ID, "catalogue-hint").text


def page_errors(driver: Any) -> list[dict[str, Any]]:
    """Severe entries of the browser log, but for the 404 of an unknown customer's
    explanation (Chromium logs every failed request; the page expects that one)."""
    quoted = urllib.parse.quote(UNKNOWN, safe="")
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"
            and not (f"/customers/{quoted}/explain" in entry["message"]
                     and " 404 " in entry["message"])]


def page_catalogue(driver: Any) -> list[dict[str, Any]]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#catalogue li')].map((li) => ({event_id: "
        "li.dataset.eventId, kind: li.dataset.kind, segment: Number(li.dataset.segment), "
        "text: li.textContent}));")


def search(driver: Any, customer: str) -> None:
    """Type ``customer`` into the customer search and submit it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.ID, "customer-id")
    field.clear()
    field.send_keys(customer)
    field.send_keys(Keys.ENTER)


def clause_lines(node: dict[str, Any] | None, depth: int = 0) -> list[tuple[int, str, str]]:
    """A condition tree as the page should show it: (depth, mark, line), depth first."""
    if node is None:
        return []
    out = [(depth, MARKS[node["holds"]], node["line"])]
    for child in node.get("all") or node.get("any") or []:
        out += clause_lines(child, depth + 1)
    return out


def page_explanation(driver: Any) -> dict[str, Any]:
    return driver.execute_script("""
        const box = document.getElementById('explain');
        const text = (sel) => { const e = box.querySelector(sel); return e && e.textContent; };
        const lines = (ul) => ul ? [...ul.querySelectorAll('.clause')].map((li) => [
            Number(li.dataset.depth), li.querySelector('.mark').textContent,
            li.querySelector('.line').textContent,
            parseFloat(getComputedStyle(li).paddingLeft)]) : [];
        const title = box.querySelector('#explain-title');
        return {state: box.dataset.state, customer: title && title.dataset.customer,
                title: title && title.textContent, label: text('#explain-label'),
                segment: text('#explain-segment'), summary: text('#explain-summary'),
                nearest: [...box.querySelectorAll('#explain-nearest tbody tr')].map(
                    (r) => Number(r.dataset.segment)),
                holding: [...box.querySelectorAll('#explain-holding tbody tr')].map(
                    (r) => r.dataset.feature),
                pulling: [...box.querySelectorAll('#explain-pulling tbody tr')].map(
                    (r) => r.dataset.feature),
                changes: box.querySelectorAll('#explain-changes li').length,
                audiences: [...box.querySelectorAll('#explain-audiences > li')].map((li) => ({
                    name: li.dataset.audience, member: li.dataset.member === 'true',
                    head: li.querySelector('.audience-head').textContent,
                    rule: li.querySelector('.rule').textContent,
                    condition: lines(li.querySelector('.clauses.condition')),
                    exit: lines(li.querySelector('.clauses.exit'))})),
                text: box.textContent};""")


def explain_matches_api(driver: Any, worker: Any, customer: str) -> dict[str, Any] | None:
    """The explanation shown, when it says what the worker's explain endpoint says."""
    body = api(worker, f"/customers/{urllib.parse.quote(customer, safe='')}/explain", TOKEN)
    shown = page_explanation(driver)
    if shown["state"] != "shown" or shown["customer"] != customer:
        return None
    check_explanation(shown, body)
    return shown


def check_explanation(shown: dict[str, Any], body: dict[str, Any]) -> None:
    detail, placement = body["segment_detail"], body["placement"]
    if detail is not None:
        assert shown["label"] == detail["label"]
        assert f"Segment {detail['id']} · " in shown["segment"]
        assert f"Typical: {detail['typical']}" in shown["segment"]
    if body["not_placed_because"]:
        assert body["not_placed_because"] in shown["segment"]
    if placement is not None:
        assert shown["summary"].lower() == placement["summary"].lower()
        assert shown["nearest"] == [n["segment"] for n in placement["nearest"]]
        assert shown["holding"] == [f["feature"] for f in placement.get("holding_it_here", [])]
        assert shown["pulling"] == [f["feature"]
                                    for f in placement.get("pulling_to_runner_up", [])]
    assert shown["changes"] == len(body["changes"])
    assert [a["name"] for a in shown["audiences"]] == [
        a["name"] for a in body["audience_conditions"]]
    for seen, audience in zip(shown["audiences"], body["audience_conditions"]):
        assert seen["member"] == audience["member"]
        assert f"member: {'yes' if audience['member'] else 'no'}" in seen["head"]
        assert seen["rule"].lower() == audience["rule"].lower()
        for part in ("condition", "exit"):
            tree = audience["condition" if part == "condition" else "exit_condition"]
            assert [tuple(line[:3]) for line in seen[part]] == clause_lines(tree)
            pads = [line[3] for line in seen[part]]  # indented by depth
            assert all((a[0] < b[0]) == (pa < pb) for a, pa, b, pb in zip(
                seen[part], pads, seen[part][1:], pads[1:]))


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


# -- the catalogue and the customer explanation, every kind, against canned answers ------
CANNED_ID = "c/<i>7</i> ?"  # shown as text, sent encoded
SEGMENTS = [{"id": 0, "label": "frequent buyer", "size": 120, "x": -1.0, "y": 0.5},
            {"id": 1, "label": "<b>night owl</b> & app", "size": 80, "x": 1.0, "y": -0.5},
            {"id": 3, "label": "big spender", "size": 5, "x": 0.0, "y": 1.2}]


def canned_event(segment: int, kind: str, label: str, **extra: Any) -> dict[str, Any]:
    version = extra.pop("model_version", 3)
    return {"event_id": f"00000000-0000-4000-8000-{version:06d}{segment:06d}",
            "segment": segment, "kind": kind, "model_version": version,
            "previous_model_version": version - 1 if version > 1 else None, "label": label,
            "previous_label": extra.pop("previous_label", label if version > 1 else None),
            "active": kind not in ("retired", "merged"), "size": extra.pop("size", 10),
            "typical": "2 orders in 90 days, 14 views in 7 days",
            "centre": {"orders_90d": 2.0, "views_7d": 14.0},
            "moved_by": extra.pop("moved_by", None),
            "emitted_at": "2026-01-05T10:11:12.000Z", **extra}


CATALOGUE = [
    canned_event(0, "moved", "frequent buyer", moved_by=0.8),
    canned_event(1, "relabelled", "<b>night owl</b> & app", previous_label="night owl",
                 moved_by=0.21),
    canned_event(2, "merged", "rarely buys", into=0, moved_by=0.3, size=0),
    canned_event(3, "revived", "big spender", revives=4, moved_by=0.1),
    canned_event(4, "retired", "window shopper", successor=3, moved_by=1.2, size=0),
    canned_event(3, "created", "big spender", model_version=1, size=None),
]


def canned_explanation() -> dict[str, Any]:
    from stream_app.core.explain import explain_condition

    values = {"orders_90d": 2, "views_7d": 3, "days_since_last_order": None}
    feature = {"feature": "orders_90d", "value": 2, "z": 1.4, "segment_z": 1.1,
               "other_segment_z": -0.2}
    return {
        "customer_id": CANNED_ID, "as_of": "2026-01-05T09:00:00.000Z", "segment": 0,
        "segment_label": "frequent buyer", "model_version": 3, "features": {},
        "profile": {}, "audiences": ["buyers"], "consent": {"segmentation": True},
        "segment_detail": {"id": 0, "label": "frequent buyer", "active": True,
                           "typical": "2 orders in 90 days, 3 views in 7 days"},
        "placement": {
            "summary": "nearest to segment 0 (frequent buyer); the runner-up, segment 1 "
                       "(<b>night owl</b> & app), is 1.8 times as far.",
            "nearest": [{"segment": 0, "label": "frequent buyer", "distance": 0.5,
                         "relative_to_own": 1.0},
                        {"segment": 1, "label": "<b>night owl</b> & app", "distance": 0.9,
                         "relative_to_own": 1.8}],
            "runner_up": {"segment": 1, "label": "<b>night owl</b> & app", "distance": 0.9,
                          "relative_to_own": 1.8},
            "holding_it_here": [feature],
            "pulling_to_runner_up": [{**feature, "feature": "views_7d", "value": 3}],
        },
        "not_placed_because": None,
        "changes": [{"at": "2026-01-05T08:00:00.000Z", "trigger": "event", "from": None,
                     "from_label": None, "to": 0, "to_label": "frequent buyer",
                     "model_version": 3, "reasons": ["orders_90d"]}],
        "audience_conditions": [
            {"name": "<script>buyers</script>", "member": True, "member_if_judged_now": True,
             "rule": "member until the exit condition holds (hysteresis)",
             "condition": explain_condition(
                 "orders_90d >= 1 and (views_7d > 9 or days_since_last_order < 30)", values),
             "exit_condition": explain_condition("orders_90d == 0", values)},
            {"name": "browsers", "member": False, "member_if_judged_now": False,
             "rule": "enters when the condition holds", "exit_condition": None,
             "condition": explain_condition("views_7d >= 9", values)},
        ],
    }


class CannedWorker(ThreadingHTTPServer):
    """The page with its policy, and canned answers to what it asks."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), CannedHandler)
        self.page = map_page()
        self.catalogue: list[dict[str, Any]] | None = None  # None: no "catalogue" key
        self.token_required = False  # True: as a worker with API_TOKEN and no token given
        self.explanation = canned_explanation()
        self.paths: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def map_data(self) -> dict[str, Any]:
        now = time.time()
        doc = {"now": now, "model_version": 3, "model_created": now - 60, "k": len(SEGMENTS),
               "customers": 205, "unassigned": 0, "excluded": 0, "explained": 0.9,
               "axes": {"x": {"low": "daytime", "high": "night owl"},
                        "y": {"low": "rarely buys", "high": "frequent buyer"}},
               "segments": SEGMENTS, "history": [], "history_interval_s": 10.0,
               "history_span_s": 3600.0, "changes": [],
               "authorised": not self.token_required, "token_required": self.token_required,
               "audiences": []}
        return doc if self.catalogue is None else doc | {"catalogue": self.catalogue}


class CannedHandler(BaseHTTPRequestHandler):
    server: CannedWorker

    def do_GET(self) -> None:
        server, path = self.server, self.path.split("?")[0]
        server.paths.append(self.path)
        if path == "/":
            self.answer(200, server.page.html.encode(), "text/html; charset=utf-8",
                        {"Content-Security-Policy": server.page.content_security_policy})
        elif path == "/map/data":
            self.answer(200, orjson.dumps(server.map_data()))
        elif path == f"/customers/{urllib.parse.quote(CANNED_ID, safe='')}/explain":
            self.answer(200, orjson.dumps(server.explanation))
        elif path.startswith("/customers/"):
            self.answer(404, orjson.dumps({"error": "unknown customer"}))
        else:
            self.answer(404, orjson.dumps({"error": "not found"}))

    def answer(self, status: int, body: bytes, kind: str = "application/json",
               headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": kind, **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def canned() -> Iterator[CannedWorker]:
    server = CannedWorker()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_catalogue_and_explanation_of_every_kind_in_chromium(canned, chromium) -> None:
    from jsonschema import Draft7Validator, FormatChecker
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from stream_app.core.schemas import load_schema

    validator = Draft7Validator(load_schema("segment-catalogue.schema.json"),
                                format_checker=FormatChecker())
    for event in CATALOGUE:  # canned, but as the worker would send them
        validator.validate(event)
    assert {e["kind"] for e in CATALOGUE} == set(CATALOGUE_KINDS)

    driver = chromium
    driver.get(canned.url + "/")
    wait = WebDriverWait(driver, 30, poll_frequency=0.2)
    # No "catalogue" key (a worker from before it): the panel says there is nothing yet.
    wait.until(lambda _: driver.find_element(By.ID, "status").text == "live", "a poll")
    assert driver.find_elements(By.CSS_SELECTOR, "#catalogue li") == []
    assert "No catalogue events yet" in driver.find_element(By.ID, "catalogue-hint").text

    canned.catalogue = CATALOGUE
    wait.until(lambda _: len(page_catalogue(driver)) == len(CATALOGUE), "the catalogue")
    shown = page_catalogue(driver)
    assert [(e["kind"], e["segment"]) for e in shown] == [
        (e["kind"], e["segment"]) for e in CATALOGUE]
    texts = {e["kind"]: e["text"] for e in shown}
    for entry, event in zip(shown, CATALOGUE):
        assert f"{event['segment']} · {event['label']}" in entry["text"]
        assert f"model v{event['model_version']}" in entry["text"]
    assert "Its centre moved by 0.80 standard deviations." in texts["moved"]
    assert "Label “night owl” → “<b>night owl</b> & app”" in texts["relabelled"]
    assert driver.find_element(By.CSS_SELECTOR, "#catalogue .old-label").text == "“night owl”"
    assert "merged into segment 0 (frequent buyer)" in texts["merged"]
    assert "where retired segment 4 stood" in texts["revived"]
    assert "its members go to segment 3 (big spender)" in texts["retired"]
    assert "A new segment." in texts["created"] and "(was v" not in texts["created"]
    assert "(was v2)" in texts["moved"] and "120 customers" not in texts["moved"]
    assert "10 customers" in texts["moved"]

    # With no token required, the search box is there for everyone.
    assert driver.find_element(By.ID, "customer-form").is_displayed()
    search(driver, CANNED_ID)
    wait.until(lambda _: page_explanation(driver)["state"] == "shown", "the explanation")
    shown_explanation = page_explanation(driver)
    assert shown_explanation["customer"] == CANNED_ID
    assert shown_explanation["title"] == f"Customer {CANNED_ID}"
    check_explanation(shown_explanation, canned.explanation)
    buyers = shown_explanation["audiences"][0]
    assert [line[:2] for line in buyers["condition"]] == [
        [0, "?"], [1, "✓"], [1, "?"], [2, "✗"], [2, "?"]]  # null: cannot be evaluated
    assert buyers["condition"][3][3] > buyers["condition"][1][3] > buyers["condition"][0][3]
    assert buyers["exit"] == [[0, "✗", "orders_90d == 0: 2 → false", 0.0]]
    assert "Holding it here" in shown_explanation["text"]
    assert "Pulling towards segment 1 · <b>night owl</b> & app" in shown_explanation["text"]
    assert "their own activity" in shown_explanation["text"]
    # Every text went in as text: no element came from the data.
    assert driver.find_elements(By.CSS_SELECTOR, "#explain i, #explain b, #explain script, "
                                                 "#catalogue b, #map b, #legend b") == []
    encoded = urllib.parse.quote(CANNED_ID, safe="")
    assert f"/customers/{encoded}/explain" in canned.paths

    search(driver, UNKNOWN)
    wait.until(lambda _: page_explanation(driver)["state"] == "unknown", "the unknown one")
    assert UNKNOWN in driver.find_element(By.ID, "explain-unknown").text
    assert f"/customers/{urllib.parse.quote(UNKNOWN, safe='')}/explain" in canned.paths

    # The token is needed now (forgotten, or a worker with API_TOKEN): no search box, and
    # the explanation shown before is gone.
    search(driver, CANNED_ID)
    wait.until(lambda _: page_explanation(driver)["state"] == "shown", "the explanation")
    canned.token_required = True
    wait.until(lambda _: not driver.find_element(By.ID, "customer-form").is_displayed(),
               "the search box to go")
    assert page_explanation(driver)["text"] == "" and CANNED_ID not in driver.find_element(
        By.TAG_NAME, "body").text
    assert "needs the API token" in driver.find_element(By.ID, "customer-hint").text
    assert len(page_catalogue(driver)) == len(CATALOGUE)  # the catalogue names no customer
    assert page_errors(driver) == []  # no policy violation, no script error
