"""A worker's HTTP API from a script or a terminal: why a customer is where it is
(``GET /customers/{id}/explain``), what candidate audience definitions would hold
(``POST /audiences/preview``), and both as plain text for people (``stream-app explain``,
``stream-app audiences preview``).

Plain ``urllib``: no event loop, no Kafka client. A worker that cannot be used at all
(nothing answers, or it wants another token) is a :class:`WorkerAccessError` with one line
to show; :func:`access_error` turns the exceptions of ``urllib`` into it.

>>> print(explain_text({"customer_id": "c-1", "segment": None, "audience_conditions": [],
...                     "not_placed_because": "no model yet", "changes": []}))
customer c-1
segment: none
not placed: no model yet
last changes: none
audiences: none defined
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

__all__ = [
    "WorkerAccessError",
    "WorkerError",
    "access_error",
    "explain",
    "explain_text",
    "preview",
    "preview_text",
]

#: Seconds :func:`preview` waits for an answer beyond the preview's own time limit (the
#: worker asked gives its peers 10 s more, then merges).
PREVIEW_GRACE_S = 30.0
#: Segments of the overlap shown per audience by :func:`preview_text`.
TOP_SEGMENTS = 5
#: Indentation of one level of a condition tree in :func:`explain_text`.
INDENT = "  "


class WorkerAccessError(RuntimeError):
    """The worker's HTTP API cannot be used at all (nothing answers, or it wants another
    token): one line to show, and the command's exit status (2: nothing was checked)."""

    status = 2


class WorkerError(RuntimeError):
    """The worker answered, but with an error about this request (a 500, say); the
    message has the status and the worker's ``error`` text."""


def access_error(url: str, exc: BaseException, token: str = "") -> WorkerAccessError | None:
    """The :class:`WorkerAccessError` that ``exc``, raised by a request to the worker at
    ``url``, amounts to; None for an error about one customer (a 500, say).

    >>> import urllib.error
    >>> def refused(code: int) -> urllib.error.HTTPError:
    ...     return urllib.error.HTTPError("u", code, "x", {}, None)  # type: ignore[arg-type]
    >>> print(access_error("http://w:6066", refused(401)))
    the worker at http://w:6066 needs an API token (401 Unauthorized): pass --token or set API_TOKEN
    >>> print(access_error("http://w:6066", refused(401), token="t"))
    the worker at http://w:6066 refused the API token (401 Unauthorized): check --token or API_TOKEN
    >>> print(access_error("http://w:6066", urllib.error.URLError(ConnectionRefusedError(
    ...     111, "Connection refused"))))
    cannot reach the worker at http://w:6066: connection refused. Is a worker running there? (--url)
    >>> access_error("http://w:6066", refused(500)) is None
    True
    """
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code != 401:
            return None
        if token:
            return WorkerAccessError(f"the worker at {url} refused the API token (401 "
                                     "Unauthorized): check --token or API_TOKEN")
        return WorkerAccessError(f"the worker at {url} needs an API token (401 "
                                 "Unauthorized): pass --token or set API_TOKEN")
    if isinstance(exc, (urllib.error.URLError, OSError)):
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            text = "no answer in time"
        elif isinstance(reason, OSError) and reason.strerror:
            text = reason.strerror.lower()
        else:
            text = str(reason)
        return WorkerAccessError(f"cannot reach the worker at {url}: {text}. Is a worker "
                                 "running there? (--url)")
    return None


def _error_text(exc: urllib.error.HTTPError) -> str:
    """The ``error`` of a JSON error answer, else its first 200 characters, else the
    reason phrase."""
    try:
        body = exc.read()
    except Exception:  # a body that cannot be read: the status says enough
        body = b""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return doc["error"]
    return body.decode("utf-8", "replace").strip()[:200] or str(exc.reason)


