"""Readable segment labels from what distinguishes a centre from the population.

A centre in the standardised space is a vector of z-scores: how many population standard
deviations the segment sits above or below the average customer on each feature. The
label names the strongest deviations in marketer words, e.g.
``"frequent buyer · big basket · app"``:

* at most :data:`MAX_WORDS` words, chosen by strength (``|z| >= THRESHOLD``) but always
  *rendered* in one canonical order (:data:`PRIORITY`: recency, frequency, monetary,
  basket, discount, browsing, search, time of day, channel, profile), so the same words
  always give the same text;
* with centres in feature units, absolute words where a z-score misleads
  (:data:`ABSOLUTE`: ``"one-time buyer"``, ``"lapsed"``, ``"no recent orders"`` …);
* no contradictory words together (``"lapsed"`` and ``"frequent buyer"``);
* every non-empty segment gets a distinct label: segments that would share a label each
  get the word (``|z| >= SEPARATE``) of the feature on which they differ most from their
  nearest twin, then, as a last resort, a comparative (``"bigger baskets"``), and a
  number only for identical centres;
* a segment keeps its label from the previous model version while the label's words
  still hold (hysteresis: a word enters at ``|z| >= THRESHOLD`` and stays while
  ``|z| >= KEEP``) and the label is still distinct.

>>> segment_labels(("orders_90d", "app_share_30d"), [[1.2, -0.1], [0.0, 0.1], [-0.9, 2.0]])
('frequent buyer', 'typical customer', 'rarely buys · app')

:func:`typical_values` describes a centre in feature units:

>>> typical_values(("orders_90d", "app_share_30d"), [2.0, 0.8])
'2 orders in 90 days, 80 % in the app'
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone

import numpy as np

#: Words for a feature far above / below the population.
WORDS: dict[str, tuple[str, str]] = {
    "orders_30d": ("frequent buyer", "rarely buys"),
    "orders_90d": ("frequent buyer", "rarely buys"),
    "orders_total": ("loyal", "one-time buyer"),
    "revenue_total": ("high lifetime value", "low lifetime value"),
    "revenue_90d": ("high spender", "low spender"),
    "revenue_30d": ("high spender", "low spender"),
    "avg_order_value_90d": ("big basket", "small basket"),
    "days_since_last_order": ("lapsed", "recent buyer"),
    "first_order_ts": ("new customer", "long-standing customer"),
    "last_order_ts": ("recent buyer", "lapsed"),
    "discount_share_90d": ("deal seeker", "pays full price"),
    "distinct_categories_90d": ("broad taste", "narrow taste"),
    "views_24h": ("browsing now", "not browsing"),
    "views_7d": ("heavy browser", "light browser"),
    "sessions_7d": ("many visits", "few visits"),
    "events_30d": ("very active", "quiet"),
    "searches_7d": ("searcher", "no searches"),
    "add_to_cart_7d": ("fills carts", "no carts"),
    "cart_abandon_rate_7d": ("cart abandoner", "completes carts"),
    "night_share_30d": ("night owl", "daytime"),
    "app_share_30d": ("app", "web"),
    "age": ("older", "younger"),
    "income": ("high income", "low income"),
}

#: Last-resort words that set a segment apart from a segment with otherwise the same
#: label: ``(more, less)`` of the feature.
COMPARATIVES: dict[str, tuple[str, str]] = {
    "days_since_last_order": ("bought longer ago", "bought more recently"),
    "last_order_ts": ("bought more recently", "bought longer ago"),
    "first_order_ts": ("joined later", "joined earlier"),
    "orders_total": ("more orders in all", "fewer orders in all"),
    "orders_90d": ("buys more often", "buys less often"),
    "orders_30d": ("buys more often", "buys less often"),
    "revenue_total": ("more lifetime value", "less lifetime value"),
    "revenue_90d": ("spends more", "spends less"),
    "revenue_30d": ("spends more", "spends less"),
    "avg_order_value_90d": ("bigger baskets", "smaller baskets"),
    "discount_share_90d": ("more discounts", "fewer discounts"),
    "distinct_categories_90d": ("broader taste", "narrower taste"),
    "views_24h": ("browses more today", "browses less today"),
    "views_7d": ("browses more", "browses less"),
    "sessions_7d": ("visits more", "visits less"),
    "events_30d": ("more active", "less active"),
    "add_to_cart_7d": ("adds more to carts", "adds less to carts"),
    "cart_abandon_rate_7d": ("abandons more carts", "abandons fewer carts"),
    "searches_7d": ("searches more", "searches less"),
    "night_share_30d": ("more at night", "more by day"),
    "app_share_30d": ("more in the app", "more on the web"),
    "age": ("somewhat older", "somewhat younger"),
    "income": ("higher income", "lower income"),
}

#: Canonical order of features, hence of the words in a label: recency, frequency,
#: monetary, basket, discount, assortment, browsing, search, time of day, channel, profile.
#: Features not listed follow, by name.
PRIORITY: tuple[str, ...] = (
    "days_since_last_order", "last_order_ts", "first_order_ts",
    "orders_total", "orders_90d", "orders_30d",
    "revenue_total", "revenue_90d", "revenue_30d",
    "avg_order_value_90d", "discount_share_90d", "distinct_categories_90d",
    "views_24h", "views_7d", "sessions_7d", "add_to_cart_7d", "cart_abandon_rate_7d",
    "searches_7d", "events_30d", "night_share_30d", "app_share_30d", "age", "income",
)

#: Words from values in feature units, ``(feature, comparison, bound, word)``; per
#: feature the first rule that holds wins. When centres in units are given, these words
#: are only used when their rule holds (never from a z-score alone).
ABSOLUTE: tuple[tuple[str, str, float, str], ...] = (
    ("days_since_last_order", ">=", 180.0, "lapsed"),
    ("days_since_last_order", "<=", 30.0, "recent buyer"),
    ("orders_total", "<", 0.5, "never ordered"),
    ("orders_total", "<=", 1.5, "one-time buyer"),
    ("orders_total", ">=", 5.0, "loyal"),
    ("orders_90d", "<=", 0.05, "no recent orders"),  # a mean of (nearly) only zeros
)

#: Words that, when they hold, go into a label before any other (higher first): they make
#: other words about orders moot.
PRECEDENCE: dict[str, int] = {"never ordered": 3, "lapsed": 2, "no recent orders": 1}

#: Words that never appear together in one label (besides each feature's two words and
#: two comparatives, which exclude each other).
EXCLUSIVE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("lapsed", ("frequent buyer", "high spender", "recent buyer", "no recent orders",
                "bought more recently")),
    ("no recent orders", ("frequent buyer", "rarely buys", "high spender", "low spender",
                          "recent buyer", "big basket", "small basket", "deal seeker",
                          "pays full price")),
    ("never ordered", ("lapsed", "recent buyer", "loyal", "one-time buyer",
                       "frequent buyer", "rarely buys", "high spender", "low spender",
                       "high lifetime value", "low lifetime value", "big basket",
                       "small basket", "deal seeker", "pays full price",
                       "no recent orders")),
    ("one-time buyer", ("loyal", "frequent buyer")),
)

#: A feature enters a label when its |z| is at least this …
THRESHOLD = 0.5
#: … and a label of the previous model version keeps it while its |z| is at least this.
KEEP = 0.35
#: A word may tell twins apart from this |z| (between :data:`KEEP` and :data:`THRESHOLD`,
#: so that it too has room for hysteresis).
SEPARATE = 0.45
#: Words in a label, unless more are needed to tell segments apart.
MAX_WORDS = 4
TYPICAL = "typical customer"
SEPARATOR = " · "

_EPS = 1e-9
_NUMBERED = re.compile(r" \(\d+\)$")
_COMPARE = {">=": float.__ge__, "<=": float.__le__, "<": float.__lt__, ">": float.__gt__}


def describe(names: Sequence[str], z: Iterable[float]) -> list[tuple[str, float, str]]:
    """Features of one centre sorted by |z|, strongest first: ``(name, z, word)``.

    ``word`` is the feature's word for its side of the population (:data:`WORDS`),
    whatever the size of ``z``.

    >>> describe(("orders_90d", "app_share_30d"), [0.3, -1.2])
    [('app_share_30d', -1.2, 'web'), ('orders_90d', 0.3, 'frequent buyer')]
    """
    out = []
    for name, value in zip(names, z):
        high, low = _words(name)
        out.append((name, float(value), high if value > 0 else low))
    out.sort(key=lambda row: -abs(row[1]))
    return out


def _words(name: str) -> tuple[str, str]:
    return WORDS.get(name, (f"high {name}", f"low {name}"))


def _comparatives(name: str) -> tuple[str, str]:
    return COMPARATIVES.get(name, (f"more {name}", f"less {name}"))


def _feature_key(name: str) -> tuple[int, str]:
    try:
        return PRIORITY.index(name), ""
    except ValueError:
        return len(PRIORITY), name


class _Vocabulary:
    """Ranks, exclusions and features of every word the features ``names`` can give."""

    def __init__(self, names: Sequence[str]) -> None:
        self.rank: dict[str, tuple[int, str, int]] = {}
        self.clash: dict[str, set[str]] = defaultdict(set)
        self.comparative: dict[str, list[tuple[int, int]]] = defaultdict(list)  # word → (f, ±1)
        rules = {r[0] for r in ABSOLUTE}
        for name in sorted(set(PRIORITY) | set(names), key=_feature_key):
            p, tail = _feature_key(name)
            high, low = _words(name)
            more, less = _comparatives(name)
            for slot, word in enumerate((high, low, more, less)):
                self.rank.setdefault(word, (p, tail, slot))
            self._exclude(high, low)
            self._exclude(more, less)
            self._exclude(more, low)
            self._exclude(less, high)
            if name in rules:
                for feature, _, _, word in ABSOLUTE:
                    if feature == name:
                        self.rank.setdefault(word, (p, tail, 0))
        for index, name in enumerate(names):
            more, less = _comparatives(name)
            self.comparative[more].append((index, 1))
            self.comparative[less].append((index, -1))
        for word, others in EXCLUSIVE:
            for other in others:
                self._exclude(word, other)

    def _exclude(self, a: str, b: str) -> None:
        if a != b:
            self.clash[a].add(b)
            self.clash[b].add(a)

    def fits(self, word: str, words: Iterable[str]) -> bool:
        """Whether ``word`` may join ``words`` in one label."""
        bad = self.clash.get(word, ())
        return not any(w in bad for w in words)

    def key(self, word: str) -> tuple[tuple[int, str, int], str]:
        """Sort key of ``word`` in the canonical order."""
        return self.rank.get(word, (len(PRIORITY) + 1, word, 0)), word

    def render(self, words: Iterable[str]) -> str:
        ordered = sorted(words, key=self.key)
        return SEPARATOR.join(ordered) if ordered else TYPICAL


def _absolute(name: str, value: float) -> str | None:
    """The word of the first :data:`ABSOLUTE` rule of ``name`` that ``value`` meets."""
    for feature, op, bound, word in ABSOLUTE:
        if feature == name and _COMPARE[op](float(value), bound):
            return word
    return None


def _as_matrix(rows: Iterable[Iterable[float]], d: int, what: str) -> np.ndarray:
    matrix = np.array([list(map(float, row)) for row in rows], dtype=float)
    if matrix.size == 0:
        return np.zeros((len(matrix), d))
    if matrix.ndim != 2 or matrix.shape[1] != d:
        raise ValueError(f"{what} must be rows of {d} values, got shape {matrix.shape}")
    return matrix


def segment_labels(names: Sequence[str], centres: Iterable[Iterable[float]], *,
                   units: Iterable[Iterable[float]] | None = None,
                   sizes: Sequence[int] | None = None,
                   previous: Mapping[int, str] | None = None) -> tuple[str, ...]:
    """One distinct, readable label per centre.

    Parameters
    ----------
    names : sequence of str
        Feature name of each column.
    centres : array_like, shape (k, d)
        Centres as z-scores (standardised feature space).
    units : array_like, shape (k, d), optional
        The same centres in feature units, for absolute words (:data:`ABSOLUTE`), e.g.
        ``"one-time buyer"`` at ``orders_total <= 1.5`` whatever its z-score. NaN: unknown.
    sizes : sequence of int, optional
        Members per centre. An empty centre (size 0) still gets a label, but it may
        repeat another one; without ``sizes`` every centre counts as non-empty.
    previous : mapping of int to str, optional
        Segment index → its label in the previous model version. A segment keeps its old
        label exactly while each of its words still holds (same side, ``|z| >= KEEP``,
        or its absolute rule still met) and no other kept label has the same words.

    Returns
    -------
    tuple of str
        Label of each centre; labels of non-empty centres are pairwise distinct.
        Words appear in the canonical :data:`PRIORITY` order of their features.

    Examples
    --------
    Segments that would share their strongest words get the word of the feature on
    which they differ most:

    >>> names = ("orders_90d", "avg_order_value_90d", "night_share_30d", "app_share_30d")
    >>> for label in segment_labels(names, [[1.5, 0.8, 2.0, 1.8], [1.4, -0.9, 1.9, 1.7],
    ...                                     [1.6, 0.1, 2.1, 1.9]]):
    ...     print(label)
    frequent buyer · big basket · night owl · app
    frequent buyer · small basket · night owl · app
    frequent buyer · night owl · app

    Centres in feature units give absolute words:

    >>> names = ("orders_total", "days_since_last_order")
    >>> segment_labels(names, [[0.6, 0.8], [-0.2, -1.0]],
    ...                units=[[1.0, 240.0], [3.0, 12.0]])
    ('lapsed · one-time buyer', 'recent buyer')

    A label survives a small move of its centre (hysteresis):

    >>> segment_labels(("orders_90d",), [[0.4], [-1.0]],
    ...                previous={0: "frequent buyer", 1: "rarely buys"})
    ('frequent buyer', 'rarely buys')
    >>> segment_labels(("orders_90d",), [[0.4], [-1.0]])
    ('typical customer', 'rarely buys')
    """
    names = tuple(str(n) for n in names)
    d = len(names)
    raw = _as_matrix(centres, d, "centres")
    k = len(raw)
    if k == 0:
        return ()
    # Work in the canonical feature order: the result cannot depend on column order.
    order = sorted(range(d), key=lambda i: (_feature_key(names[i]), i))
    names = tuple(names[i] for i in order)
    z = raw[:, order]
    u = None if units is None else _as_matrix(units, len(order), "units")[:, order]
    if u is not None and len(u) != k:
        raise ValueError(f"units must have {k} rows, got {len(u)}")
    if sizes is not None and len(sizes) != k:
        raise ValueError(f"sizes must have {k} values, got {len(sizes)}")
    vocab = _Vocabulary(names)
    words_of = [_feature_words(names, z[i], None if u is None else u[i]) for i in range(k)]
    qualifies = [{w for w, _ in row.values()} for row in words_of]
    active = [i for i in range(k) if sizes is None or sizes[i] > 0]
    finite = np.where(np.isfinite(z), z, 0.0)
    distance = np.sqrt(((finite[:, None, :] - finite[None, :, :]) ** 2).sum(axis=2))

    chosen: list[set[str]] = [_strongest(words_of[i], vocab) for i in range(k)]
    texts: list[str | None] = [None] * k  # kept labels of the previous version
    pinned: set[int] = set()
    taken: set[frozenset[str]] = set()
    before: dict[int, str] = {}
    for key, old in (previous or {}).items():
        try:
            i = int(key)
        except (TypeError, ValueError):
            continue
        if 0 <= i < k and isinstance(old, str):
            before[i] = old
    for i, old in sorted(before.items()):
        words = _still_holds(i, old, z, u, names, qualifies, vocab, before)
        if words is None:
            continue
        if i not in active:
            texts[i] = old
            continue
        if frozenset(words) in taken:
            continue
        taken.add(frozenset(words))
        pinned.add(i)
        chosen[i] = set(words)
        texts[i] = old

    number = [0] * k
    while True:
        groups: dict[tuple[frozenset[str], int], list[int]] = defaultdict(list)
        for i in active:
            groups[(frozenset(chosen[i]), number[i])].append(i)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            break
        for group in clashes:
            free = [i for i in group if i not in pinned]
            added = (_separate(group, free, chosen, words_of, qualifies, finite, distance,
                               vocab)
                     or _compare(group, free, chosen, finite, names, vocab))
            if added:
                for i, word in added.items():
                    chosen[i].add(word)
                continue
            # Nothing differs: number all but one.
            used = {number[j] for j in active if chosen[j] == chosen[group[0]]}
            for i in free[1:] if len(free) == len(group) else free:
                n = 2
                while n in used:
                    n += 1
                used.add(n)
                number[i] = n

    out = []
    for i in range(k):
        text = texts[i] if texts[i] is not None else vocab.render(chosen[i])
        out.append(f"{text} ({number[i]})" if number[i] else text)
    return tuple(out)


def _feature_words(names: Sequence[str], z: np.ndarray, units: np.ndarray | None
                   ) -> dict[int, tuple[str, float]]:
    """Feature index → ``(word, strength)`` for every feature with a word at :data:`KEEP`
    level; strength is ``|z|`` (at least :data:`THRESHOLD` for an absolute word)."""
    ruled = {r[0] for r in ABSOLUTE}
    absolute_words: set[str] = set()  # words decided by units for this centre
    if units is not None:
        for index, name in enumerate(names):
            if name in ruled and np.isfinite(units[index]):
                absolute_words.update(r[3] for r in ABSOLUTE if r[0] == name)
    out: dict[int, tuple[str, float]] = {}
    for index, name in enumerate(names):
        value = float(z[index])
        strength = abs(value) if math.isfinite(value) else 0.0
        if units is not None and name in ruled and np.isfinite(units[index]):
            word = _absolute(name, float(units[index]))
            if word is not None:
                out[index] = (word, max(strength, THRESHOLD))
                continue
        if strength < KEEP:
            continue
        high, low = _words(name)
        word = high if value > 0 else low
        if word in absolute_words:
            continue  # the units say otherwise
        out[index] = (word, strength)
    return out


def _strongest(words: Mapping[int, tuple[str, float]], vocab: _Vocabulary) -> set[str]:
    """Up to :data:`MAX_WORDS` compatible words of strength >= :data:`THRESHOLD`."""
    best: dict[str, float] = {}
    for word, strength in words.values():
        if strength >= THRESHOLD:
            best[word] = max(best.get(word, 0.0), strength)
    chosen: set[str] = set()
    for word in sorted(best, key=lambda w: (-PRECEDENCE.get(w, 0), -best[w], vocab.key(w))):
        if len(chosen) == MAX_WORDS:
            break
        if vocab.fits(word, chosen):
            chosen.add(word)
    return chosen


def _separate(group: list[int], free: list[int], chosen: list[set[str]],
              words_of: list[dict[int, tuple[str, float]]], qualifies: list[set[str]],
              z: np.ndarray, distance: np.ndarray, vocab: _Vocabulary) -> dict[int, str]:
    """For each free member, the word of the feature on which it differs most from its
    nearest twin in ``group`` that the twin does not earn."""
    added: dict[int, str] = {}
    for i in free:
        twins = sorted((j for j in group if j != i), key=lambda j: (distance[i, j], j))
        for j in twins:
            word = _separating_word(i, j, chosen, words_of, qualifies, z, vocab)
            if word is not None:
                added[i] = word
                break
    return added


def _separating_word(i: int, j: int, chosen: list[set[str]],
                     words_of: list[dict[int, tuple[str, float]]], qualifies: list[set[str]],
                     z: np.ndarray, vocab: _Vocabulary) -> str | None:
    """The word of ``i`` that ``j`` does not earn, on the feature where they differ most
    (words at :data:`THRESHOLD` before words at :data:`SEPARATE`)."""
    candidates = []
    for f, (word, strength) in words_of[i].items():
        if strength < SEPARATE:
            continue
        if word in chosen[i] or word in qualifies[j] or word in chosen[j]:
            continue
        if not vocab.fits(word, chosen[i]):
            continue
        candidates.append((strength < THRESHOLD, -abs(z[i, f] - z[j, f]), f, word))
    return min(candidates)[3] if candidates else None


def _compare(group: list[int], free: list[int], chosen: list[set[str]], z: np.ndarray,
             names: Sequence[str], vocab: _Vocabulary) -> dict[int, str]:
    """Last resort: a comparative on the feature with the widest spread in ``group``."""
    spread = z[group].max(axis=0) - z[group].min(axis=0)
    for f in sorted(range(len(names)), key=lambda f: (-spread[f], f)):
        if spread[f] <= _EPS:
            break
        more, less = _comparatives(names[f])
        eligible = [i for i in free if more not in chosen[i] and less not in chosen[i]]
        if not eligible:
            continue
        top = max(eligible, key=lambda i: (z[i, f], -i))
        bottom = min(eligible, key=lambda i: (z[i, f], i))
        low_end, high_end = z[group, f].min(), z[group, f].max()
        added: dict[int, str] = {}
        if z[top, f] > low_end + _EPS and vocab.fits(more, chosen[top]):
            added[top] = more
        if (bottom not in added and z[bottom, f] < high_end - _EPS
                and vocab.fits(less, chosen[bottom])):
            added[bottom] = less
        if len(group) == 2 and len(added) == 2:
            # One word tells a pair apart: the more extreme member gets it, the other
            # keeps its plain label.
            del added[bottom if abs(z[top, f]) >= abs(z[bottom, f]) else top]
        if added:
            return added
    return {}


def _still_holds(i: int, old: str, z: np.ndarray, units: np.ndarray | None,
                 names: Sequence[str], qualifies: list[set[str]], vocab: _Vocabulary,
                 previous: Mapping[int, str]) -> list[str] | None:
    """The words of segment ``i``'s old label if all of them still hold, else None."""
    if _NUMBERED.search(old):
        return None
    if old == TYPICAL:
        row = z[i][np.isfinite(z[i])]
        strong = row.size and np.abs(row).max() >= THRESHOLD + (THRESHOLD - KEEP)
        absolute = units is not None and any(
            _absolute(name, float(units[i, f])) is not None
            for f, name in enumerate(names) if np.isfinite(units[i, f]))
        return None if strong or absolute else []
    words = old.split(SEPARATOR)
    if len(set(words)) != len(words):
        return None
    plain = {w for w in words if w not in vocab.comparative}
    for word in words:
        if word in plain:
            if word not in qualifies[i]:
                return None
            continue
        # A comparative holds while the segment stays on the same side of every
        # segment whose old label had the same other words.
        peers = [j for j, text in previous.items() if j != i and plain == {
            w for w in text.split(SEPARATOR) if w not in vocab.comparative}]
        if not any(all((z[i, f] - z[j, f]) * sign > 0 for j in peers)
                   for f, sign in vocab.comparative[word]):
            return None
    return words


