"""Compare a running worker's customer features with a batch recomputation.

``stream-app verify EVENTS.jsonl --url URL`` loads the events that were produced, recomputes
every customer with :mod:`stream_app.tools.batch`, fetches ``GET {url}/customers/{id}`` from the
worker and reports every feature that differs. The batch is evaluated at the worker's own
``as_of`` (the worker's clock may have been moved forward by an inactivity sweep).

Comparison rules:

* counts: same ``int`` exactly (a float or a boolean is a mismatch);
* money (``revenue_*``, ``avg_order_value_90d``): equal as ``round(x * 100)`` cents;
* ratios and ``days_since_last_order``: within 1e-9 absolute (``None`` only equals ``None``);
* ``first_order_ts`` / ``last_order_ts``: the same ISO-8601 UTC string with milliseconds.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from stream_app.client.worker_api import WorkerAccessError, access_error

# Relative import of the sibling module only: batch.py itself imports nothing from
# stream_app, which is what keeps the two implementations independent.
from .batch import DEFAULT_LATENESS_MS, FEATURE_NAMES, BatchCustomer, parse_ts, recompute

__all__ = [
    "Mismatch",
    "WorkerAccessError",
    "access_error",
    "compare",
    "fetch_customer",
    "format_ts",
    "load_events",
    "run",
]

#: Features compared as exact integers.
INT_FEATURES = frozenset({
    "orders_total", "orders_30d", "orders_90d", "distinct_categories_90d", "views_24h",
    "views_7d", "sessions_7d", "searches_7d", "add_to_cart_7d", "events_30d",
})
#: Features compared as money, in whole cents.
MONEY_FEATURES = frozenset({
    "revenue_total", "revenue_30d", "revenue_90d",
})
#: Features compared as floats within :data:`TOLERANCE` (``None`` allowed).
FLOAT_FEATURES = frozenset({
    "avg_order_value_90d", "days_since_last_order", "discount_share_90d", "cart_abandon_rate_7d",
    "night_share_30d", "app_share_30d",
})
#: Features compared as ISO-8601 UTC timestamps.
TS_FEATURES = frozenset({"first_order_ts", "last_order_ts"})
TOLERANCE = 1e-9

#: Placeholder for a feature absent from the worker's document.
ABSENT = "<absent>"


@dataclass(frozen=True)
class Mismatch:
    """One difference between the batch result and the worker.

    ``feature`` is a feature name, or ``"<missing>"`` when the worker does not know the
    customer, ``"<error>"`` when it could not be fetched, ``"as_of"`` when the worker's
    clock is missing, unreadable or behind the batch.
    """

    customer_id: str
    feature: str
    expected: Any
    actual: Any


def format_ts(epoch_ms: int | None) -> str | None:
    """Epoch milliseconds as ``%Y-%m-%dT%H:%M:%S.mmmZ`` (UTC); ``None`` stays ``None``.

    Examples
    --------
    >>> format_ts(1795469400250)
    '2026-11-23T21:30:00.250Z'
    >>> format_ts(None) is None
    True
    """
    if epoch_ms is None:
        return None
    seconds, millis = divmod(epoch_ms, 1000)
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"


def load_events(path: str | Path) -> list[dict]:
    """Read a JSONL file: one event document per line, blank lines ignored.

    Raises
    ------
    ValueError
        For a line that is not a JSON object (the message gives the line number).
    """
    events: list[dict] = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: invalid JSON: {exc}") from None
            if not isinstance(doc, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
            events.append(doc)
    return events


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(name: str, expected: Any, actual: Any) -> bool:
    if name in INT_FEATURES:
        return isinstance(actual, int) and not isinstance(actual, bool) and actual == expected
    if name in MONEY_FEATURES:
        return _is_number(actual) and round(actual * 100) == round(expected * 100)
    if name in FLOAT_FEATURES:
        if expected is None or actual is None:
            return expected is None and actual is None
        return _is_number(actual) and abs(actual - expected) <= TOLERANCE
    if name in TS_FEATURES:
        return actual == format_ts(expected)
    return actual == expected


def _compare_customer(customer: BatchCustomer, doc: dict | None) -> tuple[list[Mismatch], int]:
    """Mismatches of one customer and the number of features compared."""
    cid = customer.customer_id
    if doc is None:
        return [Mismatch(cid, "<missing>", "present", None)], 0
    out: list[Mismatch] = []
    at = customer.as_of
    raw_as_of = doc.get("as_of")
    try:
        worker_as_of = None if raw_as_of is None else parse_ts(raw_as_of)[0]
    except ValueError:
        worker_as_of = None
    if worker_as_of is None or worker_as_of < customer.as_of:
        # The worker has not seen everything (or reports no clock): say so and compare
        # the features at the batch's own clock.
        out.append(Mismatch(cid, "as_of", f">= {format_ts(customer.as_of)}", raw_as_of))
    else:
        at = worker_as_of
    expected = customer.features(at)
    actual = doc.get("features")
    if not isinstance(actual, dict):
        actual = {}
    for name in FEATURE_NAMES:
        value = actual.get(name, ABSENT)
        if value is ABSENT or not _same(name, expected[name], value):
            shown = format_ts(expected[name]) if name in TS_FEATURES else expected[name]
            out.append(Mismatch(cid, name, shown, value))
    return out, len(FEATURE_NAMES)


def _compared(batch: dict[str, BatchCustomer]) -> list[BatchCustomer]:
    return [c for _, c in sorted(batch.items()) if c.has_activity]


def compare(batch: dict[str, BatchCustomer],
            fetch: Callable[[str], dict | None]) -> list[Mismatch]:
    """Compare every active batch customer with the worker's document.

    Parameters
    ----------
    batch : dict of str to BatchCustomer
        Result of :func:`stream_app.tools.batch.recompute`.
    fetch : callable
        ``fetch(customer_id)`` returns the worker's ``GET /customers/{id}`` document, or
        ``None`` when the worker answers 404.

    Returns
    -------
    list of Mismatch
        Sorted by customer id, then in feature order; empty when everything matches.
        Customers without any accepted click or purchase are not compared.

    Examples
    --------
    >>> from stream_app.tools.batch import recompute
    >>> batch = recompute([{"event_id": "e", "customer_id": "c", "ts": 0,
    ...                     "event_type": "search"}])
    >>> compare(batch, lambda cid: None)
    [Mismatch(customer_id='c', feature='<missing>', expected='present', actual=None)]
    """
    mismatches: list[Mismatch] = []
    for customer in _compared(batch):
        found, _ = _compare_customer(customer, fetch(customer.customer_id))
        mismatches.extend(found)
    return mismatches


def fetch_customer(url: str, customer_id: str, timeout: float = 10.0,
                   retries: int = 2, token: str = "") -> dict | None:
    """``GET {url}/customers/{quoted id}``: the decoded document, or ``None`` on 404.

    ``token`` is the API's bearer token (``API_TOKEN``), if it has one. Connection errors
    and 5xx answers are retried ``retries`` times before raising.
    """
    target = f"{url.rstrip('/')}/customers/{urllib.parse.quote(customer_id, safe='')}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for attempt in range(retries + 1):
        try:
            request = urllib.request.Request(target, headers=headers)
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            if exc.code < 500 or attempt == retries:
                raise
        except (urllib.error.URLError, OSError):
            if attempt == retries:
                raise
        time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _render(mismatches: list[Mismatch], max_rows: int, console: Any) -> None:
    from rich.table import Table

    table = Table(title="Feature mismatches (expected = batch, actual = worker)")
    for column in ("customer", "feature", "expected", "actual"):
        table.add_column(column)
    for m in mismatches[:max_rows]:
        table.add_row(m.customer_id, m.feature, repr(m.expected), repr(m.actual))
    console.print(table)
    if len(mismatches) > max_rows:
        console.print(f"... and {len(mismatches) - max_rows} more")


def run(path: str | Path, url: str, lateness_ms: int = DEFAULT_LATENESS_MS,
        max_rows: int = 50, console: Any = None, token: str = "") -> int:
    """Verify a running worker against the batch recomputation of an events file.

    Parameters
    ----------
    path : str or Path
        JSONL file of the input events, in the order they were produced.
    url : str
        Base URL of the worker's web server, e.g. ``http://127.0.0.1:6066``.
    lateness_ms : int, default 3_600_000
        The allowed lateness the worker runs with.
    max_rows : int, default 50
        At most this many mismatches are shown in the table.
    console : rich.console.Console, optional
        Where to print; a new console on stdout by default.
    token : str, optional
        The API's bearer token (``API_TOKEN``).

    Returns
    -------
    int
        0 when every feature of every customer matches, 1 otherwise.

    Raises
    ------
    WorkerAccessError
        When the worker does not answer, or answers 401 (no token, or a refused one):
        nothing could be compared, so no table of mismatches either.
    """
    if console is None:
        from rich.console import Console

        console = Console()
    customers = _compared(recompute(load_events(path), lateness_ms))

    def fetch(customer: BatchCustomer) -> dict | Exception | None:
        try:
            return fetch_customer(url, customer.customer_id, token=token)
        except Exception as exc:  # reported as a mismatch, not a crash
            return exc

    documents = [fetch(customer) for customer in customers[:1]]
    # The first answer alone first: a worker that cannot be used stops the run here,
    # before thousands of requests that would all fail the same way.
    if documents and isinstance(documents[0], Exception):
        problem = access_error(url, documents[0], token)
        if problem is not None:
            raise problem
    with ThreadPoolExecutor(max_workers=16) as pool:
        documents += pool.map(fetch, customers[1:])
    for doc in documents:  # a worker restarted with a token meanwhile, say
        if isinstance(doc, urllib.error.HTTPError) and doc.code == 401:
            raise access_error(url, doc, token) or WorkerAccessError(str(doc))

    mismatches: list[Mismatch] = []
    features = 0
    for customer, doc in zip(customers, documents):
        if isinstance(doc, Exception):
            mismatches.append(Mismatch(customer.customer_id, "<error>", "a document",
                                       f"{type(doc).__name__}: {doc}"))
            continue
        found, compared = _compare_customer(customer, doc)
        mismatches.extend(found)
        features += compared
    if mismatches:
        _render(mismatches, max_rows, console)
    console.print(f"checked {len(customers)} customers, {features} features, "
                  f"{len(mismatches)} mismatches")
    return 0 if not mismatches else 1