def _call(url: str, path: str, token: str, timeout: float,
          body: bytes | None = None) -> tuple[int, Any]:
    """``GET`` (``POST`` with ``body``) ``{url}{path}``: ``(status, decoded JSON)`` for a
    2xx answer and a 400 or 404 one; a :class:`WorkerAccessError` when the worker cannot
    be used, a :class:`WorkerError` for any other error answer."""
    base = url.rstrip("/")
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base + path, data=body, headers=headers,
                                     method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        problem = access_error(base, exc, token)
        if problem is not None:
            raise problem from None
        text = _error_text(exc)
        if exc.code in (400, 404):
            return exc.code, {"error": text}
        raise WorkerError(f"the worker at {base} answered {exc.code}: {text}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise access_error(base, exc, token) or exc from None
    except orjson.JSONDecodeError as exc:
        raise WorkerError(f"the worker at {base} answered with no JSON document: {exc}") \
            from None


def explain(url: str, customer_id: str, token: str = "", timeout: float = 10.0
            ) -> dict[str, Any] | None:
    """``GET {url}/customers/{id}/explain``: why the customer is where it is.

    Parameters
    ----------
    url : str
        A worker's HTTP address, e.g. ``http://127.0.0.1:6066`` (any worker: the request is
        routed to the one that owns the customer).
    customer_id : str
        The customer's id as the shop knows it (URL-quoted here; with ``PSEUDONYM_KEY`` the
        worker answers with the pseudonym).
    token : str, optional
        The API's bearer token (``API_TOKEN``), if it has one.
    timeout : float, default 10
        Seconds to wait for the answer.

    Returns
    -------
    dict or None
        The document (``GET /customers/{id}`` plus ``segment_detail``, ``placement``,
        ``not_placed_because``, ``changes`` and ``audience_conditions``), or None when the
        worker does not know the customer (404).

    Raises
    ------
    WorkerAccessError
        When no worker answers at ``url``, or it answers 401.
    WorkerError
        For another error answer (a 500, say).
    """
    path = f"/customers/{urllib.parse.quote(customer_id, safe='')}/explain"
    status, doc = _call(url, path, token, timeout)
    if status == 404:
        return None
    if status == 400:
        raise WorkerError(f"the worker at {url.rstrip('/')} answered 400: {doc['error']}")
    return doc


def preview(url: str, document: Mapping[str, Any], token: str = "",
            time_limit_s: float = 30.0) -> dict[str, Any]:
    """``POST {url}/audiences/preview``: what the candidate definitions ``document`` would
    hold on every worker's customers, without applying them (nothing is written or sent).

    Parameters
    ----------
    url : str
        A worker's HTTP address; it asks its peers for their parts.
    document : mapping
        The definitions, as in a definitions file: ``{"audiences": [...]}``.
    token : str, optional
        The API's bearer token (``API_TOKEN``), if it has one.
    time_limit_s : float, default 30
        Seconds the workers may spend judging; past it the answer is partial
        (``complete`` false). The request waits :data:`PREVIEW_GRACE_S` longer.

    Returns
    -------
    dict
        ``version``, ``customers``, ``audiences`` (each: ``name``, ``condition``,
        ``exit_condition``, ``members``, ``would_enter``, ``would_exit``, ``segments``,
        ``overlap``, ``sample``), ``dropped``, ``applied_version``, ``complete``,
        ``partitions_reporting``, ``workers`` and ``seconds``.

    Raises
    ------
    ValueError
        When the worker refuses the document or the time limit (400): the worker's
        ``error`` text.
    WorkerAccessError
        When no worker answers at ``url`` in time, or it answers 401.
    WorkerError
        For another error answer.
    """
    path = f"/audiences/preview?time_limit={time_limit_s:g}"
    status, doc = _call(url, path, token, time_limit_s + PREVIEW_GRACE_S,
                        body=orjson.dumps(document))
    if status == 400:
        raise ValueError(doc["error"])
    if status == 404:
        raise WorkerError(f"the worker at {url.rstrip('/')} has no audience preview (404): "
                          "an older version?")
    return doc


# -- plain text for people --------------------------------------------------------------

def _number(value: object) -> str:
    """A value as :func:`explain_text` shows it.

    >>> [_number(v) for v in (None, 3, 2.5, 0.123456, "Almaty", True)]
    ['null', '3', '2.5', '0.1235', "'Almaty'", 'true']
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _segment(segment: object, label: object) -> str:
    if segment is None:
        return "none"
    return f"{segment} ({label})" if label else str(segment)


def condition_lines(node: Mapping[str, Any] | None, depth: int = 0) -> list[str]:
    """Every node of a condition tree (``explain_condition``) as its ``line``, indented
    by its depth.

    >>> tree = {"line": "all of 2 → false", "all": [
    ...     {"line": "orders_30d >= 3: 1 → false"},
    ...     {"line": "any of 2 → true", "any": [{"line": "region == 'A': 'A' → true"},
    ...                                          {"line": "views_7d > 9: 2 → false"}]}]}
    >>> print("\\n".join(condition_lines(tree)))
    all of 2 → false
      orders_30d >= 3: 1 → false
      any of 2 → true
        region == 'A': 'A' → true
        views_7d > 9: 2 → false
    """
    if node is None:
        return []
    lines = [INDENT * depth + str(node.get("line", node.get("text", "")))]
    for child in node.get("all", node.get("any", ())):
        lines.extend(condition_lines(child, depth + 1))
    return lines


def _reasons(reasons: Iterable[Mapping[str, Any] | str], names: tuple[str, str] = ("", "")
             ) -> str:
    """Features with the customer's value and z-scores, comma-separated; ``names`` name
    the centres of ``segment_z`` and ``other_segment_z`` (a change stores feature names
    alone).

    >>> _reasons([{"feature": "views_7d", "value": 12, "z": 1.5, "segment_z": 1.2,
    ...            "other_segment_z": -0.3}, "orders_90d"], ("own", "runner-up"))
    'views_7d = 12 (z 1.5; own 1.2, runner-up -0.3), orders_90d'
    """
    parts = []
    for r in reasons:
        if not isinstance(r, Mapping):
            parts.append(str(r))
            continue
        centres = [f"{name or 'segment'} {_number(r[key])}"
                   for name, key in zip(names, ("segment_z", "other_segment_z")) if key in r]
        parts.append(f"{r.get('feature')} = {_number(r.get('value'))} (z "
                     f"{_number(r.get('z'))}" + (f"; {', '.join(centres)}" if centres else "")
                     + ")")
    return ", ".join(parts) or "none"


def _placement_lines(placement: Mapping[str, Any]) -> list[str]:
    lines = [f"placement: {placement.get('summary', '')}".rstrip()]
    nearest = placement.get("nearest") or []
    if nearest:
        lines.append("  nearest segments:")
        for n in nearest:
            relative = n.get("relative_to_own")
            times = f"  ({relative} × its own)" if relative is not None else ""
            lines.append(f"    segment {_segment(n.get('segment'), n.get('label'))}: "
                         f"distance {_number(n.get('distance'))}{times}")
    runner = placement.get("runner_up")
    if runner:
        lines.append(
            f"  runner-up: segment {_segment(runner.get('segment'), runner.get('label'))}; "
            f"a move needs its distance below {_number(runner.get('moves_when_distance_below'))}"
            f" (now {_number(runner.get('distance'))}; margin {_number(runner.get('margin'))},"
            f" {runner.get('confirmations_so_far', 0)} of "
            f"{runner.get('confirmations_needed', 1)} confirmations)")
    pending = placement.get("pending")
    if pending:
        lines.append(f"  pending: a move to segment {pending.get('segment')}, "
                     f"{pending.get('confirmations_so_far')} confirmation(s) so far")
    if "holding_it_here" in placement:
        lines.append("  holding it here (value, z-score; the centres' z-scores): "
                     + _reasons(placement["holding_it_here"], ("own", "runner-up")))
        lines.append("  pulling to the runner-up: "
                     + _reasons(placement.get("pulling_to_runner_up") or [],
                                ("runner-up", "own")))
    return lines


def _change_line(change: Mapping[str, Any]) -> str:
    line = (f"  {change.get('at')}  {change.get('trigger')}: segment "
            f"{_segment(change.get('from'), change.get('from_label'))} → "
            f"{_segment(change.get('to'), change.get('to_label'))}")
    if change.get("model_version") is not None:
        line += f", model {change['model_version']}"
    reasons = change.get("reasons") or []
    if reasons:
        line += f"; reasons: {_reasons(reasons)}"
    return line


def _audience_lines(audience: Mapping[str, Any]) -> list[str]:
    member, judged = audience.get("member"), audience.get("member_if_judged_now")
    state = "member" if member else "not a member"
    if judged is not None and judged != member:
        state += (" (would be one if judged now)" if judged
                  else " (would leave if judged now)")
    lines = [f"  {audience.get('name')}: {state}", f"    rule: {audience.get('rule')}",
             "    condition:"]
    lines.extend(INDENT * 3 + line for line in condition_lines(audience.get("condition")))
    exit_tree = audience.get("exit_condition")
    if exit_tree is None:
        lines.append("    exit condition: none (leaves when the condition no longer holds)")
    else:
        lines.append("    exit condition:")
        lines.extend(INDENT * 3 + line for line in condition_lines(exit_tree))
    return lines


def explain_text(doc: Mapping[str, Any]) -> str:
    """A ``GET /customers/{id}/explain`` document as plain text for people: the segment
    with its label and typical values, the placement (summary, nearest segments, the
    runner-up, the features holding the customer and pulling it away), the last changes
    with their triggers and reasons, and every audience with the rule that applies and
    each clause of both conditions on its own line, indented by its depth.

    Parameters
    ----------
    doc : mapping
        What :func:`explain` returns.

    Returns
    -------
    str
        Lines without a trailing newline.

    Examples
    --------
    >>> doc = {"customer_id": "c-7", "as_of": "2026-11-24T10:00:00.000Z", "segment": 2,
    ...        "segment_label": "browser", "model_version": 4,
    ...        "segment_detail": {"id": 2, "label": "browser", "active": True,
    ...                           "typical": "12 views in 7 days"},
    ...        "placement": None, "not_placed_because": None, "changes": [],
    ...        "audience_conditions": [{"name": "browsers", "member": True,
    ...            "member_if_judged_now": True, "rule": "member while the condition holds",
    ...            "condition": {"line": "views_7d >= 5: 12 → true"},
    ...            "exit_condition": None}]}
    >>> print(explain_text(doc))
    customer c-7, as of 2026-11-24T10:00:00.000Z
    segment: 2 (browser), from model version 4
      typical: 12 views in 7 days
    last changes: none
    audiences:
      browsers: member
        rule: member while the condition holds
        condition:
          views_7d >= 5: 12 → true
        exit condition: none (leaves when the condition no longer holds)
    """
    head = f"customer {doc.get('customer_id')}"
    if doc.get("as_of"):
        head += f", as of {doc['as_of']}"
    lines = [head]
    if doc.get("consent", {}).get("segmentation") is False:
        lines.append("consent to segmentation withdrawn")
    detail = doc.get("segment_detail")
    segment = _segment(doc.get("segment"), doc.get("segment_label"))
    if detail and detail.get("active") is False:
        segment += " (retired)"
    if doc.get("segment") is not None and doc.get("model_version") is not None:
        segment += f", from model version {doc['model_version']}"
    lines.append(f"segment: {segment}")
    if detail and detail.get("typical"):
        lines.append(f"  typical: {detail['typical']}")
    if doc.get("placement"):
        lines.extend(_placement_lines(doc["placement"]))
    elif doc.get("not_placed_because"):
        lines.append(f"not placed: {doc['not_placed_because']}")
    changes = doc.get("changes") or []
    lines.append("last changes (newest first):" if changes else "last changes: none")
    lines.extend(_change_line(c) for c in changes)
    audiences = doc.get("audience_conditions") or []
    lines.append("audiences:" if audiences else "audiences: none defined")
    for audience in audiences:
        lines.extend(_audience_lines(audience))
    return "\n".join(lines)


def _counts(mapping: Mapping[str, int], limit: int | None = None, prefix: str = "") -> str:
    items = list(mapping.items())
    shown = ", ".join(f"{prefix}{key}: {n}" for key, n in items[:limit])
    if limit is not None and len(items) > limit:
        shown += f", … ({len(items) - limit} more)"
    return shown or "none"


def preview_text(doc: Mapping[str, Any]) -> str:
    """A ``POST /audiences/preview`` answer as plain text for people: per audience its
    members, who would enter and who would exit, the segments its members are in (the
    largest first), its overlap with the other audiences and a few member ids; the
    applied audiences the candidate drops; whether every partition reported, from how
    many workers, in how many seconds. Segments are named with their labels when the
    answer has them (``segment_labels``).

    Parameters
    ----------
    doc : mapping
        What :func:`preview` returns.

    Returns
    -------
    str
        Lines without a trailing newline.

    Examples
    --------
    >>> doc = {"version": "aaaaaaaaaaaa", "applied_version": "bbbbbbbbbbbb", "customers": 40,
    ...        "audiences": [{"name": "buyers", "condition": "orders_30d >= 1",
    ...                       "exit_condition": None, "members": 20, "would_enter": 5,
    ...                       "would_exit": 2, "segments": {"3": 12, "1": 8},
    ...                       "overlap": {"browsers": 10}, "sample": ["c-1", "c-2"]}],
    ...        "segment_labels": {"3": "frequent buyer", "1": "browser"},
    ...        "dropped": [{"name": "lapsed", "would_exit": 7}], "complete": True,
    ...        "partitions_reporting": [0, 1, 2, 3], "workers": 1, "seconds": 0.012}
    >>> print(preview_text(doc))
    definitions aaaaaaaaaaaa (applied now: bbbbbbbbbbbb), judged on 40 customers
    buyers: 20 members, 5 would enter, 2 would exit
      condition: orders_30d >= 1
      segments: segment 3 (frequent buyer): 12, segment 1 (browser): 8
      overlap: browsers: 10
      sample: c-1, c-2
    dropped: lapsed (7 members would exit)
    complete: every partition reported (4), 1 worker, 0.012 s
    """
    lines = [f"definitions {doc.get('version')} (applied now: {doc.get('applied_version')}), "
             f"judged on {doc.get('customers')} customers"]
    labels: Mapping[str, str] = doc.get("segment_labels") or {}
    for a in doc.get("audiences") or []:
        lines.append(f"{a.get('name')}: {a.get('members')} members, "
                     f"{a.get('would_enter')} would enter, {a.get('would_exit')} would exit")
        lines.append(f"  condition: {a.get('condition')}")
        if a.get("exit_condition"):
            lines.append(f"  exit condition: {a['exit_condition']}")
        segments = {f"{s} ({labels[s]})" if s in labels else s: n
                    for s, n in (a.get("segments") or {}).items()}
        lines.append(f"  segments: {_counts(segments, TOP_SEGMENTS, 'segment ')}")
        lines.append(f"  overlap: {_counts(a.get('overlap') or {})}")
        sample: Sequence[str] = a.get("sample") or []
        lines.append(f"  sample: {', '.join(sample) if sample else 'none'}")
    dropped = doc.get("dropped") or []
    if dropped:
        lines.append("dropped: " + ", ".join(
            f"{d.get('name')} ({d.get('would_exit')} members would exit)" for d in dropped))
    workers = doc.get("workers")
    who = f"{workers} worker{'s' if workers != 1 else ''}"
    reporting = doc.get("partitions_reporting") or []
    if doc.get("complete"):
        lines.append(f"complete: every partition reported ({len(reporting)}), {who}, "
                     f"{doc.get('seconds')} s")
    else:
        lines.append(f"PARTIAL: not every customer was judged (partitions reporting: "
                     f"{', '.join(map(str, reporting)) or 'none'}; the time limit, a "
                     f"worker that did not answer, or a rebalance), {who}, "
                     f"{doc.get('seconds')} s")
    return "\n".join(lines)