# -- typical values ---------------------------------------------------------------------------

#: How to say one feature value: ``(kind, singular, plural)``; ``{}`` is the number.
PHRASES: dict[str, tuple[str, str, str]] = {
    "days_since_last_order": ("days", "last order {} day ago", "last order {} days ago"),
    "last_order_ts": ("date", "last order on {}", "last order on {}"),
    "first_order_ts": ("date", "first order on {}", "first order on {}"),
    "orders_total": ("count", "{} order in all", "{} orders in all"),
    "orders_90d": ("count", "{} order in 90 days", "{} orders in 90 days"),
    "orders_30d": ("count", "{} order in 30 days", "{} orders in 30 days"),
    "revenue_total": ("money", "lifetime revenue {}", "lifetime revenue {}"),
    "revenue_90d": ("money", "revenue {} in 90 days", "revenue {} in 90 days"),
    "revenue_30d": ("money", "revenue {} in 30 days", "revenue {} in 30 days"),
    "avg_order_value_90d": ("money", "average basket {}", "average basket {}"),
    "discount_share_90d": ("share", "{} of orders discounted", "{} of orders discounted"),
    "distinct_categories_90d": ("count", "{} category in 90 days", "{} categories in 90 days"),
    "views_24h": ("count", "{} view in 24 hours", "{} views in 24 hours"),
    "views_7d": ("count", "{} view in 7 days", "{} views in 7 days"),
    "sessions_7d": ("count", "{} visit in 7 days", "{} visits in 7 days"),
    "add_to_cart_7d": ("count", "{} add-to-cart in 7 days", "{} add-to-carts in 7 days"),
    "cart_abandon_rate_7d": ("share", "{} of carts abandoned", "{} of carts abandoned"),
    "searches_7d": ("count", "{} search in 7 days", "{} searches in 7 days"),
    "events_30d": ("count", "{} event in 30 days", "{} events in 30 days"),
    "night_share_30d": ("share", "{} at night", "{} at night"),
    "app_share_30d": ("share", "{} in the app", "{} in the app"),
    "age": ("whole", "aged {}", "aged {}"),
    "income": ("whole", "income {}", "income {}"),
}


