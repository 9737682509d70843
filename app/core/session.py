"""What recoloop knows about one browsing session, and how events change it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from app.core.decay import DecayedScores
from app.core.events import Context, Reaction
from app.core.join import SessionJoin

# How strongly each reaction type signals interest in an item and its category.
ENGAGEMENT_WEIGHT = {"click": 1.0, "detail_view": 2.0, "basket_add": 4.0}
CATEGORY_HALF_LIFE_MS = 10 * 60_000
RECENT_ITEMS_KEPT = 10
ISSUED_RANKINGS_KEPT = 64
SEEN_EVENT_IDS_KEPT = 512
# Caps that keep one session's state small whatever a site (or a bot) sends.
CONTEXT_KEYS_KEPT = 32
BASKET_KEPT = 100


@dataclass(frozen=True)
class IssuedRanking:
    """The engine's own record of a ranking it published; authoritative when it is served."""

    arm: str
    propensity: float
    context: Context
    model_version: int
    ts: int = 0  # event time it was published at
    experiment: str | None = None  # the site's experiment then, and the session's variant
    variant: str | None = None


@dataclass
class Session:
    site_id: str
    session_id: str
    last_ts: int = 0
    context: Context = field(default_factory=dict)
    categories: DecayedScores = field(
        default_factory=lambda: DecayedScores(CATEGORY_HALF_LIFE_MS, capacity=20))
    recent_items: list[str] = field(default_factory=list)
    basket: dict[str, None] = field(default_factory=dict)  # insertion-ordered, capped
    join: SessionJoin = field(default_factory=SessionJoin)
    issued: dict[str, IssuedRanking] = field(default_factory=dict)
    seen_event_ids: dict[str, None] = field(default_factory=dict)  # digests of event ids
    # The latest item of each reaction type: "viewed next" follows one type's order.
    last_of_type: dict[str, str] = field(default_factory=dict)
    # The wake-up bucket this session is registered in (see app.core.stream_time).
    wake_bucket: int | None = None

    def first_sight(self, event_id: str) -> bool:
        """Record ``event_id``; False when this session has already applied it.

        A 64-bit digest stands for the id (up to 1 KiB of UTF-8), so the 512 remembered
        ones take 9 KB, not half a megabyte."""
        digest = hashlib.blake2b(event_id.encode(), digest_size=8).hexdigest()
        if digest in self.seen_event_ids:
            return False
        _add_capped(self.seen_event_ids, digest, SEEN_EVENT_IDS_KEPT)
        return True

    def touch(self, ts: int, context: Context) -> None:
        self.last_ts = max(self.last_ts, ts)
        for key, value in context.items():  # the newest keys win past the cap
            self.context.pop(key, None)
            self.context[key] = value
        while len(self.context) > CONTEXT_KEYS_KEPT:
            del self.context[next(iter(self.context))]

    def engage(self, reaction: Reaction) -> None:
        weight = ENGAGEMENT_WEIGHT.get(reaction.type, 1.0)
        if reaction.category:
            self.categories.add(reaction.category, weight, reaction.ts)
        if reaction.item_id in self.recent_items:
            self.recent_items.remove(reaction.item_id)
        self.recent_items.append(reaction.item_id)
        del self.recent_items[:-RECENT_ITEMS_KEPT]
        if reaction.type == "basket_add":
            _add_capped(self.basket, reaction.item_id, BASKET_KEPT)
        if reaction.type in self.last_of_type or len(self.last_of_type) < CONTEXT_KEYS_KEPT:
            self.last_of_type[reaction.type] = reaction.item_id

    def remember_ranking(self, ranking_id: str, issued: IssuedRanking, keep_ms: int) -> None:
        """Keep every ranking published in the last ``keep_ms`` (the reward window and
        grace: a display can only answer those), at most ISSUED_RANKINGS_KEPT."""
        self.issued[ranking_id] = issued
        oldest = next(iter(self.issued.values()))
        while len(self.issued) > ISSUED_RANKINGS_KEPT or oldest.ts < issued.ts - keep_ms:
            del self.issued[next(iter(self.issued))]
            oldest = next(iter(self.issued.values()))

    def top_categories(self, n: int) -> list[str]:
        return [category for category, _ in self.categories.top(n, ts=self.last_ts)]


def _add_capped(keys: dict[str, None], key: str, cap: int) -> None:
    """Add ``key`` as the newest of ``keys``, forgetting the oldest past ``cap``."""
    keys.pop(key, None)
    keys[key] = None
    while len(keys) > cap:
        del keys[next(iter(keys))]
