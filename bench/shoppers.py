"""A seeded mixed event stream for the benchmarks: displays and the reactions they draw."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from app.contract.topics import BASKET_ADDS, CLICKS, DETAIL_VIEWS, SERVED

CATEGORIES = ("shoes", "hats", "bags", "coats", "socks", "belts")
CONTEXTS = [{"season": s, "region": r, "device": d}
            for s in ("winter", "summer") for r in ("eu", "us") for d in ("mobile", "desktop")]


def mixed_events(seed: int, sessions: int, items: int, sites: int = 2
                 ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Endless ``(logical topic, value)`` pairs without timestamps: about 40 % displays,
    35 % clicks, 15 % detail views, 10 % basket adds, over ``sessions`` live sessions."""
    rng = random.Random(seed)
    n = 0
    while True:
        n += 1
        session = rng.randrange(sessions)
        site = f"site{session % sites}"
        base = {"event_id": f"e{n}", "site_id": site, "session_id": f"s{session}",
                "context": CONTEXTS[session % len(CONTEXTS)]}
        item = rng.randrange(items)
        draw = rng.random()
        if draw < 0.4:
            shown = [f"i{(item + k) % items}" for k in range(5)]
            yield SERVED, {**base, "items": shown}
            continue
        topic = CLICKS if draw < 0.75 else DETAIL_VIEWS if draw < 0.9 else BASKET_ADDS
        yield topic, {**base, "item_id": f"i{item}", "category": CATEGORIES[item % 6]}
