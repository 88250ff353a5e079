"""Readable segment labels from what distinguishes a centre from the population.

A centre in the standardised space is a vector of z-scores: how many population standard
deviations the segment sits above or below the average customer on each feature. The
label names the strongest deviations, e.g. ``"frequent buyer · big basket · app"``.

>>> segment_labels(("orders_90d", "app_share_30d"), [[1.2, -0.1], [0.0, 0.1], [-0.9, 2.0]])
('frequent buyer', 'typical customer', 'app · rarely buys')
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: Words for a feature far above / below the population.
WORDS: dict[str, tuple[str, str]] = {
    "orders_30d": ("frequent buyer", "rarely buys"),
    "orders_90d": ("frequent buyer", "rarely buys"),
    "orders_total": ("loyal", "new"),
    "revenue_90d": ("high spender", "low spender"),
    "revenue_30d": ("high spender", "low spender"),
    "avg_order_value_90d": ("big basket", "small basket"),
    "days_since_last_order": ("no recent order", "bought recently"),
    "discount_share_90d": ("deal seeker", "pays full price"),
    "distinct_categories_90d": ("broad taste", "narrow taste"),
    "views_24h": ("browsing now", "not browsing"),
    "views_7d": ("heavy browser", "light browser"),
    "sessions_7d": ("many visits", "few visits"),
    "searches_7d": ("searcher", "no searches"),
    "add_to_cart_7d": ("fills carts", "no carts"),
    "cart_abandon_rate_7d": ("cart abandoner", "completes carts"),
    "night_share_30d": ("night owl", "daytime"),
    "app_share_30d": ("app", "web"),
    "age": ("older", "younger"),
    "income": ("high income", "low income"),
}
#: A feature enters a label when its |z| is at least this.
THRESHOLD = 0.5
MAX_WORDS = 3


def describe(names: Sequence[str], z: Iterable[float]) -> list[tuple[str, float, str]]:
    """Features of one centre sorted by |z|, strongest first: ``(name, z, word)``."""
    out = []
    for name, value in zip(names, z):
        high, low = WORDS.get(name, (f"high {name}", f"low {name}"))
        out.append((name, float(value), high if value > 0 else low))
    out.sort(key=lambda row: -abs(row[1]))
    return out


def segment_labels(names: Sequence[str], centres: Iterable[Iterable[float]]) -> tuple[str, ...]:
    """One label per centre (z-scores), made of its strongest deviations."""
    labels = []
    for centre in centres:
        words: list[str] = []
        for _, z, word in describe(names, centre):
            if abs(z) < THRESHOLD or len(words) == MAX_WORDS:
                break
            if word not in words:
                words.append(word)
        labels.append(" · ".join(words) if words else "typical customer")
    return tuple(labels)
