"""Why a customer is where it is: its place among the segments, and every audience's
condition clause by clause (``GET /customers/{id}/explain``, ``stream-app explain``).

A condition is split where the user wrote ``or`` and ``and`` at its top level (``or``
first: it binds loosest), and into a group in parentheses; what remains is a *clause*,
evaluated on its own, exactly as the audience evaluates a condition
(:meth:`~stream_app.core.audiences.Audience.holds`). A clause or a condition that meets a
null value cannot be evaluated: it answers ``None`` and counts as not holding.

>>> tree = explain_condition('orders_30d >= 3 and (region == "Almaty" or views_7d > 9)',
...                          {"orders_30d": 1, "region": "Almaty", "views_7d": 2})
>>> tree["holds"], tree["all"][0]["line"], tree["all"][1]["holds"]
(False, 'orders_30d >= 3: 1 → false', True)
>>> explain_condition("days_since_last_order > 30", {})["line"]
'days_since_last_order > 30: null → cannot be evaluated (null), does not hold'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from rule_engine.parser import Parser

from stream_app.core.audiences import Audience, AudienceSet, compile_condition
from stream_app.core.changes import iso_ms
from stream_app.model.labels import typical_values
from stream_app.model.segmentation import SegmentModel

#: Segments listed by :func:`explain_placement`, nearest first.
NEAREST = 3
#: Token types that open and close a group (brackets of arrays, mappings and calls too).
OPENING = frozenset({"LPAREN", "LBRACKET", "LBRACE"})
CLOSING = frozenset({"RPAREN", "RBRACKET", "RBRACE"})


@dataclass(frozen=True, slots=True)
class Token:
    """One token of a condition: its type (rule-engine's name) and where it starts."""

    kind: str
    start: int


@lru_cache(maxsize=1)
def _lexer() -> Any:
    # rule-engine's own lexer (an attribute of its parser: pinned below 6 in pyproject).
    return Parser()._lexer


@lru_cache(maxsize=1024)
def tokens(text: str) -> tuple[Token, ...]:
    """The tokens of ``text`` with their positions.

    >>> [t.kind for t in tokens('region == "a and b"')]
    ['SYMBOL', 'EQ', 'STRING']
    """
    lexer = _lexer().clone()
    lexer.input(text)
    return tuple(Token(t.type, t.lexpos) for t in lexer)


def split_condition(text: str) -> tuple[str, list[str]]:
    """``("any", parts)`` or ``("all", parts)`` where ``text`` is an ``or`` / ``and`` of
    parts at its top level, ``("group", [inner])`` for one group in parentheses, and
    ``("clause", [text])`` otherwise.

    >>> split_condition("a > 1 and b < 2 or c == 3")
    ('any', ['a > 1 and b < 2', 'c == 3'])
    >>> split_condition("(a > 1 or b < 2)")
    ('group', ['a > 1 or b < 2'])
    >>> split_condition("segment in [3, 7]")
    ('clause', ['segment in [3, 7]'])
    """
    text = text.strip()
    found = tokens(text)
    depth, cuts = 0, {"OR": [], "AND": []}
    ternary = False
    for i, token in enumerate(found):
        if token.kind in OPENING:
            depth += 1
        elif token.kind in CLOSING:
            depth -= 1
        elif depth == 0 and token.kind in cuts:
            cuts[token.kind].append(i)
        elif depth == 0 and token.kind == "QMARK":
            ternary = True  # ``a ? b : c``: one clause
    for kind, name in (("OR", "any"), ("AND", "all")):
        if cuts[kind] and not ternary:
            bounds = [0, *(found[i].start for i in cuts[kind]), len(text)]
            skips = [0, *(len(found[i].kind) for i in cuts[kind])]
            return name, [text[start + skip:end].strip()
                          for start, skip, end in zip(bounds, skips, bounds[1:])]
    if found and found[0].kind == "LPAREN" and _closes_at_end(found):
        return "group", [text[found[0].start + 1:found[-1].start].strip()]
    return "clause", [text]


def _closes_at_end(found: Sequence[Token]) -> bool:
    """Whether the group opened by the first token closes at the last one."""
    depth = 0
    for i, token in enumerate(found):
        if token.kind in OPENING:
            depth += 1
        elif token.kind in CLOSING:
            depth -= 1
            if depth == 0:
                return i == len(found) - 1
    return False


def evaluate(text: str, attributes: Mapping[str, object]) -> bool | None:
    """Whether the condition ``text`` holds for ``attributes``; None if it cannot be
    evaluated (a null value met a comparison)."""
    try:
        return bool(compile_condition(text).rule.matches(attributes))
    except Exception:  # any evaluation error: the audience counts it as not holding
        return None


def explain_condition(text: str, attributes: Mapping[str, object]) -> dict[str, Any]:
    """The condition ``text`` as a tree of ``all`` / ``any`` nodes over clauses; every
    node has its ``text``, ``holds`` (True, False or None: cannot be evaluated) and a
    readable ``line``; a clause has the customer's ``values`` of the names it uses."""
    kind, parts = split_condition(text)
    while kind == "group":
        text = parts[0]
        kind, parts = split_condition(text)
    holds = evaluate(text, attributes)
    node: dict[str, Any] = {"text": text, "holds": holds}
    if kind == "clause":
        names = compile_condition(text).names
        node["values"] = {name: attributes.get(name) for name in names}
        shown = ", ".join(_shown(attributes.get(n)) if len(names) == 1
                          else f"{n}={_shown(attributes.get(n))}" for n in names)
        node["line"] = f"{text}: {shown or 'no attribute'} → {_truth(holds)}"
    else:
        node[kind] = [explain_condition(part, attributes) for part in parts]
        node["line"] = f"{'all' if kind == 'all' else 'any'} of {len(parts)} → {_truth(holds)}"
    return node


def _shown(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.4g}"
    return repr(value) if isinstance(value, str) else str(value)


def _truth(holds: bool | None) -> str:
    return "cannot be evaluated (null), does not hold" if holds is None else str(holds).lower()


def explain_audience(audience: Audience, attributes: Mapping[str, object],
                     member: bool) -> dict[str, Any]:
    """One audience for one customer: whether it is a ``member`` (as stored), whether it
    would be one if judged now (``member_if_judged_now``: they differ only until the
    customer's next evaluation, e.g. right after new definitions), both conditions clause
    by clause, and the hysteresis rule that applies to it now."""
    judged = audience.member_after(member, attributes)
    exit_text = audience.exit_condition
    if exit_text is None:
        rule = ("member while the condition holds" if member
                else "enters when the condition holds")
    elif member:
        rule = "member until the exit condition holds (hysteresis)"
    else:
        rule = "enters when the condition holds and the exit condition does not"
    return {
        "name": audience.name,
        "member": member,
        "member_if_judged_now": judged,
        "condition": explain_condition(audience.condition, attributes),
        "exit_condition": (explain_condition(exit_text, attributes)
                           if exit_text is not None else None),
        "rule": rule,
    }


def explain_audiences(audiences: AudienceSet, attributes: Mapping[str, object],
                      members: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`explain_audience` for every defined audience, in the file's order."""
    return [explain_audience(a, attributes, a.name in members) for a in audiences.audiences]


def contributions(model: SegmentModel, raw: list[float | None], here: int, there: int,
                  values: Mapping[str, object], count: int = 3) -> list[dict[str, Any]]:
    """The features that keep the customer closer to segment ``here`` than to ``there``,
    strongest first: each with the customer's value, its z-score and both centres'."""
    z = model.scale(raw)
    gain = (z - model.centres[there]) ** 2 - (z - model.centres[here]) ** 2
    plain_z = model.z_scores(z)
    plain_here, plain_there = model.z_scores(model.centres[here]), model.z_scores(
        model.centres[there])
    out = []
    for j in np.argsort(-gain)[:count]:
        if gain[j] <= 0:
            break
        name = model.features[j]
        out.append({"feature": name, "value": values.get(name), "z": round(float(plain_z[j]), 3),
                    "segment_z": round(float(plain_here[j]), 3),
                    "other_segment_z": round(float(plain_there[j]), 3)})
    return out


def explain_placement(model: SegmentModel, raw: list[float | None],
                      values: Mapping[str, object], segment: int | None, *,
                      margin: float, confirmations: int, pending: int | None,
                      pending_count: int) -> dict[str, Any]:
    """Where the customer stands among the segments of ``model``: the :data:`NEAREST`
    segments with their distances, what a move to the runner-up would take (the
    hysteresis ``margin`` and the ``confirmations`` of a debounced move, with those
    already ``pending``), and the features that hold it in its segment and those that
    pull it towards the runner-up."""
    d = model.distances(raw)
    order = [int(i) for i in np.argsort(d) if np.isfinite(d[i])]
    if segment is not None and not model.is_active(segment) and order:
        nearest = [{"segment": i, "label": model.labels[i], "distance": round(float(d[i]), 4),
                    "relative_to_own": None} for i in order[:NEAREST]]
        known = "retired" if 0 <= segment < model.k else "not in this model"
        return {"nearest": nearest, "runner_up": None, "pending": None,
                "summary": f"its segment {segment} is {known}: at its next evaluation it "
                           f"moves to the nearest live segment, {order[0]} "
                           f"({model.labels[order[0]]})."}
    here = segment if segment is not None else (order[0] if order else None)
    base = float(d[here]) if here is not None else 0.0

    def relative(i: int) -> float | None:
        return round(float(d[i]) / base, 3) if base > 0 else None

    nearest = [{"segment": i, "label": model.labels[i], "distance": round(float(d[i]), 4),
                "relative_to_own": relative(i)} for i in order[:NEAREST]]
    runner_up = next((i for i in order if i != here), None)
    placement: dict[str, Any] = {"nearest": nearest, "runner_up": None}
    if here is None or runner_up is None:
        placement["summary"] = "only one segment is live: there is nowhere else to go"
        return placement
    needed = (1.0 - margin) * base
    pending_here = pending if pending == runner_up else None
    placement["runner_up"] = {
        "segment": runner_up, "label": model.labels[runner_up],
        "distance": round(float(d[runner_up]), 4), "relative_to_own": relative(runner_up),
        "moves_when_distance_below": round(needed, 4), "margin": margin,
        "confirmations_needed": confirmations,
        "confirmations_so_far": pending_count if pending_here is not None else 0,
    }
    placement["pending"] = ({"segment": pending, "confirmations_so_far": pending_count}
                            if pending is not None else None)
    placement["holding_it_here"] = contributions(model, raw, here, runner_up, values)
    placement["pulling_to_runner_up"] = contributions(model, raw, runner_up, here, values)
    ratio = relative(runner_up)
    placement["summary"] = (
        f"nearest to segment {here} ({model.labels[here]}); the runner-up, segment "
        f"{runner_up} ({model.labels[runner_up]}), is {ratio} times as far. A move needs it "
        f"closer than {1 - margin:.2f} times the distance to its own segment"
        + (f", in {confirmations} evaluations in a row" if confirmations > 1 else "") + ".")
    return placement


def segment_summary(model: SegmentModel, segment: int | None) -> dict[str, Any] | None:
    """A segment of ``model`` in plain terms: id, label, whether it is live, typical values."""
    if segment is None or not 0 <= segment < model.k:
        return None
    units = model.centres_in_feature_units()[segment]
    return {"id": segment, "label": model.labels[segment], "active": model.is_active(segment),
            "typical": typical_values(model.features, units)}


def change_history(changes: Sequence[Sequence[Any]], model: SegmentModel | None
                   ) -> list[dict[str, Any]]:
    """The customer's last changes (as :class:`~stream_app.core.state.CustomerState`
    keeps them), newest first, readable."""
    def label(segment: int | None) -> str | None:
        return (model.labels[segment] if model is not None and segment is not None
                and 0 <= segment < model.k else None)

    return [{"at": iso_ms(ts), "trigger": trigger, "from": previous, "from_label": label(previous),
             "to": segment, "to_label": label(segment), "model_version": version,
             "reasons": list(reasons)}
            for ts, trigger, previous, segment, version, reasons in reversed(changes)]
