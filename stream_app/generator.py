"""Synthetic shop traffic with planted customer types, so segments have something to find.

Four planted types, a quarter of the customers each:

* ``bargain_hunter`` — searches a lot, small baskets, nearly always with a discount;
* ``big_spender`` — frequent large orders at full price, on the web;
* ``window_shopper`` — browses heavily, fills carts, never buys;
* ``night_app_user`` — shops in the app between 22:00 and 06:00 local time.

Event time advances by a fixed step per event, so a seed gives the same events in any
process (the benchmark and tests rely on that); ``ts`` is ISO-8601 with the shop's zone.

>>> shop = SyntheticShop(customers=8, seed=1, start_ms=1_767_225_600_000, step_ms=60_000)
>>> first = next(iter(shop))
>>> first.kind, first.key == orjson.loads(first.value)["customer_id"].encode()
('profile', True)
>>> len(list(SyntheticShop(8, seed=1, start_ms=0, step_ms=1).events(100)))
100
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import orjson

TYPES = ("bargain_hunter", "big_spender", "window_shopper", "night_app_user")
CATEGORIES = ("shoes", "dresses", "electronics", "books", "toys", "beauty", "home", "sports",
              "garden", "grocery", "jewelry", "pets")
REGIONS = (("Almaty", "Almaty"), ("Astana", "Astana"), ("Shymkent", "South"),
           ("Karaganda", "Central"))
SHOP_ZONE = timezone(timedelta(hours=5))
SESSION_GAP_MS = 30 * 60_000
NIGHT = frozenset({22, 23, 0, 1, 2, 3, 4, 5})


@dataclass(frozen=True)
class Persona:
    """How one planted type behaves."""

    weight: float  # relative number of events per customer
    actions: tuple[tuple[str, float], ...]  # event kind and probability
    price: float  # median item price
    items: tuple[int, int]  # items per order (min, max)
    discount: float  # probability that an order is discounted
    app: float  # probability of the app channel
    categories: int  # how many categories the customer shops in
    night: bool  # active at night instead of by day
    income: tuple[int, int]
    age: tuple[int, int]


PERSONAS: dict[str, Persona] = {
    "bargain_hunter": Persona(
        1.0, (("search", .30), ("product_view", .30), ("page_view", .08), ("add_to_cart", .12),
              ("remove_from_cart", .04), ("checkout_start", .06), ("purchase", .10)),
        price=12.0, items=(1, 2), discount=0.95, app=0.15, categories=6, night=False,
        income=(15_000, 35_000), age=(20, 45)),
    "big_spender": Persona(
        0.8, (("product_view", .30), ("page_view", .12), ("search", .04), ("add_to_cart", .18),
              ("checkout_start", .14), ("purchase", .22)),
        price=180.0, items=(2, 5), discount=0.03, app=0.05, categories=3, night=False,
        income=(90_000, 250_000), age=(35, 65)),
    "window_shopper": Persona(
        1.6, (("page_view", .45), ("product_view", .40), ("search", .08), ("add_to_cart", .07)),
        price=60.0, items=(1, 1), discount=0.0, app=0.25, categories=8, night=False,
        income=(20_000, 80_000), age=(18, 40)),
    "night_app_user": Persona(
        1.0, (("product_view", .38), ("page_view", .18), ("search", .08), ("add_to_cart", .14),
              ("checkout_start", .10), ("purchase", .12)),
        price=45.0, items=(1, 3), discount=0.35, app=0.97, categories=4, night=True,
        income=(30_000, 90_000), age=(18, 35)),
}


@dataclass(frozen=True, slots=True)
class GeneratedEvent:
    kind: str  # "click", "purchase" or "profile"
    key: bytes
    value: bytes
    planted_type: str
    ts: int


class SyntheticShop:
    """A deterministic stream of events from ``customers`` planted customers."""

    def __init__(self, customers: int, seed: int = 7, start_ms: int | None = None,
                 step_ms: int = 60_000, profiles: bool = True) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.customers = [f"c{seed:02d}-{i:07d}" for i in range(customers)]
        self.planted = {c: TYPES[i % len(TYPES)] for i, c in enumerate(self.customers)}
        self.by_type = {t: [c for c in self.customers if self.planted[c] == t] for t in TYPES}
        self.taste = {c: self.rng.sample(CATEGORIES, PERSONAS[self.planted[c]].categories)
                      for c in self.customers}
        self.start_ms = int(time.time() * 1000) if start_ms is None else start_ms
        self.step_ms = step_ms
        self.profiles = profiles
        self._profiled: set[str] = set()
        self._session: dict[str, tuple[int, int]] = {}
        self._counter = 0

    def __iter__(self) -> Iterator[GeneratedEvent]:
        return self.events()

    def events(self, limit: int | None = None, clock: Callable[[int], int] | None = None
               ) -> Iterator[GeneratedEvent]:
        """Yield events; event ``i`` is stamped ``start_ms + i * step_ms`` unless ``clock``."""
        i = 0
        while limit is None or i < limit:
            ts = clock(i) if clock else self.start_ms + i * self.step_ms
            for event in self._next(ts):
                yield event
                i += 1
                if limit is not None and i >= limit:
                    return

    def _next(self, ts: int) -> list[GeneratedEvent]:
        rng = self.rng
        hour = datetime.fromtimestamp(ts / 1000, SHOP_ZONE).hour
        night = hour in NIGHT
        weights = [PERSONAS[t].weight * (1.0 if PERSONAS[t].night == night else 0.08)
                   for t in TYPES]
        kind = rng.choices(TYPES, weights)[0]
        customer = rng.choice(self.by_type[kind])
        out = []
        if self.profiles and customer not in self._profiled:
            self._profiled.add(customer)
            out.append(self._profile(customer, kind, ts))
        out.append(self._action(customer, kind, ts))
        return out

    def _iso(self, ts: int) -> str:
        return datetime.fromtimestamp(ts / 1000, SHOP_ZONE).isoformat(timespec="milliseconds")

    def _event_id(self) -> str:
        self._counter += 1
        return f"g{self.seed}-{self._counter:09d}"

    def _profile(self, customer: str, kind: str, ts: int) -> GeneratedEvent:
        p, rng = PERSONAS[kind], self.rng
        city, region = rng.choice(REGIONS)
        doc = {"event_id": self._event_id(), "customer_id": customer, "ts": self._iso(ts),
               "age": rng.randint(*p.age), "income": rng.randint(*p.income), "region": region,
               "city": city, "gender": rng.choice(("f", "m", "x"))}
        return GeneratedEvent("profile", customer.encode(), orjson.dumps(doc), kind, ts)

    def _session_id(self, customer: str, ts: int) -> str:
        number, last = self._session.get(customer, (0, -SESSION_GAP_MS))
        if ts - last > SESSION_GAP_MS:
            number += 1
        self._session[customer] = (number, ts)
        return f"{customer}-s{number}"

    def _action(self, customer: str, kind: str, ts: int) -> GeneratedEvent:
        p, rng = PERSONAS[kind], self.rng
        action = rng.choices([a for a, _ in p.actions], [w for _, w in p.actions])[0]
        channel = "app" if rng.random() < p.app else rng.choice(("web", "web", "email"))
        category = rng.choice(self.taste[customer])
        price = round(rng.lognormvariate(0, 0.4) * p.price, 2)
        base = {"event_id": self._event_id(), "customer_id": customer, "ts": self._iso(ts),
                "channel": channel}
        if action == "purchase":
            items = [{"product_id": f"p{rng.randrange(5000)}",
                      "category": rng.choice(self.taste[customer]),
                      "price": round(rng.lognormvariate(0, 0.4) * p.price, 2),
                      "quantity": 1}
                     for _ in range(rng.randint(*p.items))]
            total = sum(i["price"] for i in items)
            discount = round(total * rng.uniform(0.1, 0.4), 2) if rng.random() < p.discount else 0
            doc = {**base, "order_id": f"o-{base['event_id']}",
                   "amount": round(total - discount, 2), "discount": discount,
                   "currency": "KZT", "items": items}
            return GeneratedEvent("purchase", customer.encode(), orjson.dumps(doc), kind, ts)
        doc = {**base, "event_type": action, "session_id": self._session_id(customer, ts),
               "category": category}
        if action in ("product_view", "add_to_cart", "remove_from_cart"):
            doc["product_id"] = f"p{rng.randrange(5000)}"
            doc["price"] = price
        if action == "search":
            doc["query"] = f"{category} {rng.choice(('sale', 'new', 'best', 'cheap'))}"
        return GeneratedEvent("click", customer.encode(), orjson.dumps(doc), kind, ts)


async def produce(bootstrap_servers: list[str], topics: dict[str, str],
                  events: Iterator[GeneratedEvent], rate: float | None,
                  on_sent: Callable[[int], None] | None = None) -> int:
    """Send ``events`` (kind → topic via ``topics``) at ``rate`` events/s (None: flat out).

    Returns the number of messages sent; all are acknowledged when it returns.
    """
    from aiokafka import AIOKafkaProducer

    from stream_app.pacing import Pace

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    pace = Pace(rate)
    try:
        pending = []
        for event in events:
            pending.append(await producer.send(topics[event.kind], event.value, key=event.key))
            await pace.sent()
            if pace.count % 500 == 0:
                await asyncio.gather(*pending)
                pending.clear()
                if on_sent:
                    on_sent(pace.count)
        await asyncio.gather(*pending)
        if on_sent:
            on_sent(pace.count)
    finally:
        await producer.stop()
    return pace.count