def _count(value: float) -> str:
    if abs(value) < 10:
        text = f"{round(value, 1) + 0.0:.1f}"
        return text[:-2] if text.endswith(".0") else text
    return f"{round(value):,}"


def feature_phrase(name: str, value: float | None) -> str:
    """One feature value in plain units and words.

    Counts have one decimal below 10 and none above, money two decimals, shares are
    percentages, days and ages whole numbers, timestamps (epoch milliseconds) dates.

    Parameters
    ----------
    name : str
        Feature name; an unknown one is said as ``"<name> <value>"``.
    value : float or None
        The value in feature units; None or NaN is unknown.

    Returns
    -------
    str

    Examples
    --------
    >>> feature_phrase("orders_90d", 2.0), feature_phrase("orders_90d", 1.04)
    ('2 orders in 90 days', '1 order in 90 days')
    >>> feature_phrase("views_7d", 12.4), feature_phrase("avg_order_value_90d", 45)
    ('12 views in 7 days', 'average basket 45.00')
    >>> feature_phrase("discount_share_90d", 0.304), feature_phrase("night_share_30d", 0.4)
    ('30 % of orders discounted', '40 % at night')
    >>> feature_phrase("days_since_last_order", 119.6), feature_phrase("last_order_ts", None)
    ('last order 120 days ago', 'no order yet')
    >>> feature_phrase("first_order_ts", 1767225600000), feature_phrase("shoe_size", 42.0)
    ('first order on 2026-01-01', 'shoe_size 42')
    """
    kind, one, many = PHRASES.get(name, ("count", f"{name} {{}}", f"{name} {{}}"))
    if value is None or not math.isfinite(float(value)):
        if name in ("days_since_last_order", "last_order_ts", "first_order_ts"):
            return "no order yet"
        return many.format("unknown")
    value = float(value)
    if kind == "days":
        days = round(value) + 0
        return "last order today" if days == 0 else (one if days == 1 else many).format(days)
    if kind == "date":
        try:
            date = datetime.fromtimestamp(value / 1000, tz=timezone.utc).date().isoformat()
        except (OverflowError, OSError, ValueError):
            date = "unknown"
        return one.format(date)
    if kind == "money":
        return one.format(f"{round(value, 2) + 0.0:,.2f}")
    if kind == "share":
        return one.format(f"{round(value * 100) + 0} %")
    if kind == "whole":
        return one.format(f"{round(value) + 0:,}")
    text = _count(value)
    return (one if text == "1" else many).format(text)


def typical_values(names: Sequence[str], units_row: Iterable[float]) -> str:
    """A segment's typical values (its centre in feature units) in plain words.

    Phrases (:func:`feature_phrase`) follow the canonical :data:`PRIORITY` order of the
    features, whatever the order of ``names``.

    Parameters
    ----------
    names : sequence of str
        Feature name of each value.
    units_row : iterable of float
        One centre in feature units.

    Returns
    -------
    str
        Comma-separated phrases, one per feature.

    Examples
    --------
    >>> typical_values(
    ...     ("orders_90d", "avg_order_value_90d", "days_since_last_order", "orders_total",
    ...      "revenue_total", "discount_share_90d", "views_7d", "night_share_30d",
    ...      "app_share_30d"),
    ...     [2.0, 45.0, 120.0, 5.0, 310.0, 0.3, 12.0, 0.4, 0.8]).split(", ")
    ['last order 120 days ago', '5 orders in all', '2 orders in 90 days',
     'lifetime revenue 310.00', 'average basket 45.00', '30 % of orders discounted',
     '12 views in 7 days', '40 % at night', '80 % in the app']
    """
    values = [float(v) if v is not None else math.nan for v in units_row]
    if len(values) != len(names):
        raise ValueError(f"{len(names)} names but {len(values)} values")
    order = sorted(range(len(names)), key=lambda i: (_feature_key(names[i]), i))
    return ", ".join(feature_phrase(names[i], values[i]) for i in order)
